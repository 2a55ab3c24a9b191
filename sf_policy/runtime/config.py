"""The runtime's settings, declared once: ``RuntimeConfig``.

Each setting is a dataclass field with its type, default, description and valid values,
in the manner of ros2_controllers' parameter files. Every runner reads the same object:

* the policy node declares its ROS parameters from these fields (``sf_nodes.policy_node``)
  and builds its scheduler, safety filter and model from the resulting config;
* ``sf eval sim`` runs the twin with the deployed file, ``config/policy.yaml``
  (``RuntimeConfig.from_yaml``), so closed-loop results are measured as the robot runs;
* ``sf serve`` takes its model options (sampler, steps, dtype, ...) and their help from here.

``config/policy.yaml`` is the deployment's values: it may change a default, but it must name
only declared settings, and it names all of them so a diff shows every choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .scheduler import MODES, ON_ERROR
from .watchdog import DEFAULT_MAX_DURATION, DEFAULT_MAX_ERROR

#: The section of config/policy.yaml that holds the node's parameters.
NODE_NAME = "policy"
SAMPLERS = ("fast", "transformers")
RELIABILITIES = ("best_effort", "reliable")
DTYPES = ("", "float32", "bfloat16", "float16")


def setting(default: Any, description: str, *, choices: tuple[str, ...] | None = None,
            low: float | None = None, high: float | None = None, model: bool = False) -> Any:
    """A declared setting. ``low``/``high`` bound numbers (inclusive); ``model``: it shapes
    how the model samples (what ``sf serve`` also takes), not how the arms are driven."""
    return field(default=default, metadata={"description": description, "choices": choices, "low": low,
                                            "high": high, "model": model})


@dataclass(frozen=True)
class RuntimeConfig:
    """How a trained policy drives the arms (docs/runtime.md). Not here: what to run (the
    checkpoint, prompt and cameras come from the task's YAML) and where (robot YAML)."""

    # --- control ---------------------------------------------------------------------------
    rate: float = setting(30.0, "control rate (Hz): the dataset's fps", low=1.0, high=1000.0)
    execute_steps: int = setting(25, "of a chunk, at most this many steps are executed", low=1)
    refill_at: int = setting(15, "ask for the next chunk when fewer steps remain: inference overlaps execution",
                             low=1)
    mode: str = setting("blend", "how a new chunk joins the plan: blend (cross-fade over blend_steps), replace, "
                        "or rtc (real-time chunking: the model inpaints the next chunk onto the plan)", choices=MODES)
    blend_steps: int = setting(10, "blend: steps over which the new chunk fades in", low=0)
    adaptive_horizon: bool = setting(True, "ask earlier, and start late chunks at their first un-elapsed step, "
                                           "when inference is slow")
    on_error: str = setting("hold", "a failed or non-finite chunk: hold at once (hold) or let the old plan run "
                                    "out (continue)", choices=ON_ERROR)
    # --- safety ----------------------------------------------------------------------------
    max_obs_age: float = setting(0.2, "s: an older camera or arm sample makes the arms hold", low=0.0)
    velocity_scale: float = setting(0.5, "x each joint's maximum speed (embodiment limits)", low=0.01, high=1.0)
    workspace_guard: bool = setting(True, "hold commands into the table, keep-out boxes or the other arm "
                                          "(the robot YAML's workspace)")
    tracking_max_error: float = setting(DEFAULT_MAX_ERROR, "rad: an arm joint this far from its command for "
                                                           "tracking_max_duration latches the e-stop; 0: off", low=0.0)
    tracking_max_duration: float = setting(DEFAULT_MAX_DURATION, "s: see tracking_max_error", low=0.0)
    image_reliability: str = setting("best_effort", "QoS reliability of the camera subscriptions",
                                     choices=RELIABILITIES)
    dry_run: bool = setting(False, "true: commands go to /policy/dry_run/... only")
    # --- model -----------------------------------------------------------------------------
    num_steps: int = setting(10, "flow-matching integration steps per chunk", low=1, high=100, model=True)
    noise_scale: float = setting(1.0, "initial flow noise x this (sampling temperature; 1 = pi0's sampler)",
                                 low=0.0, high=10.0, model=True)
    rtc_max_guidance: float = setting(5.0, "rtc: the guidance weight's clip (beta of Black et al. 2025)",
                                      low=0.0, model=True)
    device: str = setting("auto", "auto (cuda when available), cpu, cuda, cuda:1 ...", model=True)
    dtype: str = setting("", "'': bfloat16 on a GPU, float32 on CPU", choices=DTYPES, model=True)
    sampler: str = setting("fast", "fast (prefix once, static KV buffers) or transformers (sample_actions, the "
                                   "reference)", choices=SAMPLERS, model=True)
    cuda_graph: bool = setting(True, "GPU: the denoising steps replay as one CUDA graph", model=True)
    compile: bool = setting(False, "torch.compile the denoising loop while configuring (slow to configure)",
                            model=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f, getattr(self, f.name))
        if self.refill_at > self.execute_steps:
            raise SettingError("refill_at", f"must be at most execute_steps={self.execute_steps}, got {self.refill_at}")

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: dict[str, Any], where: str = "parameter") -> RuntimeConfig:
        """From a mapping of setting → value (ROS parameters, a YAML section); an unknown name,
        a wrong type or a value out of range is refused as "<where> <setting>: ..."."""
        try:
            return cls._build(values)
        except SettingError as exc:
            raise ValueError(f"{where} {exc.name}: {exc.message}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> RuntimeConfig:
        """The ``policy: ros__parameters:`` section of a ROS parameter file (config/policy.yaml);
        a ``ConfigError`` names the file and the setting."""
        from ..config import ConfigError, load_yaml

        section = load_yaml(path).get(NODE_NAME, {})
        values = section.get("ros__parameters") if isinstance(section, dict) else None
        if not isinstance(values, dict):
            raise ConfigError(path, f"{NODE_NAME}.ros__parameters", "missing: the policy node's section")
        try:
            return cls._build(values).with_overrides(**overrides)
        except SettingError as exc:
            raise ConfigError(path, f"{NODE_NAME}.ros__parameters.{exc.name}", exc.message) from None

    @classmethod
    def _build(cls, values: dict[str, Any]) -> RuntimeConfig:
        known = {f.name: f for f in fields(cls)}
        for name in values:
            if name not in known:
                raise SettingError(name, f"not a runtime setting; known: {', '.join(known)}")
        return cls(**{name: _coerce(known[name], value) for name, value in values.items()})

    @classmethod
    def deployed(cls, **overrides: Any) -> RuntimeConfig:
        """What ``policy.launch.py`` deploys: sf_bringup's config/policy.yaml."""
        from ..bringup.plan import bringup_share

        return cls.from_yaml(bringup_share() / "config" / "policy.yaml", **overrides)

    def with_overrides(self, **overrides: Any) -> RuntimeConfig:
        """A copy with some settings changed (None leaves a setting as it is)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return RuntimeConfig._build({**asdict(self), **given}) if given else self

    # --- what the runners build from it ----------------------------------------------------
    @property
    def period(self) -> float:
        return 1.0 / self.rate

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of ``runtime.inference.load_for_inference``."""
        return {"device": self.device, "dtype": self.dtype or None, "sampler": self.sampler,
                "compile": self.compile, "cuda_graph": self.cuda_graph, "noise_scale": self.noise_scale,
                "max_guidance": self.rtc_max_guidance}

    def scheduler(self, infer, **kwargs):
        """The chunk scheduler these settings describe (``kwargs``: clock, name)."""
        from .scheduler import ChunkScheduler

        return ChunkScheduler(infer, period=self.period, execute_steps=self.execute_steps, refill_at=self.refill_at,
                              mode=self.mode, blend_steps=self.blend_steps, adaptive=self.adaptive_horizon,
                              on_error=self.on_error, **kwargs)

    def safety_filter(self, limits=None, workspace=None):
        """The safety filter with the workspace guard (``workspace``: the robot YAML's
        section; None: AgileX's layout as in the twin) and the tracking watchdog, as set."""
        from .safety import SafetyFilter
        from .watchdog import TrackingWatchdog
        from .workspace import WorkspaceGuard

        guard = WorkspaceGuard(workspace) if self.workspace_guard else None
        watchdog = (TrackingWatchdog(self.tracking_max_error, self.tracking_max_duration)
                    if self.tracking_max_error > 0 else None)
        return SafetyFilter(limits, period=self.period, velocity_scale=self.velocity_scale,
                            max_obs_age=self.max_obs_age, workspace=guard, watchdog=watchdog)


def settings() -> tuple:
    """The declared settings (dataclass fields): name, type, default and ``metadata``."""
    return fields(RuntimeConfig)


def describe(f) -> str:
    """A setting's description with its valid values, as ``ros2 param describe`` shows it."""
    return f"{f.metadata['description']}{_constraint(f) and f' ({_constraint(f)})'}"


def _constraint(f) -> str:
    m = f.metadata
    if m["choices"]:
        return "one of " + ", ".join(repr(c) for c in m["choices"])
    if m["low"] is not None and m["high"] is not None:
        return f"in [{m['low']:g}, {m['high']:g}]"
    if m["low"] is not None:
        return f">= {m['low']:g}"
    return ""


class SettingError(ValueError):
    """One setting is wrong; runners add where it came from (a file, a ROS parameter)."""

    def __init__(self, name: str, message: str):
        self.name, self.message = name, message
        super().__init__(f"{name}: {message}")


def _coerce(f, value: Any) -> Any:
    """YAML and ROS give ints where a float is declared (``rate: 30``); nothing else is converted."""
    kind = f.type if isinstance(f.type, type) else {"float": float, "int": int, "bool": bool, "str": str}[f.type]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SettingError(f.name, f"must be a {kind.__name__}, got {value!r}")
    return value


def _check(f, value: Any) -> None:
    m = f.metadata
    if m["choices"] and value not in m["choices"]:
        raise SettingError(f.name, f"must be {_constraint(f)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or (m["low"] is not None and value < m["low"]) or (m["high"] is not None and value > m["high"]):
            raise SettingError(f.name, f"must be {_constraint(f)}, got {value!r}")

