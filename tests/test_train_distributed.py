"""Training on several processes: the same run as one process with the same global batch.

The slow tests start real processes with ``torchrun`` (gloo on the CPU, the path a GPU run takes
with NCCL) on a twin dataset and compare them with a one-process run; the accelerator they use
is asserted to see two processes (trainer.json records it). FSDP: accelerate only enables it on
accelerator devices (its state.py chooses FSDP only after a GPU-like distributed type), so the
trainer's FSDP path needs a GPU; what can be checked on the CPU is that π0 sharded by our wrap
units (torch's fully_shard over gloo) computes the unsharded loss and gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sf_policy.topics import CAMERA_ROLES
from sf_policy.train.data import ResumableBatches
from sf_policy.train.distributed import FSDP_WRAP, LaunchError, check_resume, check_world, per_process_batch

REPO = Path(__file__).resolve().parents[1]


# -- the pure rules (default tier)


def test_the_processes_partition_one_permutation_per_epoch_and_resume_where_they_were():
    size, global_batch = 23, 6
    one = iter(ResumableBatches(size, global_batch, seed=4))
    ranks = [iter(ResumableBatches(size, global_batch, seed=4, rank=r, processes=3)) for r in range(3)]
    seen_in_epoch: list[int] = []
    for _ in range(12):
        parts = [next(r) for r in ranks]
        assert sum(parts, []) == next(one)  # together: the one-process batch, in order
        assert all(len(p) == 2 for p in parts)
        seen_in_epoch += sum(parts, [])
    epoch = seen_in_epoch[:size]  # 72 draws cover epoch 0 completely: every frame once, on one process
    assert sorted(epoch) == list(range(size))
    resumed = iter(ResumableBatches(size, global_batch, seed=4, start=5, rank=1, processes=3))
    again = iter(ResumableBatches(size, global_batch, seed=4, rank=1, processes=3))
    for _ in range(5):
        next(again)
    assert [next(resumed) for _ in range(4)] == [next(again) for _ in range(4)]


def test_an_uneven_global_batch_is_refused_naming_the_fields_and_what_divides():
    assert per_process_batch(16, 2, 4) == 2
    with pytest.raises(ValueError, match=r"optim.batch_size 16 does not divide into 3 process\(es\) × "
                                         r"optim.grad_accum 1 .*set optim.batch_size to 15 or 18"):
        per_process_batch(16, 1, 3)
    with pytest.raises(ValueError, match=r"set optim.batch_size to 8 \(a multiple of 8\)"):
        per_process_batch(4, 2, 4)


def test_an_accelerator_that_runs_fewer_processes_than_were_launched_is_refused():
    from accelerate import Accelerator

    with pytest.raises(LaunchError, match="2 processes were launched but accelerate sees 1.*torchrun"):
        check_world(Accelerator(cpu=True), launched=2)


def test_resuming_on_another_process_count_re_shards_ddp_and_refuses_fsdp():
    assert check_resume({"processes": 2}, 2, "MULTI_GPU", "ck") is None
    assert "re-sharded" in check_resume({"processes": 2}, 1, "NO", "ck")
    with pytest.raises(ValueError, match="written by 4 FSDP process.*resume it on 4 processes"):
        check_resume({"processes": 4, "distributed": "DistributedType.FSDP"}, 2, "FSDP", "ck")


def test_the_shipped_accelerate_configs_load_and_fsdp_wraps_the_decoder_layers():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = REPO / "sf_policy" / "train" / "configs" / "accelerate"
    ddp = load_config_from_file(str(folder / "ddp.yaml"))
    fsdp = load_config_from_file(str(folder / "fsdp.yaml"))
    assert str(ddp.distributed_type).endswith("MULTI_GPU") and str(fsdp.distributed_type).endswith("FSDP")
    wrap = yaml.safe_load((folder / "fsdp.yaml").read_text())["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    assert tuple(wrap.split(",")) == FSDP_WRAP


# -- real processes (slow tier)


@pytest.fixture(scope="module")
def twin_dataset(tmp_path_factory) -> Path:
    from sf_policy.sim.record_without_ros import record_expert

    root = tmp_path_factory.mktemp("twin") / "dataset"
    record_expert(root, "grasp_vegetable", episodes=3, width=64, height=48, every=3)
    return root


def _overrides(root: Path, out: Path, *more: str) -> list[str]:
    return [f"data.root={root}", f"output_dir={out}", f"teacher.cache_root={root.parent / 'cache'}", "log.every=1",
            "optim.steps=6", "optim.warmup_steps=2", "optim.batch_size=8", "optim.grad_accum=2",  # 2 × 4: 2 a process
            "log.eval_every=3", "log.save_every=3", "log.keep_last=3",
            "data.workers=0", *more]


def _launch(processes: int, arguments: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N -m sf_policy.cli.train ARGUMENTS``, as docs/training.md says."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "sf_policy.cli.train", *arguments]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "300"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _train(processes: int, overrides: list[str], resume: Path | None = None) -> subprocess.CompletedProcess:
    return _launch(processes, ["run", "tiny", *overrides, "--no-progress"]
                   + (["--resume", str(resume)] if resume is not None else []))


def _metrics(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def _same_trajectory(mine: dict[int, dict], theirs: dict[int, dict], steps, rel: float) -> None:
    for step in steps:
        assert mine[step]["lr"] == pytest.approx(theirs[step]["lr"], rel=1e-12), step
        for key in ("loss", "action", "align"):
            assert mine[step][key] == pytest.approx(theirs[step][key], rel=rel), (step, key)


@pytest.mark.slow
def test_two_processes_train_the_one_process_run_save_once_and_resume(twin_dataset, tmp_path):
    from sf_policy.train.checkpoint import load_policy
    from sf_policy.train.config import load_config
    from sf_policy.train.loop import lr_lambda
    from sf_policy.train.targets import open_cache, vla_grid

    cfg = load_config("tiny", _overrides(twin_dataset, tmp_path / "one"))
    # The teacher cache, built by two processes (each a share of the episodes), complete for all.
    cached = _launch(2, ["cache-teacher", "tiny", *_overrides(twin_dataset, tmp_path / "one")])
    assert cached.stdout.count("cache ready") == 1
    assert open_cache(twin_dataset, cfg.teacher, grid=vla_grid(cfg.policy), dim=cfg.align.teacher_dim).missing() == 0

    _train(1, _overrides(twin_dataset, tmp_path / "one"))
    two = _train(2, _overrides(twin_dataset, tmp_path / "two"))
    assert two.stdout.count("done") == 1  # one process reports, not both
    one_run, two_run = tmp_path / "one" / "tiny", tmp_path / "two" / "tiny"
    final = two_run / "checkpoints" / "step_000006"
    assert json.loads((final / "train_state" / "trainer.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (final / "train_state").glob("random_states_*.pkl")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]

    # The LR schedule is stepped once per optimiser step (warm-up over 2 of 6 steps, then cosine),
    # and the losses are those of the one-process run with the same global batch (8: 2 micro-batches of 4).
    one, both = _metrics(one_run), _metrics(two_run)
    factor = lr_lambda(cfg)
    assert [both[s]["lr"] for s in range(1, 7)] == pytest.approx([cfg.optim.lr * factor(s) for s in range(1, 7)])
    _same_trajectory(both, one, range(1, 7), rel=1e-6)  # measured: ≤ 1e-7, the order of the sums
    assert len({round(both[s]["loss"], 6) for s in range(1, 7)}) == 6  # it really trains
    evals = [[r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval/action" in r]
             for run in (one_run, two_run)]
    assert [r["step"] for r in evals[1]] == [0, 3, 6]
    for mine, theirs in zip(*evals):  # the held-out figures too (MAE: means of per-process means)
        for key in ("eval/action", "eval/align"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), (mine["step"], key)
        assert mine["eval/joint_mae_rad"] == pytest.approx(theirs["eval/joint_mae_rad"], rel=0.05)

    # The two-process checkpoint is a policy like any other, with the one-process run's weights.
    policy, alone = load_policy(final), load_policy(one_run / "checkpoints" / "step_000006")
    for (name, mine), (_, theirs) in zip(policy.named_parameters(), alone.named_parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=name)
    sample = {"images": {r: np.full((48, 64, 3), 90, np.uint8) for r in CAMERA_ROLES},
              "state": np.zeros(14, np.float32), "prompt": "pick up the carrot with the right gripper"}
    chunks = [p.predict([sample], generator=torch.Generator().manual_seed(0)) for p in (policy, alone)]
    assert chunks[0].shape == (1, 50, 14) and np.abs(chunks[0] - chunks[1]).max() < 1e-4

    # Resumed on two processes: the uninterrupted run's steps 4-6 (here with per-layer gradient
    # checkpointing under DDP: the same gradients); on one process (re-sharded): the same.
    for processes, name, more in ((2, "resume2", ["optim.gradient_checkpointing=true"]), (1, "resume1", [])):
        out = tmp_path / name
        resumed = _train(processes, _overrides(twin_dataset, out, *more),
                         resume=two_run / "checkpoints" / "step_000003")
        if processes == 1:
            assert "re-sharded" in resumed.stdout
        _same_trajectory(_metrics(out / "tiny"), both, range(4, 7), rel=1e-6)

    # A global batch that does not split over the processes: one line naming the fields, from one process.
    uneven = _launch(2, ["run", "tiny", *_overrides(twin_dataset, tmp_path / "uneven"), "optim.batch_size=6"], ok=False)
    refusal = "error: optim.batch_size 6 does not divide into 2 process(es) × optim.grad_accum 2"
    assert uneven.stdout.count(refusal) == 1
    assert "set optim.batch_size to 4 or 8" in uneven.stdout and "Traceback" not in uneven.stdout


_FSDP_CHECK = r"""
import sys, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from sf_policy.train.distributed import FSDP_WRAP

