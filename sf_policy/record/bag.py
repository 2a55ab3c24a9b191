"""Raw rosbag2 (MCAP) bags of the recorder's topics: what writing, reading and repair share.

The recorder's bags hold its seven topics (``recorder_topics``) with the CDR bytes it received;
``metadata.yaml``'s ``custom_data`` keeps the episode's prompt and start (the ``*_KEY`` names).
Writing is ``bag_writer`` (the writer thread) and ``episode_bags`` (one bag per episode);
reading a bag into frames and datasets is ``from_bag``; recovering a bag whose writer died is
``repair``; playing one back onto live topics is ``playback``.

rosbags is pure Python and needs no ROS install; its kilted typestore produces the same
type hashes as ROS 2 Kilted, so ``ros2 bag info/play`` accept the bags.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import yaml
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from .. import topics
from .sync import ARM_STREAMS

IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"

# Keys of the bag's metadata.yaml custom_data (rosbag2's own place for user data).
PROMPT_KEY = "sf.prompt"
STARTED_KEY = "sf.episode_started_ns"  # frames whose time is earlier were not part of the episode
DATASET_KEY = "sf.dataset"
EPISODE_KEY = "sf.episode"
OUTCOME_KEY = "sf.outcome"  # "recorded", "interrupted" (recorder closed mid-episode), "discarded" (if kept)
# rosbag2 writes metadata.yaml (and custom_data with it) only when a bag closes: a recorder
# killed mid-episode would lose the prompt. So the custom data also lives in this file beside
# the .mcap while the bag is open; a clean close removes it (metadata.yaml then holds it), and
# `sf dataset repair-bag` reads it back (sf_policy/record/repair.py).
OPEN_BAG_DATA = "sf_open_bag.yaml"


class BagError(RuntimeError):
    """A bag that cannot be written or read; the message names the bag (and topic)."""


@lru_cache(maxsize=1)
def typestore():
    # Kilted's definitions: their RIHS01 hashes are the ones a Kilted graph announces.
    return get_typestore(Stores.ROS2_KILTED)


def arm_topic(stream: str) -> str:
    """"puppet_left" -> /puppet/joint_left, "master_right" -> /master/joint_right."""
    kind, side = stream.split("_")
    return topics.puppet_state(side) if kind == "puppet" else topics.master_state(side)


def recorder_streams(cameras: Iterable[str] = topics.CAMERA_ROLES) -> dict[str, str]:
    """Stream name (camera role or arm stream) -> topic, for the streams a frame needs."""
    streams = {role: topics.camera_image(role) for role in cameras}
    return streams | {name: arm_topic(name) for name in ARM_STREAMS}


def recorder_topics(cameras: Iterable[str] = topics.CAMERA_ROLES) -> dict[str, str]:
    """Topic -> ROS type name, the ``topics`` argument of RawBagWriter and EpisodeBags."""
    cameras = tuple(cameras)
    return {topic: IMAGE_TYPE if stream in cameras else JOINT_STATE_TYPE
            for stream, topic in recorder_streams(cameras).items()}


def needs_repair(bag: str | Path) -> bool:
    """A bag directory with an .mcap file but no metadata.yaml: its writer never closed it."""
    bag = Path(bag)
    return not (bag / "metadata.yaml").is_file() and any(bag.glob("*.mcap"))


def check_closed(bag: Path) -> None:
    """Refuse a bag its writer never closed, saying how to recover it."""
    if needs_repair(bag):
        raise BagError(f"{bag}: the bag was never closed (no metadata.yaml: the recorder was killed or its disk "
                       f"filled up); `sf dataset repair-bag {bag}` recovers what reached the disk")


def bag_custom_data(bag: str | Path) -> dict[str, str]:
    """The ``custom_data`` of a bag's metadata.yaml ({} when there is none)."""
    path = Path(bag) / "metadata.yaml"
    try:
        info = yaml.safe_load(path.read_text())["rosbag2_bagfile_information"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise BagError(f"{bag}: not a rosbag2 bag directory ({path} unreadable: {error})") from error
    return dict(info.get("custom_data") or {})


class open_reader:
    """rosbags' Reader with errors that name the bag."""

    def __init__(self, bag: Path):
        self.bag = bag
        self.reader = None

    def __enter__(self):
        check_closed(self.bag)
        try:
            self.reader = Reader(self.bag)
            self.reader.open()
        except Exception as error:
            raise BagError(f"{self.bag}: cannot be read as a rosbag2 bag: {error}") from error
        return self.reader

    def __exit__(self, *exc) -> None:
        self.reader.close()

