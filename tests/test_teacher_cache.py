"""The teacher feature cache: cached == online targets, resume, staleness, fp8, memmap lookups.

Real files throughout: small synthetic LeRobot datasets written with DatasetWriter (real
PyAV video), the tiny random VGGT aggregator, real checkpoints on disk. CPU, a few seconds.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_dataset_support import FPS, record

from sf_policy.align.grid import PatchBox, letterbox_geometry
from sf_policy.data.features import STATE, image_key
from sf_policy.data.reader import DatasetReader
from sf_policy.data.writer import DatasetWriter
from sf_policy.teacher import AggregatorConfig, Teacher, official_state_dict, save_state_dict
from sf_policy.teacher.cache.build import build_cache
from sf_policy.teacher.cache.codec import decode, encode
from sf_policy.teacher.cache.entry import cache_teacher, open_cache, tiny_teacher
from sf_policy.teacher.cache.errors import CacheError, CacheNotFoundError, IncompleteCacheError, StaleCacheError
from sf_policy.teacher.cache.fingerprint import HASH_MEMO, file_sha256, pixel_fingerprint, state_dict_sha256
from sf_policy.teacher.cache.key import CacheKey, Preprocessing
from sf_policy.teacher.cache.locks import _build_lock
from sf_policy.teacher.cache.reader import TeacherCache
from sf_policy.teacher.cache.store import DONE, LOCK, META, TARGETS, Layout
from sf_policy.topics import CAMERA_ROLES

H, W = 48, 64  # 4:3 like the robot's 640×480: valid patch rows 2..13
THREE = {role: (H, W) for role in CAMERA_ROLES}
TWO = {"cam_high": (H, W), "cam_right_wrist": (H, W)}  # no left wrist camera
LENGTHS = (10, 7)


def _write(root, cameras, lengths) -> None:
    with DatasetWriter.create(root, fps=FPS, cameras=cameras) as writer:
        for e, n in enumerate(lengths):
            ep = writer.begin_episode(task=f"task {e}")
            record(ep, n, cameras, episode_seed=e)
            ep.save()


@pytest.fixture(scope="module")
def three_cams(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds3") / "ds"
    _write(root, THREE, LENGTHS)
    return root


@pytest.fixture(scope="module")
def two_cams(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds2") / "ds"
    _write(root, TWO, (6,))
    return root


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return tiny_teacher(seed=0)


@pytest.fixture(scope="module")
def built(three_cams, teacher, tmp_path_factory) -> TeacherCache:
    """The bf16 cache of the 3-camera dataset, built once for the read-only tests."""
    return build_cache(DatasetReader(three_cams), teacher, tmp_path_factory.mktemp("cache"), batch_size=4,
                       progress=False)


@pytest.fixture(scope="module")
def online(three_cams, teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """Online targets of every frame of the 3-camera dataset, float32."""
    return _online(DatasetReader(three_cams), teacher, range(sum(LENGTHS)))


class CountingTeacher(Teacher):
    """The real Teacher, counting the frames it is asked for."""

    frames = 0

    def targets(self, images, boxes=None):
        self.frames += len(images)
        return super().targets(images, boxes)


def _counting(seed: int = 0) -> CountingTeacher:
    t = tiny_teacher(seed=seed)
    return CountingTeacher(t.aggregator, width=t.width, layer=t.layer)


def _online(reader: DatasetReader, teacher: Teacher, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets computed the online way: random-access frames (reader[i]) straight into the teacher."""
    boxes = Preprocessing.from_teacher(teacher).boxes(reader)
    frames = np.zeros((len(indices), 3, H, W, 3), np.uint8)
    for b, i in enumerate(indices):
        item = reader[int(i)]
        for s, role in enumerate(CAMERA_ROLES):
            if role in reader.camera_roles:
                frames[b, s] = item[image_key(role)]
    return teacher.targets(frames, boxes)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


# --------------------------------------------------------------------------- cached == online


def test_cached_targets_equal_online_targets_on_the_same_frames(built, online):
    cache = built
    assert cache.num_frames == sum(LENGTHS) and cache.storage == "bf16" and cache.dim == 64
    assert cache.layout.tokens == 3 * 12 * 16  # only the letterbox rows 2..13 are stored
    assert (cache.path / TARGETS).stat().st_size == sum(LENGTHS) * 576 * 64 * 2

    indices = np.random.default_rng(0).permutation(sum(LENGTHS))[:9]  # both episodes, random order
    cached, valid = cache.get(indices)
    expected, expected_valid = online[0][indices], online[1][indices]
    assert cached.shape == expected.shape == (9, 3, 16, 16, 64) and cached.dtype == torch.float32
    assert torch.equal(valid, expected_valid) and valid[:, :, 2:14].all() and not valid[:, :, :2].any()
    assert cached[~valid].abs().max() == 0
    # bf16 keeps 8 significant bits: each element within 2^-8 of its value, cosine ~ 1.
    err = (cached - expected)[valid].abs()
    assert (err <= 2**-8 * expected[valid].abs() + 1e-30).all()
    assert _cosine(cached[valid], expected[valid]).min() > 0.99999
    bf16, _ = cache.get(indices, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16.float(), cached)


