"""Feature statistics in LeRobot's format (meta/stats.json and the episodes' ``stats/*`` columns).

Per feature: min, max, mean, std, count and the quantiles q01 q10 q50 q90 q99 (what
lerobot >= 0.4 writes; quantile normalization in its policies reads them). Vectors give
arrays of the feature's length, scalars arrays of length 1, images per-channel [3, 1, 1]
values in [0, 1] computed from frames sampled while recording (no decoding), with count =
the number of sampled frames, as LeRobot does.

Our quantiles are exact (numpy's linear interpolation) where LeRobot uses a 5000-bin
histogram; dataset-level low-dimensional statistics are recomputed from all frames when that
is cheap, otherwise aggregated as LeRobot does (count-weighted, parallel variance).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

QUANTILES: tuple[float, ...] = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS: tuple[str, ...] = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)
STAT_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)

Stats = dict[str, np.ndarray]


def vector_stats(values: np.ndarray) -> Stats:
    """Statistics over the first axis of (N,) or (N, D) values; (N,) gives arrays of shape (1,)."""
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"expected (N,) or (N, D) values with N >= 1, got shape {values.shape}")
    as_float = values.astype(np.float64)
    stats = {
        "min": values.min(axis=0),  # min/max keep the feature's dtype (ints stay ints in JSON)
        "max": values.max(axis=0),
        "mean": as_float.mean(axis=0),
        "std": as_float.std(axis=0),
        "count": np.array([len(values)], dtype=np.int64),
    }
    quantiles = np.quantile(as_float, QUANTILES, axis=0)
    stats.update(zip(QUANTILE_KEYS, quantiles))
    return stats


def image_stats(samples: np.ndarray) -> Stats:
    """Per-channel statistics in [0, 1] of uint8 frames (K, H, W, 3); arrays of shape (3, 1, 1)."""
    samples = np.asarray(samples)
    if samples.ndim != 4 or samples.shape[-1] != 3 or samples.dtype != np.uint8 or len(samples) == 0:
        raise ValueError(f"expected uint8 frames (K, H, W, 3) with K >= 1, got {samples.dtype} {samples.shape}")
    per_channel = [_uint8_channel_stats(samples[..., c]) for c in range(3)]
    stats = {key: np.array([ch[key] for ch in per_channel]).reshape(3, 1, 1) / 255.0
             for key in STAT_KEYS if key != "count"}
    stats["count"] = np.array([len(samples)], dtype=np.int64)
    return {key: stats[key] for key in STAT_KEYS}


def _uint8_channel_stats(channel: np.ndarray) -> dict[str, float]:
    """Exact statistics of uint8 values from their histogram (fast for millions of pixels)."""
    hist = np.bincount(channel.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    n = hist.sum()
    mean = (hist * levels).sum() / n
    var = (hist * (levels - mean) ** 2).sum() / n
    present = np.nonzero(hist)[0]
    out = {"min": float(present[0]), "max": float(present[-1]), "mean": mean, "std": np.sqrt(var)}
    cumulative = np.cumsum(hist)
    for key, q in zip(QUANTILE_KEYS, QUANTILES):
        out[key] = _histogram_quantile(cumulative, q * (n - 1))
    return out


def _histogram_quantile(cumulative: np.ndarray, position: float) -> float:
    """numpy's 'linear' quantile: interpolate between the values of ranks floor(p) and ceil(p)."""
    lower_rank, frac = int(np.floor(position)), position - np.floor(position)
    lower = np.searchsorted(cumulative, lower_rank, side="right")
    upper = np.searchsorted(cumulative, lower_rank + 1, side="right") if frac > 0 else lower
    return float(lower + frac * (upper - lower))


def aggregate(stats_list: list[Stats]) -> Stats:
    """Combine statistics of disjoint parts as LeRobot does: exact min/max/mean/std/count,
    quantiles as the count-weighted mean of the parts' quantiles (an approximation)."""
    if not stats_list:
        raise ValueError("nothing to aggregate")
    counts = np.array([float(s["count"][0]) for s in stats_list])
    total = counts.sum()
    means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in stats_list])
    weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * weights).sum(axis=0) / total
    variances = np.stack([np.asarray(s["std"], dtype=np.float64) ** 2 for s in stats_list])
    variance = ((variances + (means - mean) ** 2) * weights).sum(axis=0) / total
    out: Stats = {
        "min": np.min(np.stack([s["min"] for s in stats_list]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats_list]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for key in QUANTILE_KEYS:
        quantiles = np.stack([np.asarray(s[key], dtype=np.float64) for s in stats_list])
        out[key] = (quantiles * weights).sum(axis=0) / total
    return {key: out[key] for key in STAT_KEYS}


def to_jsonable(stats: dict[str, Stats]) -> dict[str, dict[str, list]]:
    """feature -> stat -> nested lists, as LeRobot writes meta/stats.json."""
    return {feature: {key: np.asarray(value).tolist() for key, value in ft.items()} for feature, ft in stats.items()}


def from_jsonable(data: dict) -> dict[str, Stats]:
    return {feature: {key: np.atleast_1d(np.asarray(value)) for key, value in ft.items()} for feature, ft in data.items()}


def expected_shape(feature: dict, stat: str) -> tuple[int, ...]:
    """Shape LeRobot expects for one statistic of a feature (info.json entry)."""
    if stat == "count":
        return (1,)
    if feature["dtype"] in ("video", "image"):
        return (3, 1, 1)
    return tuple(feature["shape"])


#: Up to this many frames, dataset statistics are recomputed exactly from all frames (the
#: low-dimensional columns are kept in memory: ~250 bytes a frame); beyond, aggregated.
EXACT_STATS_MAX_FRAMES = 200_000


class DatasetStats:
    """meta/stats.json as episodes are added, for the writer and for ``sf dataset edit``:
    exact over every frame while the dataset has at most ``EXACT_STATS_MAX_FRAMES``, then
    LeRobot's aggregation of the per-episode statistics."""

    def __init__(self, column_keys: Iterable[str]):
        self.episodes: list[dict[str, Stats]] = []
        self._columns: dict[str, list[np.ndarray]] | None = {k: [] for k in column_keys}
        self._frames = 0

    def add(self, ep_stats: dict[str, Stats], frames: int,
            columns: dict[str, np.ndarray] | Callable[[], dict[str, np.ndarray]]) -> None:
        """One more episode; ``columns`` (or a function reading them) is only used while exact."""
        self.episodes.append(ep_stats)
        self._frames += frames
        if self._columns is not None and self._frames > EXACT_STATS_MAX_FRAMES:
            self._columns = None  # from now on: aggregate
        if self._columns is not None:
            values = columns() if callable(columns) else columns
            for key, parts in self._columns.items():
                parts.append(values[key])

    def result(self, keys: Iterable[str], pending: tuple[dict[str, Stats], dict[str, np.ndarray]] | None = None
               ) -> dict[str, Stats]:
        """The statistics of every feature in ``keys``; ``pending``: an episode not added yet
        (its stats and columns), counted as if it were."""
        ep_stats, columns = pending if pending else (None, {})
        episodes = self.episodes + ([ep_stats] if ep_stats else [])
        if not episodes:
            return {}
        new_frames = len(next(iter(columns.values()))) if columns else 0
        exact = self._columns is not None and self._frames + new_frames <= EXACT_STATS_MAX_FRAMES
        out = {}
        for key in keys:
            if exact and key in self._columns:
                out[key] = vector_stats(np.concatenate(self._columns[key] + ([columns[key]] if key in columns else [])))
            else:
                out[key] = aggregate([s[key] for s in episodes])
        return out
