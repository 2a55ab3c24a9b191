"""The twin's geometry teacher: recorded depth and poses, back-projection, targets, cache, training.

Real parts: the MuJoCo twin (its renderer and mj_ray), the in-process recorder writing a
LeRobot v3 dataset with its geometry files, the teacher cache, the trainer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sf_policy.config import ConfigError
from sf_policy.data.features import DatasetError
from sf_policy.data.reader import DatasetReader
from sf_policy.teacher.geometry import (
    GeometryConfig,
    GeometryFrames,
    GeometryTeacher,
    back_project,
    depth_size,
    episode_path,
)
from sf_policy.train.config import load_config


@pytest.fixture(scope="module")
def geometry_dataset(tmp_path_factory) -> Path:
    from sf_policy.sim.record_without_ros import record_expert

    root = tmp_path_factory.mktemp("geo") / "dataset"
    record_expert(root, "lift_pot", episodes=2, width=112, height=84, every=6, geometry=True)
    return root


def test_back_projection_lands_where_the_ray_hits():
    """Every depth sample, back-projected, is the point MuJoCo's own ray cast from the camera hits."""
    import mujoco

    from sf_policy.sim.twin import Twin

    twin = Twin("lift_pot", width=112, height=84)
    try:
        twin.reset(3)
        h, w = depth_size(84, 112)
        assert (h, w) == (12, 16)
        for role, cam in twin.camera_depths(h, w).items():
            points = back_project(torch.tensor(cam.depth, dtype=torch.float64), torch.tensor(cam.pose), cam.focal)
            origin = cam.pose[:3, 3]
            checked = 0
            for v, u in [(0, 0), (h // 2, w // 2), (h - 1, w - 1), (2, w - 3)]:
                if cam.depth[v, u] > 5:  # nothing there (the twin has no walls)
                    continue
                direction = points[v, u].numpy() - origin
                direction /= np.linalg.norm(direction)
                distance = mujoco.mj_ray(twin.model, twin.data, origin, direction, None, 1, -1,
                                         np.zeros(1, np.int32))
                np.testing.assert_allclose(origin + distance * direction, points[v, u].numpy(), atol=2e-3,
                                           err_msg=f"{role} sample ({v}, {u})")
                checked += 1
            assert checked, role
    finally:
        twin.close()


def test_recording_stores_one_geometry_frame_per_dataset_frame(geometry_dataset):
    with DatasetReader(geometry_dataset) as reader:
        frames = GeometryFrames(reader)
        for position, ep in enumerate(reader.episodes):
            data = frames.episode(position)
            assert data["depth"].shape == (ep.length, 3, 12, 16) and data["depth"].dtype == np.float16
            assert data["pose"].shape == (ep.length, 3, 4, 4)
            assert np.allclose(data["pose"][:, :, 3], [0, 0, 0, 1])
            top = data["pose"][:, 0]  # cam_high is fixed; the wrist cameras move with the arms
            assert np.allclose(top, top[0]) and not np.allclose(data["pose"][:, 1], data["pose"][0, 1])
            assert 0.2 < float(np.median(data["depth"][:, 0])) < 3.0


def test_targets_encode_three_d_distance(geometry_dataset):
    """The encoding's cosine similarity falls with the 3-D distance between two patches' points."""
    teacher = GeometryTeacher(GeometryConfig(dim=256), grid=4, pe_scale=0.0)
    depth = torch.ones(1, 1, 8) * 1.0
    depth[..., 4:] = 1.5  # two surfaces: 1 m and 1.5 m away
    codes = teacher.encode(depth.reshape(1, 1, 8), torch.eye(4)[None], 4.0)[0, 0]  # [8, D]
    cos = torch.nn.functional.cosine_similarity(codes[:, None], codes[None], dim=-1)
    assert cos[0, 1] > cos[0, 3] > cos[0, 7]  # neighbours on one surface, then farther, then the other
    with DatasetReader(geometry_dataset) as reader:
        from sf_policy.teacher.cache.key import Preprocessing

        boxes = Preprocessing(grid=4).boxes(reader)
        indices, batch = next(GeometryTeacher(grid=4).input_batches(reader, np.ones(reader.num_frames, bool), 5))
    targets, valid = GeometryTeacher(grid=4).targets(batch, boxes)
    assert indices.tolist() == [0, 1, 2, 3, 4] and targets.shape == (5, 3, 4, 4, 64)
    assert valid[0, 0].sum() == 12  # 112×84 letterboxed: 4 columns × 3 rows of content
    assert torch.all(targets[~valid] == 0) and torch.all(targets[valid].norm(dim=-1) > 0.5)


def test_geometry_cache_and_training(geometry_dataset, tmp_path):
    from sf_policy.train.loop import train
    from sf_policy.train.targets import build_cache, vla_grid

    cfg = load_config("tiny", [f"data.root={geometry_dataset}", f"output_dir={tmp_path}", "teacher.kind=geometry",
                               f"teacher.cache_root={tmp_path / 'cache'}", "optim.steps=3", "data.workers=0",
                               "data.heldout_episodes=0", "log.save_every=3"])
    cache = build_cache(geometry_dataset, cfg.teacher, grid=vla_grid(cfg.policy), dim=cfg.align.teacher_dim,
                        progress=False)
    assert cache.dim == cfg.align.teacher_dim and cache.key.preprocessing["teacher"] == "geometry"
    random = build_cache(geometry_dataset, load_config("tiny", [f"teacher.cache_root={tmp_path / 'cache'}"]).teacher,
                         grid=vla_grid(cfg.policy), progress=False)
    assert random.path != cache.path  # two teachers, two caches of one dataset
    train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert any(np.isfinite(r.get("align", np.nan)) for r in rows)


def test_a_dataset_without_geometry_is_refused_by_name(geometry_dataset, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(geometry_dataset, copy)
    episode_path(copy, 1).unlink()
    with DatasetReader(copy) as reader, pytest.raises(DatasetError, match=r"episode_000001\.safetensors"):
        list(GeometryTeacher().input_batches(reader, np.ones(reader.num_frames, bool), 64))


def test_teacher_kind_config():
    assert load_config("small").teacher.kind == "random"
    assert load_config("pi0_sf").teacher.kind == "vggt"
    with pytest.raises(ConfigError, match="teacher.kind"):
        load_config("tiny", ["teacher.kind=depth"])
    with pytest.raises(ConfigError, match="mode cache"):
        load_config("tiny", ["teacher.kind=geometry", "teacher.mode=online"])
    from sf_policy.train.config import TrainConfig

    legacy = load_config("tiny").to_dict()  # a config saved before teacher.kind: `tiny: true`
    legacy["teacher"].pop("kind")
    legacy["teacher"]["tiny"] = True
    assert TrainConfig.from_dict(legacy).teacher.kind == "random"
    with pytest.raises(ValueError, match="multiple of 4"):
        GeometryConfig(dim=30)


def test_another_teachers_cache_is_named_as_such(geometry_dataset, tmp_path):
    from sf_policy.teacher.cache.entry import cache_teacher, open_cache
    from sf_policy.teacher.cache.errors import StaleCacheError

    cache_teacher(geometry_dataset, cache_root=tmp_path, tiny=True, grid=4, progress=False)
    with pytest.raises(StaleCacheError) as err:
        open_cache(geometry_dataset, cache_root=tmp_path, geometry=GeometryConfig(), grid=4)
    # The teacher's hash, then one line for the kind: not a field-by-field list of the other's settings.
    assert len(err.value.changes) == 2 and "twin geometry teacher" in err.value.changes[0]
    assert err.value.changes[1] == "teacher changed: a VGGT aggregator in the cache, the twin's geometry teacher now"
