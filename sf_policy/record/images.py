"""sensor_msgs/Image payloads as RGB arrays, for rclpy messages and bag messages alike, and
their sizes against a dataset's (the live recorder and ``from_bag`` append to existing datasets)."""

from __future__ import annotations

import numpy as np

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_rgb(encoding: str, height: int, width: int, step: int, data, topic: str = "image") -> np.ndarray:
    """An HxWx3 uint8 RGB view (a copy only when channels must be reordered or rows are padded)."""
    channels = _CHANNELS.get(encoding)
    if channels is None:
        raise ValueError(f"{topic}: image encoding {encoding!r} is not supported; "
                         f"publish one of {', '.join(_CHANNELS)}")
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size != step * height or step < width * channels:
        raise ValueError(f"{topic}: {buffer.size} bytes do not make a {width}x{height} {encoding} image "
                         f"with step {step}")
    pixels = buffer.reshape(height, step)[:, :width * channels].reshape(height, width, channels)
    if encoding == "rgb8":
        return pixels
    if encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if encoding.startswith("bgr"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def size_mismatch(writer, sizes: dict[str, tuple[int, int]]) -> tuple[str, tuple[int, int], tuple[int, int]] | None:
    """The first camera whose images do not fit ``writer``'s dataset: ``(role, (height, width)
    of its images, (height, width) the dataset holds)``; None when every size fits."""
    from ..data.features import image_key

    for role, (height, width) in sizes.items():
        held = tuple(writer.features[image_key(role)]["shape"][:2])
        if held != (height, width):
            return role, (height, width), held
    return None
