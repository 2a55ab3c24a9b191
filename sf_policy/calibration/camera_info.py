"""Camera calibration files in the ROS ``camera_calibration_parsers`` YAML format.

The same file that ``ros2 run camera_calibration cameracalibrator`` saves (``ost.yaml``), so
a calibration made with either tool works with either stack:

    image_width, image_height, camera_name,
    camera_matrix / distortion_coefficients / rectification_matrix / projection_matrix:
        {rows, cols, data}
    distortion_model: plumb_bob | rational_polynomial | equidistant

``sf calibrate intrinsics`` writes it; cameras.yaml points a camera at it with
``intrinsics: <path>`` and the camera driver publishes it as ``CameraInfo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from ..config import ConfigError, load_yaml
from ..drivers.cameras import Intrinsics

#: distortion model -> number of coefficients sensor_msgs/CameraInfo expects.
DISTORTION_SIZES = {"plumb_bob": (5,), "rational_polynomial": (8, 12, 14), "equidistant": (4,)}
_MATRICES = {"camera_matrix": (3, 3), "rectification_matrix": (3, 3), "projection_matrix": (3, 4)}


def _matrix(path: Path, data: dict, key: str, shape: tuple[int, int]) -> list[float]:
    node = data.get(key)
    if not isinstance(node, dict):
        raise ConfigError(path, key, "required mapping {rows, cols, data} is missing")
    rows, cols, values = node.get("rows"), node.get("cols"), node.get("data")
    if (rows, cols) != shape:
        raise ConfigError(path, key, f"expected rows {shape[0]} and cols {shape[1]}, got {rows} x {cols}")
    if not isinstance(values, list) or len(values) != rows * cols or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(path, f"{key}.data", f"expected {rows * cols} numbers, got {values!r}")
    return [float(v) for v in values]


def _distortion(path: Path, data: dict) -> tuple[str, tuple[float, ...]]:
    model = data.get("distortion_model", "plumb_bob")
    if model not in DISTORTION_SIZES:
        raise ConfigError(path, "distortion_model", f"expected one of {', '.join(DISTORTION_SIZES)}, got {model!r}")
    node = data.get("distortion_coefficients")
    values = node.get("data") if isinstance(node, dict) else None
    if not isinstance(values, list) or len(values) not in DISTORTION_SIZES[model]:
        sizes = " or ".join(str(n) for n in DISTORTION_SIZES[model])
        raise ConfigError(path, "distortion_coefficients.data", f"{model} needs {sizes} numbers, got {values!r}")
    return model, tuple(float(v) for v in values)


def load_camera_info(path: str | Path, expect_size: tuple[int, int] | None = None) -> Intrinsics:
    """Reads a calibration file; ``expect_size`` (width, height) must match the image size in it."""
    path = Path(path)
    data = load_yaml(path)
    size = []
    for key in ("image_width", "image_height"):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(path, key, f"expected a positive integer, got {value!r}")
        size.append(value)
    if expect_size is not None and tuple(size) != tuple(expect_size):
        raise ConfigError(path, "image_width/image_height",
                          f"calibrated at {size[0]}x{size[1]} but the camera is configured for "
                          f"{expect_size[0]}x{expect_size[1]}; calibrate at that size")
    k = _matrix(path, data, "camera_matrix", _MATRICES["camera_matrix"])
    projection = _matrix(path, data, "projection_matrix", _MATRICES["projection_matrix"])
    model, coefficients = _distortion(path, data)
    if k[0] <= 0 or k[4] <= 0:
        raise ConfigError(path, "camera_matrix.data", f"focal lengths must be positive, got fx {k[0]}, fy {k[4]}")
    return Intrinsics(width=size[0], height=size[1], fx=k[0], fy=k[4], cx=k[2], cy=k[5],
                      distortion_model=model, coefficients=coefficients, projection=tuple(projection))


def _block(rows: int, cols: int, values: Sequence[float]) -> dict:
    return {"rows": rows, "cols": cols, "data": [float(v) for v in values]}


def camera_info_dict(intr: Intrinsics, camera_name: str) -> dict:
    k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    p = intr.projection or (intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0)
    return {
        "image_width": int(intr.width),
        "image_height": int(intr.height),
        "camera_name": camera_name,
        "camera_matrix": _block(3, 3, k),
        "distortion_model": intr.distortion_model,
        "distortion_coefficients": _block(1, len(intr.coefficients), intr.coefficients),
        "rectification_matrix": _block(3, 3, [1, 0, 0, 0, 1, 0, 0, 0, 1]),
        "projection_matrix": _block(3, 4, p),
    }


def save_camera_info(path: str | Path, intr: Intrinsics, camera_name: str, comment: str = "") -> Path:
    """Writes the file (and its folder); ``comment`` lines go on top (how it was measured)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    body = yaml.safe_dump(camera_info_dict(intr, camera_name), sort_keys=False, default_flow_style=None)
    path.write_text(header + body)
    return path