def test_a_dataset_without_a_camera_leaves_its_slot_invalid(two_cams, teacher, tmp_path):
    reader = DatasetReader(two_cams)
    cache = build_cache(reader, teacher, tmp_path, batch_size=4, progress=False)
    box = letterbox_geometry(H, W)[-1]
    assert cache.boxes == (box, None, box) and cache.layout.tokens == 2 * 192
    cached, valid = cache.get([5, 0, 3])
    online, online_valid = _online(reader, teacher, [5, 0, 3])
    assert torch.equal(valid, online_valid) and not valid[:, 1].any()
    assert cached[:, 1].abs().max() == 0
    assert _cosine(cached[valid], online[valid]).min() > 0.99999


# --------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def test_an_interrupted_build_resumes_computing_only_the_missing_rows(three_cams, tmp_path):
    reader = DatasetReader(three_cams)
    first = _counting()
    key = CacheKey.create(reader, state_dict_sha256(first.aggregator), Preprocessing.from_teacher(first))

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_cache(reader, first, tmp_path / "cache", key, batch_size=4, progress=False,
                    on_batch=stop_after_two_batches)
    assert first.frames == 8
    assert not [t for t in threading.enumerate() if t.name == "teacher-cache-decode"]  # decoding stopped
    path = tmp_path / "cache" / key.short
    assert np.fromfile(path / DONE, np.uint8).tolist() == [1] * 8 + [0] * 9
    with pytest.raises(IncompleteCacheError, match=r"9 of 17 frames missing.*sf train cache-teacher"):
        TeacherCache.open(tmp_path / "cache", key)

    # A kill between writing a row and marking it done leaves junk in a row not marked done:
    # the resumed build recomputes it.
    with open(path / TARGETS, "r+b") as f:
        f.seek(12 * 576 * 64 * 2)
        f.write(b"\x7f" * 1000)
    second = _counting()
    resumed = build_cache(reader, second, tmp_path / "cache", key, batch_size=4, progress=False)
    assert second.frames == 9  # only the missing rows
    fresh = build_cache(reader, _counting(), tmp_path / "fresh", key, batch_size=5, progress=False)
    everything = np.arange(17)
    assert torch.equal(resumed.tokens(everything), fresh.tokens(everything))
    again = _counting()
    build_cache(reader, again, tmp_path / "cache", key, progress=False)
    assert again.frames == 0  # complete: nothing to do
    sessions = json.loads((path / "build.json").read_text())["sessions"]
    assert [(s["frames_computed"], s["outcome"]) for s in sessions] == [
        (8, "interrupted: Interrupt"), (9, "complete"), (0, "complete")]


def test_one_builder_at_a_time(three_cams, teacher, tmp_path):
    reader = DatasetReader(three_cams)
    key = CacheKey.create(reader, state_dict_sha256(teacher.aggregator), Preprocessing.from_teacher(teacher))
    with pytest.raises(Interrupt):
        build_cache(reader, teacher, tmp_path, key, batch_size=4, progress=False,
                    on_batch=lambda *_: (_ for _ in ()).throw(Interrupt()))
    with _build_lock(tmp_path / key.short):
        with pytest.raises(CacheError, match=rf"being built by another process \(pid {os.getpid()}\)"):
            build_cache(reader, teacher, tmp_path, key, progress=False)
    assert (tmp_path / key.short / LOCK).exists()


def test_a_teacher_that_does_not_match_the_key_is_refused(three_cams, teacher, tmp_path):
    reader = DatasetReader(three_cams)
    key = CacheKey.create(reader, "0" * 64, Preprocessing(layer=0, width=56, aggregator=AggregatorConfig.tiny()))
    with pytest.raises(ValueError, match=r"layer = 1 \(key: 0\)"):
        build_cache(reader, teacher, tmp_path, key, progress=False)


# --------------------------------------------------------------------------- staleness


