"""Record the twin's scripted operator straight into a dataset, without a ROS graph.

The same frames the recorder would store (one per control tick: the three cameras, the
puppet state, the master targets the expert commanded at that tick), written with the same
``DatasetWriter``. Tests, benchmarks and CPU training demos use it where a ROS round trip
adds nothing; `sf demo` records through ROS (docs/recording.md). Only successful episodes are
kept, as an operator would discard a failed demonstration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.features import ACTION, SKEW, STAMP_NAMES, STAMPS, STATE
from ..data.writer import DatasetWriter
from ..teacher.geometry import GeometryRecorder, depth_size
from ..topics import CAMERA_ROLES
from .experts import make_expert
from .twin import Twin


def record_expert(root: str | Path, task: str = "lift_pot", episodes: int = 2, seed: int = 0, width: int = 224,
                  height: int = 224, max_attempts: int | None = None, every: int = 1,
                  geometry: bool = False) -> list[int]:
    """Append ``episodes`` successful expert episodes to the dataset at ``root`` (created if
    needed); ``every`` keeps one tick in that many (a shorter, coarser dataset for fast tests:
    the dataset's fps stays 30, so use it only where timing does not matter). ``geometry``: also
    store each camera's depth and pose per frame under ``<root>/geometry/`` for the twin's
    geometry teacher (sf_policy/teacher/geometry.py). Returns the seeds that were kept."""
    root = Path(root)
    cameras = {role: (height, width) for role in CAMERA_ROLES}
    writer = DatasetWriter.open(root) if (root / "meta" / "info.json").is_file() else \
        DatasetWriter.create(root, fps=30, cameras=cameras)
    twin = Twin(task, width=width, height=height)
    kept: list[int] = []
    attempts = max_attempts or 3 * episodes
    try:
        for s in range(seed, seed + attempts):
            if len(kept) == episodes:
                break
            if _episode(writer, twin, s, every, geometry):
                kept.append(s)
    finally:
        twin.close()
        writer.close()
    if len(kept) < episodes:
        raise RuntimeError(f"the {task} expert succeeded in {len(kept)} of {attempts} episodes; wanted {episodes}")
    return kept


def _episode(writer: DatasetWriter, twin: Twin, seed: int, every: int, geometry: bool = False) -> bool:
    twin.reset(seed)
    expert = make_expert(twin)
    episode = writer.begin_episode(twin.info["prompt"], sim_seed=seed)
    depths = GeometryRecorder() if geometry else None
    depth_hw = depth_size(twin.height, twin.width)
    success = False
    while not twin.done() and not success:
        obs = twin.observe()
        action = expert.act()
        if twin.tick % every == 0:
            stamp = int(round(obs.time * 1e9))
            episode.add_frame({STATE: obs.state.astype(np.float32), ACTION: np.asarray(action, np.float32),
                               STAMPS: np.full(len(STAMP_NAMES), stamp, dtype=np.int64),
                               SKEW: np.zeros(1, np.float32)}, images=obs.images)
            if depths is not None:
                depths.add(twin.camera_depths(*depth_hw))
        twin.step(action)
        success = twin.success()
    if success and episode.num_frames > 0:
        summary = episode.save()
        if depths is not None:
            depths.save(writer.root, summary.episode_index, summary.length)
    else:
        episode.discard()
    return success
