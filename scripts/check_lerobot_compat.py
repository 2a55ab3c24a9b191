#!/usr/bin/env python3
"""Load one of our datasets with LeRobot's own ``LeRobotDataset`` and compare it with ours.

Not part of CI: LeRobot cannot live in the project's environment (docs/datasets.md). Run it
with a Python that has ``lerobot[dataset]`` (and pyarrow, PyAV, numpy for our reader):

    /tmp/lerobot-venv/bin/python scripts/check_lerobot_compat.py ROOT [--frames 12]

It compares, frame by frame, every low-dimensional feature, the task string and each camera's
image (LeRobot's float CHW in [0, 1] against our decoded uint8 HWC), checks that LeRobot's
metadata (counts, fps, features, stats) matches, and draws one action chunk across an
episode boundary with ``delta_timestamps``. Exit status 0 when everything matches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # our reader, without installing sf_policy

from sf_policy.data.reader import DatasetReader  # noqa: E402

IMAGE_MAX_MEAN_ABS_DIFF = 1.0  # uint8 levels: both sides decode the same mp4, up to colour conversion


def main() -> int:
    args = _parse()
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ours = DatasetReader(args.root)
    theirs = LeRobotDataset(f"local/{args.root.name}", root=args.root, video_backend=args.backend)
    print(f"lerobot {getattr(lerobot, '__version__', '?')}: {len(theirs)} frames, {theirs.num_episodes} episodes")
    failures = _compare_metadata(ours, theirs)
    indices = _sample_indices(ours, args.frames)
    for i in indices:
        failures += _compare_frame(ours, theirs, i)
    failures += _check_delta_timestamps(args, ours, LeRobotDataset)
    print(f"compared {len(indices)} frames ({', '.join(map(str, indices))}): "
          f"{'OK' if not failures else f'{len(failures)} mismatch(es)'}")
    for f in failures:
        print("  MISMATCH", f)
    return 1 if failures else 0


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--frames", type=int, default=12, help="how many frames to compare")
    parser.add_argument("--backend", default="pyav", help="LeRobot video backend (torchcodec needs system FFmpeg)")
    return parser.parse_args()


def _compare_metadata(ours: DatasetReader, theirs) -> list[str]:
    meta = theirs.meta
    failures = []
    checks = {"frames": (len(theirs), ours.num_frames), "episodes": (theirs.num_episodes, ours.num_episodes),
              "fps": (meta.fps, ours.fps), "tasks": (len(meta.tasks), len(ours.tasks)),
              "video keys": (list(meta.video_keys), ours.video_keys),
              "features": (sorted(meta.features), sorted(ours.features))}
    for name, (a, b) in checks.items():
        if a != b:
            failures.append(f"{name}: lerobot {a} vs ours {b}")
    for key in ours.features:
        if key not in (meta.stats or {}):
            failures.append(f"stats: lerobot has none for {key}")
    return failures


def _sample_indices(ours: DatasetReader, count: int) -> list[int]:
    """First and last frame of every episode, then evenly spread frames up to count."""
    edges = sorted({i for ep in ours.episodes for i in (ep.from_index, ep.to_index - 1)})
    spread = np.linspace(0, ours.num_frames - 1, max(count - len(edges), 0)).round().astype(int).tolist()
    return sorted(set(edges + spread))[:max(count, len(edges))]


def _compare_frame(ours: DatasetReader, theirs, index: int) -> list[str]:
    mine, item = ours[index], theirs[index]
    failures = []
    for key, value in mine.items():
        if key == "task":
            if item["task"] != value:
                failures.append(f"frame {index} task: {item['task']!r} vs {value!r}")
        elif key in ours.video_keys:
            image = (item[key].numpy().transpose(1, 2, 0) * 255).round().astype(np.int16)
            diff = np.abs(image - value.astype(np.int16))
            if image.shape != value.shape or diff.mean() > IMAGE_MAX_MEAN_ABS_DIFF:
                failures.append(f"frame {index} {key}: mean |diff| {diff.mean():.2f} levels, max {diff.max()}")
        elif not np.array_equal(np.asarray(item[key].numpy()).reshape(-1), np.asarray(value).reshape(-1)):
            failures.append(f"frame {index} {key}: {item[key].numpy()} vs {value}")
    return failures


def _check_delta_timestamps(args, ours: DatasetReader, dataset_cls) -> list[str]:
    """An action chunk reaching past the end of episode 0 is padded, as LeRobot's training does."""
    fps, horizon = ours.fps, 5
    deltas = {"action": [i / fps for i in range(horizon)]}
    chunked = dataset_cls(f"local/{args.root.name}", root=args.root, video_backend=args.backend,
                          delta_timestamps=deltas)
    last = ours.episodes[0].to_index - 1
    item = chunked[last - 1]
    expected = ours.column("action")[last - 1:last + 1]
    got = item["action"].numpy()
    pad = item["action_is_pad"].numpy().tolist()
    if not np.array_equal(got[:2], expected) or pad != [False, False] + [True] * (horizon - 2):
        return [f"delta_timestamps chunk at frame {last - 1}: padding {pad}"]
    return []


if __name__ == "__main__":
    sys.exit(main())