def test_appending_an_episode_makes_the_cache_stale(three_cams, teacher, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(three_cams, root)
    reader = DatasetReader(root)
    key = CacheKey.create(reader, state_dict_sha256(teacher.aggregator), Preprocessing.from_teacher(teacher))
    build_cache(reader, teacher, tmp_path / "cache", key, batch_size=8, progress=False)
    assert TeacherCache.open(tmp_path / "cache", key).num_frames == 17
    # The fingerprint does not depend on the reader object or on the dataset's location.
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert pixel_fingerprint(DatasetReader(moved)) == key.dataset["fingerprint"]

    with DatasetWriter.open(root) as writer:
        ep = writer.begin_episode("one more")
        record(ep, 4, THREE, episode_seed=5)
        ep.save()
    grown = DatasetReader(root)
    new_key = CacheKey.create(grown, state_dict_sha256(teacher.aggregator), Preprocessing.from_teacher(teacher))
    with pytest.raises(StaleCacheError, match=r"dataset changed: .*17 frames in 2 episodes.*now 21 frames in 3") as e:
        TeacherCache.open(tmp_path / "cache", new_key)
    assert e.value.parts == ("dataset",) and e.value.path == tmp_path / "cache" / key.short
    assert "sf train cache-teacher" in str(e.value) and "never used" in str(e.value)
    with pytest.raises(CacheNotFoundError, match="no teacher cache"):
        TeacherCache.open(tmp_path / "elsewhere", new_key)


def test_fingerprint_ignores_state_columns_but_not_video_bytes(three_cams, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(three_cams, root)
    before = pixel_fingerprint(DatasetReader(root))
    data = DatasetReader(root).episodes[0].data_file
    table = pq.read_table(data)
    state = table.column(STATE).combine_chunks()
    doubled = type(state).from_arrays(pa.array(2 * state.flatten().to_numpy()), type=state.type)
    pq.write_table(table.set_column(table.column_names.index(STATE), STATE, doubled), data)
    reread = DatasetReader(root)
    assert np.allclose(reread.episode_column(0, STATE), 2 * DatasetReader(three_cams).episode_column(0, STATE))
    assert pixel_fingerprint(reread) == before  # a state/action fix does not throw the cache away
    video = DatasetReader(root).episodes[1].videos["cam_left_wrist"].path
    raw = bytearray(video.read_bytes())
    raw[-100] ^= 0xFF  # same size, different content at the end (the mp4 sample table lives at an end)
    video.write_bytes(bytes(raw))
    assert pixel_fingerprint(DatasetReader(root)) != before


def test_another_checkpoint_or_layer_or_storage_is_detected(three_cams, tmp_path, monkeypatch):
    tiny = AggregatorConfig.tiny()
    (tmp_path / "a").mkdir()
    ckpt_a = save_state_dict(official_state_dict(tiny_teacher(seed=0).aggregator), tmp_path / "a" / "model.pt")
    ckpt_b = save_state_dict(official_state_dict(tiny_teacher(seed=1).aggregator), tmp_path / "b.safetensors")
    common = dict(cache_root=tmp_path / "cache", aggregator=tiny, width=56)
    built = cache_teacher(three_cams, ckpt_a, batch_size=8, device="cpu", progress=False, **common)
    assert built.num_frames == 17 and built.key.teacher["source"] == str(ckpt_a.resolve())

    # Training finds it without loading the teacher; so does a second cache-teacher run.
    assert open_cache(three_cams, ckpt_a, **common).path == built.path

    def no_loading(*args, **kwargs):
        raise AssertionError("the teacher was loaded although the cache is complete")

    monkeypatch.setattr(Teacher, "from_checkpoint", no_loading)
    assert cache_teacher(three_cams, ckpt_a, progress=False, **common).path == built.path

    with pytest.raises(StaleCacheError, match=r"teacher checkpoint changed: cached from .*model\.pt .*b\.safetensors"):
        open_cache(three_cams, ckpt_b, **common)
    with pytest.raises(StaleCacheError, match=r"preprocessing changed: layer = 1 in the cache, 0 now") as e:
        open_cache(three_cams, ckpt_a, layer=0, **common)
    assert e.value.parts == ("preprocessing",)
    with pytest.raises(StaleCacheError, match=r"storage = 'bf16' in the cache, 'fp8' now"):
        open_cache(three_cams, ckpt_a, dtype="fp8", **common)
    with pytest.raises(StaleCacheError, match=r"width = 56 in the cache, 518 now"):
        open_cache(three_cams, ckpt_a, cache_root=tmp_path / "cache", aggregator=tiny)
    assert open_cache(three_cams, ckpt_a, layer=1, **common).path == built.path  # -1 and 1 are one layer


def test_checkpoint_hash_is_memoised_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(1 << 16))
    real = file_sha256(path, tmp_path)
    memo = json.loads((tmp_path / HASH_MEMO).read_text())
    memo[str(path.resolve())]["sha256"] = "f" * 64  # prove that the memo, not the file, answers
    (tmp_path / HASH_MEMO).write_text(json.dumps(memo))
    assert file_sha256(path, tmp_path) == "f" * 64
    os.utime(path, ns=(1, 1))  # touched: hashed again
    assert file_sha256(path, tmp_path) == real == file_sha256(path)


# --------------------------------------------------------------------------- fp8, sizes


def test_fp8_storage_keeps_cosine_above_0_999(three_cams, teacher, online, tmp_path):
    cache = build_cache(DatasetReader(three_cams), teacher, tmp_path, dtype="fp8", batch_size=8, progress=False)
    assert cache.storage == "fp8"
    assert (cache.path / TARGETS).stat().st_size == 17 * 576 * 64  # one byte per value
    cached, valid = cache.get(np.arange(17))
    cos = _cosine(cached[valid], online[0][valid])
    print(f"fp8 cache vs float32 targets: cosine mean {cos.mean():.6f}, min {cos.min():.6f}")
    assert cos.mean() > 0.999 and cos.min() > 0.998
    assert cached[~valid].abs().max() == 0


def test_fp8_encoding_handles_any_magnitude_and_outlier_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 2048, generator=g)
    x[..., :4] *= 300.0  # a few massive-activation channels, as ViTs have
    x[1] *= 1e4  # far beyond e4m3's 448
    x[2] *= 1e-4
    x[3, 0] = 0.0
    y = decode(encode(x, "fp8"), "fp8")
    assert torch.isfinite(y).all() and y[3, 0].abs().max() == 0
    cos = _cosine(y[:, 1:], x[:, 1:])
    assert cos.min() > 0.999
    z = decode(encode(x, "bf16"), "bf16")
    assert z.dtype == torch.bfloat16 and _cosine(z[:, 1:], x[:, 1:]).min() > 0.99999


