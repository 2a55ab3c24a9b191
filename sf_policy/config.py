"""Robot and camera configuration files: loading and validation.

Every error names the file and the field at fault, and is raised at start-up, before
anything touches the hardware. Files are plain YAML so they diff well; see
``ros2_ws/src/sf_bringup/config/`` for the shipped ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.features import resolution_problem
from .embodiment import ARM_STATE_NAMES, PIPER_LIMITS, SIDES, JointLimit
from .topics import CAMERA_NAMESPACES, CAMERA_ROLES


class ConfigError(ValueError):
    """A configuration file is missing or wrong; the message names the file and field."""

    def __init__(self, path: str | Path, field_name: str, message: str):
        self.path, self.field = str(path), field_name
        super().__init__(f"{path}: {field_name}: {message}" if field_name else f"{path}: {message}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "", "file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data


class _Fields:
    """Reads typed fields from one mapping of a file, naming ``file: a.b.c`` on error."""

    def __init__(self, path: Path, prefix: str, data: Any):
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            raise ConfigError(path, prefix, f"expected a mapping, got {type(data).__name__}")
        self.data = data

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.name(key), message)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.error(key, "required field is missing")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(key, f"expected {want}, got {value!r}")
        return value

    def reject_unknown(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise self.error(unknown[0], f"unknown field; allowed: {', '.join(sorted(allowed))}")


# --- arms ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmConfig:
    side: str
    can_port: str
    bustype: str = "socketcan"


@dataclass(frozen=True)
class RobotConfig:
    path: Path
    arms: dict[str, ArmConfig]
    limits: dict[str, JointLimit] = field(default_factory=lambda: dict(PIPER_LIMITS))
    workspace: Any = None  # runtime.workspace.Workspace, from the optional ``workspace`` section


def load_robot_config(path: str | Path) -> RobotConfig:
    path = Path(path)
    top = _Fields(path, "", load_yaml(path))
    top.reject_unknown({"arms", "limits", "workspace"})
    arms_node = _Fields(path, "arms", top.get("arms", dict))
    arms: dict[str, ArmConfig] = {}
    for side, spec in arms_node.data.items():
        if side not in SIDES:
            raise arms_node.error(str(side), f"unknown arm side; expected one of {', '.join(SIDES)}")
        f = _Fields(path, f"arms.{side}", spec)
        f.reject_unknown({"can_port", "bustype"})
        arms[side] = ArmConfig(side, f.get("can_port", str), f.get("bustype", str, "socketcan"))
    ports: dict[tuple[str, str], str] = {}
    for arm in arms.values():
        key = (arm.bustype, arm.can_port)
        if key in ports:
            raise ConfigError(path, f"arms.{arm.side}.can_port",
                              f"{arm.can_port!r} is already used by arms.{ports[key]}; each arm needs its own CAN bus")
        ports[key] = arm.side
    workspace = _load_workspace(path, top.get("workspace", dict)) if "workspace" in top.data else None
    return RobotConfig(path, arms, _load_limits(path, top.get("limits", dict, {})), workspace)


def _point(f: _Fields, key: str, value) -> tuple[float, float, float]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise f.error(key, f"expected [x, y, z] in metres, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _load_workspace(path: Path, data: dict):
    """The workspace guard's geometry (sf_policy/runtime/workspace.py); unset fields keep the
    AgileX layout the twin stands in."""
    from .runtime.workspace import Box, Workspace

    f = _Fields(path, "workspace", data)
    f.reject_unknown({"bases", "table_z", "keep_out", "min_arm_distance", "link_radius", "tip_clearance"})
    default = Workspace()
    bases = dict(default.bases)
    b = _Fields(path, "workspace.bases", f.get("bases", dict, {}))
    b.reject_unknown(set(SIDES))
    for side, spec in b.data.items():
        s = _Fields(path, f"workspace.bases.{side}", spec)
        s.reject_unknown({"pos", "yaw"})
        bases[side] = (_point(s, "pos", s.get("pos", list)), s.get("yaw", float))
    table_z = f.get("table_z", (float, type(None)), default.table_z)
    boxes = []
    k = _Fields(path, "workspace.keep_out", f.get("keep_out", dict, {}))
    for name, corners in k.data.items():
        if not isinstance(corners, list) or len(corners) != 2:
            raise k.error(str(name), f"expected [[x, y, z] min, [x, y, z] max], got {corners!r}")
        low, high = _point(k, str(name), corners[0]), _point(k, str(name), corners[1])
        if not all(lo < hi for lo, hi in zip(low, high)):
            raise k.error(str(name), f"min {list(low)} is not below max {list(high)} on every axis")
        boxes.append(Box(str(name), low, high))
    sizes = {key: f.get(key, float, getattr(default, key)) for key in ("min_arm_distance", "link_radius",
                                                                         "tip_clearance")}
    for key, value in sizes.items():
        if not (math.isfinite(value) and value >= 0):
            raise f.error(key, f"must be a distance >= 0 in metres, got {value}")
    return Workspace(bases=bases, table_z=table_z, keep_out=tuple(boxes), **sizes)


def _load_limits(path: Path, data: dict) -> dict[str, JointLimit]:
    """Optional per-joint [lower, upper] overrides; they may only tighten the factory limits."""
    f = _Fields(path, "limits", data)
    f.reject_unknown(set(ARM_STATE_NAMES))
    limits = dict(PIPER_LIMITS)
    for joint, bounds in data.items():
        factory = PIPER_LIMITS[joint]
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
            raise f.error(joint, f"expected [lower, upper] in SI units, got {bounds!r}")
        lower, upper = float(bounds[0]), float(bounds[1])
        if lower >= upper:
            raise f.error(joint, f"lower {lower} is not below upper {upper} (inverted or empty range)")
        if lower < factory.lower - 1e-9 or upper > factory.upper + 1e-9:
            raise f.error(joint, f"[{lower}, {upper}] leaves the Piper's range [{factory.lower}, {factory.upper}]")
        limits[joint] = JointLimit(lower, upper, factory.max_velocity)
    return limits


# --- cameras -------------------------------------------------------------------------
CAMERA_BACKENDS = ("realsense", "opencv")


@dataclass(frozen=True)
class CameraConfig:
    role: str
    backend: str
    namespace: str
    serial: str = ""          # realsense: picks the device
    device: str = ""          # opencv: /dev/videoN, an index, or a video file
    width: int = 640
    height: int = 480
    fps: float = 30.0
    depth: bool = False       # realsense: publish depth aligned to colour
    compressed: bool = False  # also publish sensor_msgs/CompressedImage (JPEG)
    loop: bool = True         # opencv video file: start again at the end
    timeout_s: float = 1.0    # no frame for this long -> ERROR diagnostic and a reopen
    intrinsics: str = ""      # calibration YAML (camera_calibration_parsers format) for CameraInfo;
                              # absolute, resolved from a path relative to the cameras file


def load_camera_config(path: str | Path) -> dict[str, CameraConfig]:
    path = Path(path)
    top = _Fields(path, "", load_yaml(path))
    top.reject_unknown({"cameras"})
    cams = _Fields(path, "cameras", top.get("cameras", dict))
    result: dict[str, CameraConfig] = {}
    seen_sources: dict[str, str] = {}
    for role, spec in cams.data.items():
        if role not in CAMERA_ROLES:
            raise cams.error(str(role), f"unknown camera role; expected one of {', '.join(CAMERA_ROLES)}")
        f = _Fields(path, f"cameras.{role}", spec)
        f.reject_unknown({"backend", "serial", "device", "width", "height", "fps", "depth", "compressed",
                          "loop", "timeout_s", "namespace", "intrinsics"})
        backend = f.get("backend", str)
        if backend not in CAMERA_BACKENDS:
            raise f.error("backend", f"expected one of {', '.join(CAMERA_BACKENDS)}, got {backend!r}")
        cfg = CameraConfig(
            role=role,
            backend=backend,
            namespace=f.get("namespace", str, CAMERA_NAMESPACES[role]),
            serial=str(f.get("serial", (str, int), "")),
            device=str(f.get("device", (str, int), "")),
            width=f.get("width", int, 640),
            height=f.get("height", int, 480),
            fps=f.get("fps", float, 30.0),
            depth=f.get("depth", bool, False),
            compressed=f.get("compressed", bool, False),
            loop=f.get("loop", bool, True),
            timeout_s=f.get("timeout_s", float, 1.0),
            intrinsics=_intrinsics_path(f),
        )
        source_key, source = ("serial", cfg.serial) if backend == "realsense" else ("device", cfg.device)
        if not source:
            raise f.error(source_key, f"required for the {backend} backend")
        if source in seen_sources:
            raise f.error(source_key, f"{source!r} is already assigned to cameras.{seen_sources[source]}")
        seen_sources[source] = role
        for key in ("width", "height"):
            problem = resolution_problem(getattr(cfg, key))  # the dataset writer's rule, checked up front
            if problem:
                raise f.error(key, problem)
        if not 0 < cfg.fps <= 120:
            raise f.error("fps", f"must be in (0, 120], got {cfg.fps}")
        if cfg.timeout_s <= 0:
            raise f.error("timeout_s", f"must be positive, got {cfg.timeout_s}")
        result[role] = cfg
    return result


def _intrinsics_path(f: _Fields) -> str:
    """``intrinsics:`` of one camera, made absolute; a missing file fails here, at start-up."""
    value = f.get("intrinsics", str, "")
    if not value:
        return ""
    path = Path(value.removeprefix("file://")).expanduser()
    if not path.is_absolute():  # relative to the cameras file, so a config folder moves as one
        path = f.path.parent / path
    if not path.is_file():
        raise f.error("intrinsics", f"calibration file {str(path)!r} not found (write it with "
                                    "`sf calibrate intrinsics`, or remove the field)")
    return str(path)


def camera_for_role(path: str | Path, role: str) -> CameraConfig:
    cameras = load_camera_config(path)
    if role not in CAMERA_ROLES:
        raise ConfigError(path, "role", f"unknown camera role {role!r}; expected one of {', '.join(CAMERA_ROLES)}")
    if role not in cameras:
        raise ConfigError(path, f"cameras.{role}", f"no entry for this role (file has: {', '.join(cameras) or 'none'})")
    return cameras[role]
