"""Recovering a bag whose recorder died mid-episode (kill -9, power cut, a full disk).

rosbag2 writes an MCAP file's summary and footer, and the bag's metadata.yaml, only when the
bag closes; without them rosbags (and ``ros2 bag``) refuse the bag. What did reach the disk is
still there: the header, the schemas and channels, and every chunk the writer finished
(rosbags closes a chunk every 1 MiB, one or two camera images). ``repair_bag`` reads those
records in file order with the ``mcap`` package's stream reader, which needs no summary,
stops at the first incomplete record, and writes them into a fresh bag with rosbags: same
topics, types, QoS, receive times and raw CDR bytes, and the custom data (the prompt, the
episode's start) the recorder kept beside the .mcap while it wrote (``OPEN_BAG_DATA``).
Only the chunk being filled at the moment of the crash is lost.

The truncated file is kept as ``<name>.mcap.truncated`` unless asked otherwise: nothing
that was recorded is thrown away by a repair.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos

from .bag import OPEN_BAG_DATA, OUTCOME_KEY, BagError, needs_repair, typestore

TRUNCATED_SUFFIX = ".truncated"
REPAIRED_KEY = "sf.repaired"  # custom data of a repaired bag: what was recovered


@dataclass
class RepairSummary:
    bag: Path
    repaired: bool          # False: the bag was complete, nothing was done
    messages: int = 0       # messages recovered
    topics: int = 0
    stopped_at: str = ""    # why reading stopped before the end of the file ("" if it ended cleanly)
    kept: Path | None = None  # the truncated original, if kept


def repair_bag(bag: str | Path, keep_original: bool = True) -> RepairSummary:
    """Rewrite an unclosed bag in place from the records that reached its .mcap file."""
    bag = Path(bag)
    if not bag.is_dir():
        raise BagError(f"{bag}: not a bag directory")
    if not needs_repair(bag):
        if (bag / "metadata.yaml").is_file():
            return RepairSummary(bag, repaired=False)
        raise BagError(f"{bag}: holds no .mcap file: nothing to repair")
    mcaps = sorted(bag.glob("*.mcap"))
    if len(mcaps) != 1:
        raise BagError(f"{bag}: {len(mcaps)} .mcap files ({', '.join(p.name for p in mcaps)}); "
                       "a recorder bag has one")
    source = mcaps[0]
    custom = _open_bag_data(bag)
    with tempfile.TemporaryDirectory(dir=bag.parent, prefix=f".{bag.name}.repair-") as scratch:
        # The new bag gets the old one's directory name, so its file is <name>.mcap as before.
        fresh = Path(scratch) / bag.name
        summary = _rewrite(source, fresh, custom)
        summary.bag = bag
        new_mcap = next(fresh.glob("*.mcap"))
        if keep_original:
            summary.kept = source.with_name(source.name + TRUNCATED_SUFFIX)
            source.replace(summary.kept)
        else:
            source.unlink()
        new_mcap.replace(bag / new_mcap.name)
        # metadata.yaml last: until it exists the bag still reads as "needs repair".
        (fresh / "metadata.yaml").replace(bag / "metadata.yaml")
    (bag / OPEN_BAG_DATA).unlink(missing_ok=True)
    return summary


def _open_bag_data(bag: Path) -> dict[str, str]:
    path = bag / OPEN_BAG_DATA
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return {str(k): str(v) for k, v in (data.get("custom_data") or {}).items()}
    except (OSError, yaml.YAMLError, AttributeError) as error:
        raise BagError(f"{path}: unreadable ({error}); move it away to repair the bag without its prompt") from error


def _rewrite(source: Path, target: Path, custom: dict[str, str]) -> RepairSummary:
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    summary = RepairSummary(target, repaired=True)
    writer = Writer(target, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    schemas: dict[int, Schema] = {}
    connections: dict[int, object] = {}
    try:
        with source.open("rb") as stream:
            try:
                for record in StreamReader(stream, emit_chunks=False).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel) and record.id not in connections:  # the summary repeats them
                        connections[record.id] = _add_connection(writer, source, record, schemas)
                    elif isinstance(record, Message) and record.channel_id in connections:
                        writer.write(connections[record.channel_id], record.log_time, record.data)
                        summary.messages += 1
            except (McapError, EOFError, struct.error, ValueError) as error:
                summary.stopped_at = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if not connections:
            raise BagError(f"{source}: no channel record survived; there is nothing to recover")
        summary.topics = len(connections)
        for key, value in custom.items():
            writer.set_custom_data(key, value)
        if custom.get(OUTCOME_KEY, "recorded") == "recorded":
            writer.set_custom_data(OUTCOME_KEY, "interrupted")  # the episode did not end normally
        writer.set_custom_data(REPAIRED_KEY, f"{summary.messages} messages recovered")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return summary


def _add_connection(writer: Writer, source: Path, channel, schemas: dict) -> object:
    schema = schemas.get(channel.schema_id)
    if schema is None:
        raise BagError(f"{source}: topic {channel.topic}: its schema record is missing")
    try:
        qos_text = channel.metadata.get("offered_qos_profiles", "")
        qos = parse_qos(qos_text) if qos_text else ()
        return writer.add_connection(channel.topic, schema.name, typestore=typestore(),
                                     serialization_format=channel.message_encoding, offered_qos_profiles=qos)
    except Exception as error:  # rosbags' own errors: unknown type, bad QoS text
        raise BagError(f"{source}: topic {channel.topic} ({schema.name}) cannot be rewritten: {error}") from error

