"""Training configuration: one dataclass tree, stored as YAML so two runs can be diffed.

A run starts from a named preset (``sf_policy/train/configs/<name>.yaml``: ``pi0_sf`` is the
paper's real-robot recipe, ``pi0_baseline`` the same with α = 0, ``tiny`` a CPU-sized model
that trains in minutes) or a YAML file of your own, then ``section.field=value`` overrides
from the command line. The resolved config is written into every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from ..align.aligner import AlignConfig
from ..config import ConfigError
from ..model.policy import PolicyConfig

PRESETS_DIR = Path(__file__).parent / "configs"
TEACHER_KINDS = ("vggt", "random", "geometry")


@dataclass
class TeacherConfig:
    """Where alignment targets come from. ``kind``: ``vggt`` (the real teacher, from
    ``checkpoint``), ``random`` (a random tiny VGGT aggregator: exercises SF, knows no 3-D) or
    ``geometry`` (the twin's exact geometry, simulation only: sf_policy/teacher/geometry.py; its
    width is ``align.teacher_dim``). ``mode``: ``cache`` (precomputed once with ``sf train
    cache-teacher``; the default) or ``online`` (the teacher runs at every step; vggt and random)."""

    kind: str = "vggt"
    mode: str = "cache"
    checkpoint: str | None = None  # VGGT-1B model.pt / model.safetensors
    cache_root: str | None = None  # default: teacher.cache.store.default_cache_root() ($SF_CACHE_DIR, else ~/.cache/sf_policy/teacher)
    width: int = 518  # teacher input width (height keeps the aspect, multiple of 14)
    layer: int = -1  # aggregator layer (−1: the last of 24)
    dtype: str = "bf16"  # cache storage: bf16 | fp8
    batch_size: int = 8  # frames per teacher batch when caching
    seed: int = 0  # the random teacher's weights; the geometry teacher's frequencies

    def __post_init__(self) -> None:
        if self.mode not in ("cache", "online"):
            raise ValueError(f"teacher.mode must be cache or online, got {self.mode!r}")
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"teacher.kind must be one of {', '.join(TEACHER_KINDS)}, got {self.kind!r}")
        if self.kind == "geometry" and self.mode == "online":
            raise ValueError("teacher.kind geometry reads the depth recorded with the dataset: use teacher.mode cache")


@dataclass
class OptimConfig:
    steps: int = 20_000
    batch_size: int = 16  # per optimiser step, over all processes and accumulation
    grad_accum: int = 1
    lr: float = 2.5e-5
    warmup_steps: int = 1_000
    min_lr_ratio: float = 0.1  # cosine decays to lr × this
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-10
    clip_norm: float = 1.0  # over the policy AND the projector (the official code clips the policy only)
    ema_decay: float = 0.0  # 0: no EMA
    mixed_precision: str = "bf16"  # accelerate: no | bf16 | fp16
    gradient_checkpointing: bool = False  # every SigLIP/VLM/expert layer (model/checkpointing.py)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        _require(self, "optim", steps=(1, None), batch_size=(1, None), grad_accum=(1, None), warmup_steps=(0, None),
                 min_lr_ratio=(0.0, 1.0), weight_decay=(0.0, None), ema_decay=(0.0, 1.0))
        for name in ("lr", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        if not self.ema_decay < 1.0:  # 1 would keep the initial weights forever
            raise ValueError(f"optim.ema_decay must be below 1 (0: no EMA), got {self.ema_decay}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"optim.batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")


@dataclass
class DataConfig:
    root: str | None = None  # the LeRobot v3 dataset (set on the command line: data.root=...)
    heldout_episodes: float = 0.1  # fraction (or count if ≥ 1) of episodes kept for evaluation
    workers: int = 2  # DataLoader worker processes (0: decode in the training process)
    frames: str = "video"  # video: decode from the mp4s per sample | decoded: decode once to disk (data/decoded.py)
    state_dropout: float = 0.0  # share of training samples whose state input is blanked (the mean): see loop.py
    state_noise: float = 0.0  # std of Gaussian noise on the normalised state input (z units): see loop.py
    start_weight: int = 1  # draw the frames of each episode's first start_seconds this many times as often
    start_seconds: float = 0.5  # (see data.emphasise_starts: the frames that decide the reach)

    def __post_init__(self) -> None:
        if self.frames not in ("video", "decoded"):
            raise ValueError(f"data.frames must be video or decoded, got {self.frames!r}")
        if not 0.0 <= self.state_dropout < 1.0:
            raise ValueError(f"data.state_dropout must be in [0, 1), got {self.state_dropout}")
        if not self.state_noise >= 0:
            raise ValueError(f"data.state_noise must be >= 0, got {self.state_noise}")
        if not (isinstance(self.start_weight, int) and self.start_weight >= 1):
            raise ValueError(f"data.start_weight must be an integer >= 1, got {self.start_weight!r}")
        if not self.start_seconds >= 0:
            raise ValueError(f"data.start_seconds must be >= 0, got {self.start_seconds}")


@dataclass
class LogConfig:
    every: int = 20  # steps between log lines / TensorBoard points
    eval_every: int = 1_000  # held-out loss and open-loop action error (0: never)
    eval_batches: int = 4
    save_every: int = 2_000  # (0: only the final checkpoint)
    keep_last: int = 2  # checkpoints kept (the final one always stays)
    wandb: bool = False

    def __post_init__(self) -> None:
        _require(self, "log", every=(1, None), eval_every=(0, None), eval_batches=(0, None), save_every=(0, None),
                 keep_last=(1, None))


def _require(section, name: str, **ranges: tuple[float, float | None]) -> None:
    """Each field within [low, high] (None: no upper bound), integers for integer fields; the
    message names ``section.field`` (a negative step count once made checkpoints/step_-00005)."""
    for field_name, (low, high) in ranges.items():
        value = getattr(section, field_name)
        whole = isinstance(low, int)
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                or not (low <= value and (high is None or value <= high)):
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name}.{field_name} must be {'an integer ' if whole else ''}{span}, got {value!r}")


@dataclass
class TrainConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "outputs/train"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def aligned(self) -> bool:
        """Spatial Forcing on (α > 0) or the plain π0 baseline."""
        return self.align.alpha > 0

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        return _build(cls, data, source, "")


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A preset name (``tiny``, ``pi0_sf``, ``pi0_baseline``) or a YAML path, then overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise ConfigError(path, "", f"no preset {name_or_path!r}; known presets: {known}")
    if not path.is_file():
        raise ConfigError(path, "", "file not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", "expected a mapping at the top level")
    for item in overrides:
        _apply_override(data, item)
    return TrainConfig.from_dict(data, str(path))


def _apply_override(data: dict, item: str) -> None:
    """``optim.lr=1e-4`` → data["optim"]["lr"] = 1e-4 (the value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError("command line", item, "an override looks like section.field=value")
    dotted, text = item.split("=", 1)
    *parents, leaf = dotted.strip().split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError("command line", dotted, f"{key} is not a section")
    node[leaf] = yaml.safe_load(text)


def _build(cls, data: Any, source: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(source, prefix or "(top)", f"expected a mapping, got {type(data).__name__}")
    if cls is TeacherConfig and "tiny" in data:  # configs saved before teacher.kind existed
        data = {k: v for k, v in data.items() if k != "tiny"} | ({"kind": "random"} if data["tiny"] else {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        raise ConfigError(source, where, f"unknown field; known: {', '.join(known)}")
    kwargs = {}
    for key, value in data.items():
        nested = _SECTIONS.get(key) if cls is TrainConfig else None
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _build(nested, value or {}, source, name) if nested else _coerce(known[key], value, source, name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, prefix or "(top)", str(exc)) from exc


def _coerce(spec, value: Any, source: str, name: str) -> Any:
    """YAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``): numbers follow the field's type."""
    kind = str(spec.type).replace(" | None", "")
    if isinstance(value, str) and kind in ("float", "int"):
        try:
            return float(value) if kind == "float" else int(value)
        except ValueError:
            raise ConfigError(source, name, f"expected a number, got {value!r}") from None
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, bool):  # YAML 1.1 reads `no` as false (mixed_precision=no)
        return "yes" if value else "no"
    return value


_SECTIONS = {"policy": PolicyConfig, "align": AlignConfig, "teacher": TeacherConfig, "optim": OptimConfig,
             "data": DataConfig, "log": LogConfig}


def _plain(value: Any) -> Any:
    """Tuples → lists and nested dataclasses → dicts, so the YAML is plain."""
    if is_dataclass(value):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
