"""The dataset's features: names, dtypes, shapes, and the LeRobot v3.0 layout constants.

One place defines what a frame of our recordings holds, so the recorder, the writer, the
reader, training and evaluation agree. The ``features`` dict follows LeRobot's
``meta/info.json`` schema (dtype, shape, names per key) so LeRobot's own loader reads it.
"""

from __future__ import annotations

from ..embodiment import JOINT_NAMES
from ..topics import CAMERA_ROLES

CODEBASE_VERSION = "v3.0"


class DatasetError(Exception):
    """Any problem with a dataset on disk or with what is written to it; names the file and field."""


STATE = "observation.state"
ACTION = "action"
IMAGE_PREFIX = "observation.images."
# Sync columns: the recorder's record of real timing. Not under "observation." so that
# policies, which take every "observation.*" key as an input, never see them.
STAMPS = "sync.stamps_ns"
SKEW = "sync.camera_skew_ms"
#: Entries of STAMPS, in order: the control tick, then the header stamp of each message used.
STAMP_NAMES: tuple[str, ...] = ("tick", *CAMERA_ROLES, "puppet_left", "puppet_right", "master_left", "master_right")

# LeRobot's bookkeeping columns, present in every dataset (lerobot/datasets/utils.py).
TIMESTAMP = "timestamp"
FRAME_INDEX = "frame_index"
EPISODE_INDEX = "episode_index"
INDEX = "index"
TASK_INDEX = "task_index"
DEFAULT_FEATURES: dict[str, dict] = {
    TIMESTAMP: {"dtype": "float32", "shape": [1], "names": None},
    FRAME_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    EPISODE_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    INDEX: {"dtype": "int64", "shape": [1], "names": None},
    TASK_INDEX: {"dtype": "int64", "shape": [1], "names": None},
}

# Layout (LeRobot v3.0). We write one file per episode, so file index = episode index
# within its chunk; the size caps are LeRobot's defaults, kept for its writer's sake.
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
VIDEO_DIR = "videos"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
DATA_PATH = DATA_DIR + "/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = VIDEO_DIR + "/{video_key}/" + CHUNK_FILE + ".mp4"
STAGING_DIR = ".staging"  # outside data/, videos/, meta/: loaders never look here

#: LeRobot's tolerance when it looks a video frame up by timestamp (LeRobotDataset.tolerance_s).
TOLERANCE_S = 1e-4


def image_key(role: str) -> str:
    """Feature key of a camera role, e.g. ``observation.images.cam_high``."""
    if role not in CAMERA_ROLES:
        raise ValueError(f"unknown camera role {role!r}; expected one of {', '.join(CAMERA_ROLES)}")
    return IMAGE_PREFIX + role


def role_of(key: str) -> str:
    """Camera role of an image feature key (inverse of image_key)."""
    if not key.startswith(IMAGE_PREFIX):
        raise ValueError(f"{key!r} is not an image feature (expected the prefix {IMAGE_PREFIX!r})")
    return key[len(IMAGE_PREFIX):]


def robot_features(cameras: dict[str, tuple[int, int]]) -> dict:
    """The LeRobot ``features`` dict of a recording; ``cameras`` maps role -> (height, width)."""
    features: dict[str, dict] = {
        key: {"dtype": "float32", "shape": [len(JOINT_NAMES)], "names": list(JOINT_NAMES)} for key in (STATE, ACTION)
    }
    for role in CAMERA_ROLES:  # canonical order, whatever order the caller used
        if role in cameras:
            height, width = _check_resolution(role, cameras[role])
            features[image_key(role)] = {"dtype": "video", "shape": [height, width, 3],
                                         "names": ["height", "width", "channels"]}
    unknown = set(cameras) - set(CAMERA_ROLES)
    if unknown:
        raise ValueError(f"unknown camera role(s) {sorted(unknown)}; expected some of {', '.join(CAMERA_ROLES)}")
    features[STAMPS] = {"dtype": "int64", "shape": [len(STAMP_NAMES)], "names": list(STAMP_NAMES)}
    features[SKEW] = {"dtype": "float32", "shape": [1], "names": ["camera_skew_ms"]}
    features.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
    return features


def resolution_problem(size: int) -> str | None:
    """Why a camera width or height cannot be recorded, or None. yuv420p halves chroma in both
    directions, so odd sizes cannot be encoded (the camera config is checked by the same rule)."""
    if size <= 0:
        return f"must be positive, got {size}"
    if size % 2:
        return f"must be even (the videos are yuv420p: chroma is halved in both directions), got {size}"
    return None


def _check_resolution(role: str, hw: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in hw)
    if resolution_problem(height) or resolution_problem(width):
        raise ValueError(f"camera {role}: resolution (height, width) = {hw} must be positive and even")
    return height, width


def video_keys(features: dict) -> list[str]:
    return [k for k, ft in features.items() if ft["dtype"] == "video"]


def frame_keys(features: dict) -> list[str]:
    """Low-dimensional keys a caller supplies per frame (everything but images and bookkeeping)."""
    return [k for k, ft in features.items() if ft["dtype"] not in ("video", "image") and k not in DEFAULT_FEATURES]


def numeric_keys(features: dict) -> list[str]:
    """Keys stored in the data parquet files (LeRobot computes statistics for all of them)."""
    return [k for k, ft in features.items() if ft["dtype"] not in ("video", "image", "string")]


def episode_location(episode_index: int, chunks_size: int = CHUNKS_SIZE) -> dict[str, int]:
    """Chunk and file index of an episode's files: one file per episode, chunks of chunks_size files."""
    return {"chunk_index": episode_index // chunks_size, "file_index": episode_index % chunks_size}