def test_sizes_for_the_robot_cameras():
    box = letterbox_geometry(480, 640)[-1]
    assert box == PatchBox(2, 14, 0, 16)
    bf16 = Layout(30_000, 2048, 16, "bf16", (box, box, box))
    fp8 = Layout(30_000, 2048, 16, "fp8", (box, box, box))
    assert bf16.tokens == 576
    assert bf16.nbytes() == 30_000 * (576 * 2048 * 2 + 1)  # 2.25 MiB per frame, ≈ 65.9 GiB
    assert fp8.nbytes() == 30_000 * (576 * 2048 + 576 * 4 + 1)  # ≈ 1.13 MiB per frame, ≈ 33.0 GiB
    assert round(bf16.nbytes() / 2**30, 1) == 65.9 and round(fp8.nbytes() / 2**30, 1) == 33.0


# --------------------------------------------------------------------------- lookups


def test_memmap_lookups_return_the_right_rows_in_any_order(built):
    cache = built
    rows = [cache[i][0] for i in range(17)]  # one at a time
    order = np.random.default_rng(1).permutation(17)
    targets, valid = cache.get(order)
    for b, i in enumerate(order):
        assert torch.equal(targets[b], rows[i])
    assert torch.equal(cache.get([3, 3])[0][1], rows[3])  # repeats are fine
    tokens = cache.tokens(order)
    assert tokens.shape == (17, 576, 64) and tokens.dtype == torch.bfloat16
    assert torch.equal(cache.to_grid(tokens)[0], targets)
    with pytest.raises(IndexError, match=r"\[0, 17\)"):
        cache.get([17])

    clone = pickle.loads(pickle.dumps(cache))  # what a DataLoader worker receives
    assert clone._maps is None and torch.equal(clone.get(order)[0], targets)
    loader = torch.utils.data.DataLoader(cache, batch_size=5, num_workers=1, multiprocessing_context="fork")
    batches = [t for t, _ in loader]
    assert torch.equal(torch.cat(batches), torch.stack(rows))


def test_meta_json_holds_the_key_in_readable_form(three_cams, built):
    cache = built
    meta = json.loads((cache.path / META).read_text())
    assert cache.path.name == meta["digest"][:16]
    assert meta["key"]["dataset"]["root"] == str(three_cams.resolve()) and meta["key"]["dataset"]["frames"] == 17
    prep = meta["key"]["preprocessing"]
    assert prep["layer"] == 1 and prep["width"] == 56 and prep["pe_scale"] == 0.1 and prep["storage"] == "bf16"
    assert prep["boxes"] == [[2, 14, 0, 16]] * 3 and prep["camera_roles"] == list(CAMERA_ROLES)
    assert meta["layout"]["tokens"] == 576 and meta["layout"]["files"]["targets.bin"] == ["int16", [17, 576, 64]]
