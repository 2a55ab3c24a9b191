"""Self-contained training checkpoints, written atomically.

    <run>/checkpoints/step_000200/
        policy/              what the robot loads (Policy.save_pretrained: π0 safetensors +
                             config, tokenizer, normalizer.json, policy.json); EMA weights
                             when EMA is on; LoRA merged in
        aligner.safetensors  the SF projector (+ layer gate), and align.json: its config
        train_config.yaml    the resolved training config
        dataset.json         dataset root, fingerprint, frames, held-out episodes
        train_state/         accelerate's state (model, optimiser, scheduler, RNG) + trainer.json
                             (step, EMA): only for --resume
    <run>/checkpoints/latest  the newest complete step, as text

A checkpoint is first written to ``step_N.tmp`` and renamed when complete, so a crash never
leaves a half-written one. With several processes, every process writes its part of
``train_state/`` into the staging directory (accelerate's ``save_state``: the weights and
optimiser from the main process, each process's RNG state), then the main process writes the
rest and renames it. ``load_policy`` reads only ``policy/``: it needs neither the
teacher nor the alignment code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.features import INFO_PATH
from ..model.policy import Policy, is_peft

POLICY_DIR = "policy"
ALIGNER_FILE = "aligner.safetensors"
ALIGN_CONFIG_FILE = "align.json"
TRAIN_CONFIG_FILE = "train_config.yaml"
DATASET_FILE = "dataset.json"
STATE_DIR = "train_state"
TRAINER_FILE = "trainer.json"
LATEST = "latest"


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def dataset_fingerprint(root: str | Path) -> str:  # teacher.cache.fingerprint.pixel_fingerprint ignores state/action on purpose
    """sha256 over the dataset's metadata and tabular data (not the videos' bytes: their paths
    and sizes stand for them). Appending an episode changes it."""
    root = Path(root)
    digest = hashlib.sha256()
    files = [root / INFO_PATH, *sorted((root / "meta").rglob("*.parquet")), *sorted((root / "data").rglob("*.parquet"))]
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    for path in sorted((root / "videos").rglob("*.mp4")):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def staging_dir(run_dir: Path, step: int, fresh: bool = False) -> Path:
    """Where checkpoint ``step`` is written before its rename; ``fresh``: emptied first (main process)."""
    final = step_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if fresh:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(run_dir: Path, step: int, policy: Policy, aligner: torch.nn.Module | None, config_yaml: str,
                    dataset: dict, ema_state: dict[str, torch.Tensor] | None = None, trainer: dict | None = None,
                    keep_last: int = 2, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint ``step`` under ``run_dir`` and return its directory.

    ``trainer``: the resume bookkeeping (step, process count), written with the EMA into
    ``train_state/``, beside what accelerate's ``save_state`` already put in
    ``staging_dir(run_dir, step)/train_state`` (no ``trainer``: a checkpoint that cannot be
    resumed). ``weights``: the policy's whole state dict when its live parameters are shards (FSDP)."""
    final = step_dir(run_dir, step)
    tmp = staging_dir(run_dir, step)
    tmp.mkdir(parents=True, exist_ok=True)
    _export_policy(policy, ema_state, tmp / POLICY_DIR, weights)
    if aligner is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in aligner.state_dict().items()}, tmp / ALIGNER_FILE)
        (tmp / ALIGN_CONFIG_FILE).write_text(json.dumps(aligner.config.to_dict(), indent=1))
    (tmp / TRAIN_CONFIG_FILE).write_text(config_yaml)
    (tmp / DATASET_FILE).write_text(json.dumps(dataset, indent=1))
    if trainer is not None:
        (tmp / STATE_DIR).mkdir(exist_ok=True)
        if ema_state is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, tmp / STATE_DIR / "ema.safetensors")
        (tmp / STATE_DIR / TRAINER_FILE).write_text(json.dumps(trainer))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (final.parent / LATEST).write_text(final.name + "\n")
    _prune(final.parent, keep_last)
    return final


def _export_policy(policy: Policy, ema_state: dict[str, torch.Tensor] | None, path: Path,
                   weights: dict[str, torch.Tensor] | None = None) -> None:
    """The deployable policy: EMA weights if any, LoRA folded in, training untouched; ``weights``
    (FSDP's gathered state dict, keys of ``Policy``) instead of the live, sharded ones."""
    if weights is not None:  # the trainer refuses EMA and LoRA with FSDP
        policy.save_pretrained(path, state_dict={k.removeprefix("model."): v for k, v in weights.items()})
        return
    export = policy
    if ema_state is not None or is_peft(policy.model):
        export = copy.deepcopy(policy)  # merging or swapping weights must not touch the live model
        if ema_state is not None:
            params = dict(export.named_parameters())
            with torch.no_grad():
                for name, value in ema_state.items():
                    params[name].copy_(value)
        export.merge_lora()
    export.save_pretrained(path)


def _prune(checkpoints: Path, keep_last: int) -> None:
    steps = sorted(p for p in checkpoints.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    marker = Path(run_dir) / "checkpoints" / LATEST
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if path.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / POLICY_DIR).is_dir():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint (no {POLICY_DIR}/) nor a run with checkpoints/{LATEST}")
    return latest


def load_policy(path: str | Path, dtype: str | None = None) -> Policy:
    """The policy of a checkpoint (or of a run's latest one). Never imports the teacher."""
    return Policy.from_pretrained(resolve_checkpoint(path) / POLICY_DIR, dtype=dtype)


def trained_scenes(path: str | Path) -> set[int] | None:
    """The twin seeds a checkpoint was trained on (its dataset.json, or its dataset's
    ``sim/seed`` column for checkpoints written before it kept them); None when unknown."""
    checkpoint = resolve_checkpoint(path)
    dataset = json.loads((checkpoint / DATASET_FILE).read_text()) if (checkpoint / DATASET_FILE).is_file() else {}
    if "train_sim_seeds" in dataset:
        return set(dataset["train_sim_seeds"])
    from .config import load_config
    from .data import training_scenes

    try:
        cfg = load_config(str(checkpoint / TRAIN_CONFIG_FILE))
        seeds, _ = training_scenes(dataset.get("root") or cfg.data.root, cfg.data.heldout_episodes, cfg.seed)
    except Exception:  # noqa: BLE001 - the dataset moved or predates the field: unknown, not an error
        return None
    return seeds


def load_aligner_state(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(checkpoint) / ALIGNER_FILE)


def load_trainer_state(checkpoint: Path) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """(trainer.json: step, processes, distributed type; the EMA weights or None)."""
    state = checkpoint / STATE_DIR
    if not (state / TRAINER_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint}: no {STATE_DIR}/{TRAINER_FILE}; it cannot be resumed")
    trainer = json.loads((state / TRAINER_FILE).read_text())
    ema = load_file(state / "ema.safetensors") if (state / "ema.safetensors").is_file() else None
    return trainer, ema