dist.init_process_group("gloo")
data = torch.load(sys.argv[1], weights_only=False)
policy, reshard = data["policy"], data["reshard_after_forward"]
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
for module in list(policy.modules()):
    if type(module).__name__ in FSDP_WRAP:
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard)
fully_shard(policy, mesh=mesh, reshard_after_forward=reshard)
rows = slice(dist.get_rank() * 2, dist.get_rank() * 2 + 2)  # this process's half of the batch of 4
batch = {k: v[rows] if torch.is_tensor(v) else v for k, v in data["batch"].items()}
loss, _ = policy(batch, noise=data["noise"][rows], timestep=data["timestep"][rows])
loss.backward()
grads = {n: p.grad.full_tensor() for n, p in policy.named_parameters() if p.grad is not None}
losses = [torch.zeros(()) for _ in range(dist.get_world_size())]
dist.all_gather(losses, loss.detach())
if dist.get_rank() == 0:
    torch.save({"loss": torch.stack(losses).mean(), "grads": grads}, sys.argv[2])
dist.barrier()  # neither leaves while the other still talks to it (gloo aborts a process otherwise)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_pi0_sharded_by_the_fsdp_units_computes_the_unsharded_loss_and_gradients(twin_dataset, tmp_path):
    from sf_policy.model.policy import Policy, PolicyConfig
    from sf_policy.model.tokenizer import tiny_tokenizer
    from sf_policy.train.data import ChunkDataset

    tiny_tokenizer(str(tmp_path / "tok"))
    torch.manual_seed(0)
    policy = Policy.build(PolicyConfig(tiny=True, tokenizer=str(tmp_path / "tok")),
                          stats=_stats(twin_dataset))
    dataset = ChunkDataset(twin_dataset, np.arange(4))
    batch = dict(policy.processor([{k: v for k, v in dataset[i].items() if k != "index"} for i in range(4)]))
    g = torch.Generator().manual_seed(0)
    noise, timestep = policy.noise_like(4, g), policy.sample_time(4, g)
    fsdp = yaml.safe_load((REPO / "sf_policy/train/configs/accelerate/fsdp.yaml").read_text())["fsdp_config"]
    torch.save({"policy": policy, "batch": batch, "noise": noise, "timestep": timestep,
                "reshard_after_forward": fsdp["fsdp_reshard_after_forward"]}, tmp_path / "in.pt")

    loss, _ = policy(batch, noise=noise, timestep=timestep)
    loss.backward()
    expected = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}

    script = tmp_path / "fsdp_check.py"
    script.write_text(_FSDP_CHECK)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sharded = torch.load(tmp_path / "out.pt", weights_only=False)
    assert float(sharded["loss"]) == pytest.approx(float(loss.detach()), rel=1e-5)
    assert set(sharded["grads"]) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(sharded["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _stats(root: Path):
    from sf_policy.data.reader import DatasetReader
    from sf_policy.model.actions import policy_stats

    with DatasetReader(root) as reader:
        return policy_stats(reader, "delta", 50)
