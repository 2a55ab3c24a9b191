"""A dataset's video frames decoded once into memory-mapped arrays, for fast random access.

Training draws frames in random order. From mp4 each draw seeks to a keyframe and decodes up
to a GOP of frames per camera: about 50 ms per 3-camera sample at 224², which on a 2-core
machine takes longer than the tiny model's training step. Decoding every episode
sequentially once (about 1 ms a frame) into one ``uint8 [N, H, W, 3]`` ``.npy`` per camera
turns a draw into a page-cache copy, at the price of disk: N·H·W·3 bytes per camera (3.4 GB
for 7,600 frames of three 224² cameras; 83 GB for 30k frames of three 640×480 ones, which is
why it is opt-in: ``data.frames=decoded``).

The files are keyed by the teacher cache's dataset fingerprint (which pixels land at which
global frame index), so re-encoding or appending episodes builds new ones, and written to a
``.tmp`` file renamed at the end: an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .reader import DatasetReader


def default_decoded_root() -> Path:
    """$SF_CACHE_DIR/frames, else ~/.cache/sf_policy/frames (beside the teacher cache)."""
    if os.environ.get("SF_CACHE_DIR"):
        return Path(os.environ["SF_CACHE_DIR"]) / "frames"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sf_policy" / "frames"


class DecodedFrames:
    """Random access to every frame of every camera: ``frames[i] -> {role: uint8 HxWx3}``."""

    def __init__(self, paths: dict[str, Path]):
        self.paths = dict(paths)
        self._arrays: dict[str, np.ndarray] | None = None  # opened lazily: one mapping per process

    @classmethod
    def ensure(cls, root: str | Path, cache_root: str | Path | None = None, progress: bool = True,
               log=print) -> DecodedFrames:
        """The decoded frames of the dataset at ``root``, decoding what is not there yet."""
        from ..teacher.cache.fingerprint import pixel_fingerprint

        reader = DatasetReader(root)
        try:
            digest = pixel_fingerprint(reader)[:16]
            folder = Path(cache_root) if cache_root else default_decoded_root()
            paths = {role: folder / f"{digest}-{role}.npy" for role in reader.camera_roles}
            missing = [role for role, path in paths.items() if not path.is_file()]
            if missing:
                _decode(reader, {role: paths[role] for role in missing}, progress, log)
        finally:
            reader.close()
        return cls(paths)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {role: np.load(path, mmap_mode="r") for role, path in self.paths.items()}
        return self._arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.paths else 0

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {role: np.array(array[index]) for role, array in self.arrays.items()}

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "_arrays": None}  # DataLoader workers map the files themselves


def _decode(reader: DatasetReader, paths: dict[str, Path], progress: bool, log) -> None:
    from tqdm.auto import tqdm

    total = reader.num_frames
    for role, path in paths.items():
        height, width = reader.features[f"observation.images.{role}"]["shape"][:2]
        size_gb = total * height * width * 3 / 1e9
        log(f"decoding {role} of {reader.root} once for training: {total} frames, {size_gb:.1f} GB -> {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two trainings may decode the same dataset at once
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, height, width, 3))
        row = 0
        with tqdm(total=total, desc=f"decode {role}", unit="frame", disable=not progress) as bar:
            for e, episode in enumerate(reader.episodes):
                count = 0
                for image in reader.episode_frames(e, role):
                    if count == episode.length:
                        break
                    out[row + count] = image
                    count += 1
                if count != episode.length:
                    raise ValueError(f"{reader.root}: episode {episode.index} camera {role}: decoded {count} frames, "
                                     f"meta/episodes says {episode.length}")
                row += count
                bar.update(count)
        out.flush()
        del out
        os.replace(tmp, path)
