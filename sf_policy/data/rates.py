"""The rate an episode was really recorded at, from its header stamps (``sync.stamps_ns``).

A frame starts with each top-camera image (sf_policy/record/sync.py), so frame k's time is
that image's capture stamp and the episode's real rate is the top camera's: (frames - 1) /
stamp span. LeRobot's timestamps are frame_index / fps, so an episode whose cameras delivered
18 Hz into a 30 fps dataset replays 1.7x too fast, and a policy trained on it learns motions
1.7x too quick. A wrist camera that delivered fewer images than the top camera shows up as
frames that repeat its previous image (the frame sync's duplicates).

The writer stores each camera's measured rate in the episode's meta/episodes row
(``sync/measured_fps/<role>``); ``sf dataset validate`` recomputes it from the data (so old
datasets are checked too) and warns below ``SHORTFALL`` of the dataset's fps; the recorder
logs the same warning when it saves such an episode.
"""

from __future__ import annotations

import numpy as np

from .features import STAMP_NAMES

PIVOT = "cam_high"   # the camera whose images start frames (record/sync.py)
SHORTFALL = 0.9      # a camera delivering under 90 % of the dataset's rate is flagged
COLUMN = "sync/measured_fps/{role}"


def measured_rates(stamps: np.ndarray, cameras: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Images per second each camera delivered over the episode (``stamps``: [frames, len(STAMP_NAMES)]).

    Empty when it cannot be told: fewer than 2 frames, or no top-camera stamps."""
    stamps = np.asarray(stamps, dtype=np.int64)
    if stamps.ndim != 2 or stamps.shape[0] < 2 or stamps.shape[1] != len(STAMP_NAMES) or PIVOT not in cameras:
        return {}
    pivot = stamps[:, STAMP_NAMES.index(PIVOT)]
    span_s = (int(pivot[-1]) - int(pivot[0])) / 1e9
    if span_s <= 0:  # no stamps (all 0), or not increasing
        return {}
    frames_per_s = (len(pivot) - 1) / span_s
    rates = {}
    for role in cameras:
        column = stamps[:, STAMP_NAMES.index(role)]
        if (column == 0).all():  # a camera left out of the recording holds 0
            continue
        rates[role] = frames_per_s * len(np.unique(column)) / len(column)
    return rates


def rate_columns(rates: dict[str, float]) -> dict[str, float]:
    """The meta/episodes columns that keep them."""
    return {COLUMN.format(role=role): round(float(hz), 3) for role, hz in rates.items()}


def shortfalls(rates: dict[str, float], fps: float) -> list[str]:
    """One sentence per camera that delivered less than ``SHORTFALL`` x ``fps``."""
    out = []
    pivot = rates.get(PIVOT)
    if pivot is not None and pivot < SHORTFALL * fps:
        out.append(f"frames were taken at {pivot:.1f} Hz ({PIVOT} header stamps) in a {fps:g} fps dataset: "
                   f"it replays {fps / pivot:.2f}x too fast")
    for role, hz in rates.items():
        if role != PIVOT and pivot and hz < SHORTFALL * pivot:
            out.append(f"{role} delivered {hz:.1f} images/s: {100 * (1 - hz / pivot):.0f} % of its frames "
                       "repeat the previous image")
    return out
