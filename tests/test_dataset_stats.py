"""Feature statistics (sf_policy/data/stats.py) against numpy, and what the writer puts in stats.json.

What stats.py claims, and what is checked here:
  * vector_stats: min/max/mean/std/count and the quantiles q01 q10 q50 q90 q99, numpy's
    definitions (population std, 'linear' quantiles); scalars give arrays of shape (1,).
  * image_stats: per channel, in [0, 1] (uint8 / 255), arrays of shape (3, 1, 1) as LeRobot
    stores them; count = the number of frames sampled.
  * aggregate (LeRobot's way of combining episodes): min/max/count exact, mean and std exact
    up to rounding (parallel variance), quantiles only approximated by the count-weighted mean
    of the parts' quantiles. That approximation is good when the parts look alike and can be
    far off when they do not (documented below), which is why the writer recomputes the
    dataset's low-dimensional statistics exactly from all frames (up to
    EXACT_STATS_MAX_FRAMES) instead of aggregating.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_dataset_support import FPS, frame_images, record

from sf_policy.data import stats as stats_mod
from sf_policy.data.features import ACTION, INDEX, STATE, TIMESTAMP, image_key, numeric_keys
from sf_policy.data.reader import DatasetReader, load_episode_rows
from sf_policy.data.writer import DatasetWriter

QUANTILES = dict(zip(stats_mod.QUANTILE_KEYS, stats_mod.QUANTILES))


def test_stat_keys_are_lerobots():
    assert stats_mod.STAT_KEYS == ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")


def test_vector_stats_match_numpy():
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(1000, 14)) * np.linspace(0.1, 3, 14) + np.arange(14)).astype(np.float32)
    s = stats_mod.vector_stats(values)
    assert list(s) == list(stats_mod.STAT_KEYS)
    as64 = values.astype(np.float64)
    np.testing.assert_array_equal(s["min"], values.min(axis=0))
    np.testing.assert_array_equal(s["max"], values.max(axis=0))
    np.testing.assert_allclose(s["mean"], as64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s["std"], as64.std(axis=0), rtol=1e-12)  # population std (ddof 0), as LeRobot
    assert s["count"].tolist() == [1000]
    for key, q in QUANTILES.items():
        np.testing.assert_allclose(s[key], np.quantile(as64, q, axis=0), rtol=1e-12)
        assert s[key].shape == (14,)
    np.testing.assert_allclose(s["q50"], np.median(as64, axis=0), rtol=1e-12)
    assert np.all(s["q01"] <= s["q10"]) and np.all(s["q90"] <= s["q99"])


def test_scalars_and_integers():
    s = stats_mod.vector_stats(np.arange(10, 20, dtype=np.int64))
    assert all(v.shape == (1,) for v in s.values())
    assert s["min"].dtype == np.int64 and s["min"].tolist() == [10] and s["max"].tolist() == [19]
    assert s["mean"].tolist() == [14.5] and s["q50"].tolist() == [14.5]
    json.dumps(stats_mod.to_jsonable({INDEX: s}))  # ints stay JSON integers
    with pytest.raises(ValueError, match="N >= 1"):
        stats_mod.vector_stats(np.zeros((0, 14)))


def test_image_stats_are_per_channel_in_0_1():
    rng = np.random.default_rng(1)
    samples = np.stack([rng.integers(0, 256, size=(5, 24, 32)),      # uniform
                        rng.integers(100, 141, size=(5, 24, 32)),    # narrow, centred
                        rng.binomial(255, 0.2, size=(5, 24, 32))],   # skewed
                       axis=-1).astype(np.uint8)
    s = stats_mod.image_stats(samples)
    assert list(s) == list(stats_mod.STAT_KEYS)
    assert s["count"].tolist() == [5]  # frames sampled, as LeRobot counts images
    channels = samples.reshape(-1, 3).astype(np.float64) / 255.0
    expected = {"min": channels.min(0), "max": channels.max(0), "mean": channels.mean(0), "std": channels.std(0)}
    expected |= {key: np.quantile(channels, q, axis=0) for key, q in QUANTILES.items()}
    for key, value in expected.items():
        assert s[key].shape == (3, 1, 1), key
        np.testing.assert_allclose(s[key].reshape(3), value, rtol=1e-12, atol=1e-12, err_msg=key)
        assert np.all((0 <= s[key]) & (s[key] <= 1)), key
    with pytest.raises(ValueError, match="uint8"):
        stats_mod.image_stats(samples.astype(np.float32))


def test_json_round_trip():
    s = {STATE: stats_mod.vector_stats(np.random.default_rng(2).normal(size=(50, 14)))}
    back = stats_mod.from_jsonable(json.loads(json.dumps(stats_mod.to_jsonable(s))))
    for key in stats_mod.STAT_KEYS:
        np.testing.assert_array_equal(back[STATE][key], s[STATE][key])


def _parts() -> list[np.ndarray]:
    """Parts of different sizes and distributions, as episodes of different tasks are."""
    rng = np.random.default_rng(3)
    return [rng.normal(0.0, 1.0, size=(37, 14)), rng.normal(2.0, 0.5, size=(200, 14)),
            rng.uniform(-4.0, 4.0, size=(5, 14)), rng.normal(-1.0, 3.0, size=(90, 14))]


def test_aggregate_equals_stats_of_the_concatenation():
    parts = _parts()
    agg = stats_mod.aggregate([stats_mod.vector_stats(p) for p in parts])
    full = stats_mod.vector_stats(np.concatenate(parts))
    assert list(agg) == list(stats_mod.STAT_KEYS)
    np.testing.assert_array_equal(agg["min"], full["min"])
    np.testing.assert_array_equal(agg["max"], full["max"])
    assert agg["count"].tolist() == full["count"].tolist() == [sum(len(p) for p in parts)]
    np.testing.assert_allclose(agg["mean"], full["mean"], rtol=1e-12, atol=1e-12)  # exact up to rounding
    np.testing.assert_allclose(agg["std"], full["std"], rtol=1e-9)  # parallel variance


def test_aggregated_image_stats_equal_those_of_all_samples():
    rng = np.random.default_rng(4)
    parts = [rng.integers(0, 256, size=(k, 12, 16, 3), dtype=np.uint8) // d for k, d in ((3, 1), (7, 2), (1, 4))]
    agg = stats_mod.aggregate([stats_mod.image_stats(p) for p in parts])
    full = stats_mod.image_stats(np.concatenate(parts))
    assert agg["count"].tolist() == [11] and agg["mean"].shape == (3, 1, 1)
    for key in ("min", "max", "mean", "std"):
        np.testing.assert_allclose(agg[key], full[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_aggregated_quantiles_are_close_when_the_parts_look_alike():
    """Episodes of one task: the count-weighted mean of per-part quantiles is within 0.1 std."""
    rng = np.random.default_rng(5)
    parts = [rng.normal(1.0, 2.0, size=(n, 14)) for n in (3000, 5000, 4000, 6000)]
    agg = stats_mod.aggregate([stats_mod.vector_stats(p) for p in parts])
    full = stats_mod.vector_stats(np.concatenate(parts))
    for key in stats_mod.QUANTILE_KEYS:
        assert np.abs(agg[key] - full[key]).max() < 0.1 * full["std"].min(), key


def test_aggregated_quantiles_can_be_far_off_when_the_parts_differ():
    """The documented limit of the approximation: two tasks with separate ranges. The true q01
    lies in the lower part; the weighted mean of the parts' q01 lies between the two parts.
    Still ordered and inside [min, max], but not a quantile of the data."""
    rng = np.random.default_rng(6)
    low, high = rng.normal(0.0, 1.0, size=(4000, 1)), rng.normal(10.0, 1.0, size=(4000, 1))
    agg = stats_mod.aggregate([stats_mod.vector_stats(low), stats_mod.vector_stats(high)])
    full = stats_mod.vector_stats(np.concatenate([low, high]))
    assert full["q01"][0] < -1.5 and agg["q01"][0] > 2.0  # about half the data lies below the "q01"
    quantiles = [agg[k][0] for k in stats_mod.QUANTILE_KEYS]
    assert quantiles == sorted(quantiles) and agg["min"][0] <= quantiles[0] and quantiles[-1] <= agg["max"][0]


def test_the_writer_stores_exact_dataset_stats_and_per_episode_stats(tmp_path):
    root, cams, lengths = tmp_path / "ds", {"cam_high": (32, 48)}, (23, 14)
    with DatasetWriter.create(root, fps=FPS, cameras=cams) as writer:
        for e, n in enumerate(lengths):
            ep = writer.begin_episode(f"task {e}")
            record(ep, n, cams, episode_seed=e)
            ep.save()
    ds = DatasetReader(root)
    stats, features = ds.stats, ds.features
    # Low-dimensional: exact over all frames (quantiles too), not aggregated.
    for key in numeric_keys(features):
        expected = stats_mod.vector_stats(ds.column(key))
        for stat in stats_mod.STAT_KEYS:
            np.testing.assert_allclose(stats[key][stat], expected[stat], rtol=1e-12, err_msg=f"{key}.{stat}")
    assert stats[INDEX]["count"].tolist() == [sum(lengths)]
    # Per episode: meta/episodes rows carry stats/<feature>/<stat> of that episode alone.
    rows = load_episode_rows(root, with_stats=True)
    for e, row in enumerate(rows):
        for key in (STATE, ACTION, TIMESTAMP):
            expected = stats_mod.vector_stats(ds.episode_column(e, key))
            for stat in stats_mod.STAT_KEYS:
                np.testing.assert_allclose(row[f"stats/{key}/{stat}"], expected[stat], rtol=1e-12)
    # Images: from every 10th raw frame (not decoded), (3, 1, 1) in [0, 1], aggregated over episodes.
    key = image_key("cam_high")
    sampled = [np.stack([frame_images(i, cams, e)["cam_high"] for i in range(0, n, 10)]) for e, n in enumerate(lengths)]
    per_episode = [stats_mod.image_stats(s) for s in sampled]
    for e, row in enumerate(rows):
        np.testing.assert_allclose(np.asarray(row[f"stats/{key}/mean"]), per_episode[e]["mean"], rtol=1e-12)
    expected = stats_mod.aggregate(per_episode)
    assert stats[key]["count"].tolist() == [sum(len(s) for s in sampled)] == [3 + 2]
    for stat in stats_mod.STAT_KEYS:
        assert np.asarray(stats[key][stat]).shape == ((1,) if stat == "count" else (3, 1, 1))
        np.testing.assert_allclose(stats[key][stat], expected[stat], rtol=1e-12, err_msg=stat)
    assert all(0 <= stats[key][s].min() and stats[key][s].max() <= 1 for s in stats_mod.STAT_KEYS if s != "count")


def test_dataset_stats_are_exact_while_small_then_aggregated(monkeypatch):
    """DatasetStats (the writer's and sf dataset edit's stats.json): exact over every frame up
    to the limit, a pending episode counted as added, LeRobot's aggregation past the limit,
    and then no column is read any more."""
    monkeypatch.setattr(stats_mod, "EXACT_STATS_MAX_FRAMES", 10)
    rng = np.random.default_rng(0)
    episodes = [rng.normal(size=(n, 3)) for n in (4, 5, 6)]
    acc = stats_mod.DatasetStats(["x"])
    per_episode = [{"x": stats_mod.vector_stats(e)} for e in episodes]
    acc.add(per_episode[0], 4, {"x": episodes[0]})
    exact = acc.result(["x"], pending=(per_episode[1], {"x": episodes[1]}))["x"]
    np.testing.assert_allclose(exact["q50"], np.quantile(np.concatenate(episodes[:2]), 0.5, axis=0))
    acc.add(per_episode[1], 5, lambda: {"x": episodes[1]})
    acc.add(per_episode[2], 6, lambda: pytest.fail("columns read past the exact limit"))
    aggregated = acc.result(["x"])["x"]
    expected = stats_mod.aggregate([s["x"] for s in per_episode])
    for key in ("mean", "std", "min", "max", "count"):
        np.testing.assert_allclose(aggregated[key], expected[key])
