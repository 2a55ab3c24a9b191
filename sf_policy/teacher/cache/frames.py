"""The teacher's inputs: a dataset's camera frames, decoded episode by episode for the rows still
to compute, in batches, prefetched by a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from sf_policy.data.features import DatasetError, image_key
from sf_policy.data.reader import DatasetReader
from sf_policy.topics import CAMERA_ROLES


def _camera_size(reader: DatasetReader) -> tuple[int, int]:
    """The (height, width) shared by the dataset's cameras (the teacher batches views of one size)."""
    sizes = {role: tuple(reader.features[image_key(role)]["shape"][:2]) for role in reader.camera_roles}
    if not sizes:
        raise DatasetError(f"{reader.root}: no camera streams, nothing for the teacher to see")
    if len(set(sizes.values())) > 1:
        raise DatasetError(f"{reader.root}: cameras of different sizes {sizes}; the teacher runs all views of a "
                           "frame together, which needs one size (resize the recordings or extend Teacher)")
    return next(iter(sizes.values()))


def frame_batches(reader: DatasetReader, todo: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(global indices [B], uint8 frames [B, 3, H, W, 3] in CAMERA_ROLES slot order) for the rows in `todo`.

    Decodes each episode's videos sequentially (far cheaper than seeking per frame); episodes
    with nothing to do are not opened. Slots the dataset lacks stay black (the teacher leaves
    them out anyway). Batches may span episodes: all frames have one size.
    """
    h, w = _camera_size(reader)
    slots = [(s, role) for s, role in enumerate(CAMERA_ROLES) if role in reader.camera_roles]
    first = reader.episodes[0].from_index if reader.episodes else 0
    indices: list[int] = []
    images = np.zeros((batch_size, len(CAMERA_ROLES), h, w, 3), np.uint8)
    for e, ep in enumerate(reader.episodes):
        start = ep.from_index - first
        need = todo[start:start + ep.length]
        if not need.any():
            continue
        streams = [reader.episode_frames(e, role) for _, role in slots]
        count = 0
        for k, views in enumerate(zip(*streams)):
            count += 1
            if not need[k]:
                continue
            for (s, _), image in zip(slots, views):
                images[len(indices), s] = image
            indices.append(start + k)
            if len(indices) == batch_size:
                yield np.array(indices), images.copy()
                indices.clear()
        if count != ep.length:
            raise DatasetError(f"{reader.root}: episode {ep.index} has {ep.length} frames but its videos "
                               f"decode to {count}")
    if indices:
        yield np.array(indices), images[:len(indices)].copy()


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Run `items` in a background thread, `depth` ahead: video decoding overlaps the GPU's work."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((end, exc))

    thread = threading.Thread(target=produce, name="teacher-cache-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
