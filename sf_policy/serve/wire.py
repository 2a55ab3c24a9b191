"""What travels between a policy client and ``sf serve``: msgpack with numpy arrays, and its schemas.

Encoding (openpi's, so that its clients and ours read each other's bytes):

* a numpy array is the map ``{"__ndarray__": true, "data": <bin: C-order bytes>, "dtype": "<f4",
  "shape": [50, 14]}``, its keys packed as msgpack *bin* (Python ``bytes``) as openpi does;
  a numpy scalar is ``{"__npgeneric__": true, "data": <number>, "dtype": "<f8"}``.
  The decoder accepts the keys as str or bin.
* Only booleans, integers and floats (``dtype.kind`` in ``b i u f``) are accepted, never object,
  void, structured or complex dtypes, and ``shape`` must account for exactly ``len(data)``
  bytes, so an array can never be larger than the payload that carried it.
* No pickle anywhere: msgpack only builds maps, lists, strings, bytes, numbers and nil.

Schemas (``docs/serving.md``)::

    request  {"state": [14] float (rad / m), "images": {role: uint8 HxWx3 | uint8 3xHxW | nil},
              "prompt": str, "seed": int (optional), "num_steps": int (optional),
              "prefix_actions": float [n, 14] (optional), "inference_delay": int (optional)}
    reply    {"actions": float32 [chunk, 14] absolute (rad / m), "timing": {...}, "server_timing": {...}}

``parse_request`` checks a decoded request and returns the sample ``Policy.predict`` takes;
every ``WireError`` names the field at fault ("images.cam_high: expected uint8 HxWx3 ...").
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from sf_policy.embodiment import JOINT_NAMES, STATE_DIM
from sf_policy.topics import CAMERA_ROLES

#: Bumped when a field changes meaning; reported in the metadata as ``version``.
PROTOCOL = "sf-policy"
PROTOCOL_VERSION = 1
MSGPACK = "application/msgpack"
JSON = "application/json"

#: Request fields; anything else is refused (a typo must not be silently ignored). The last two
#: are real-time chunking's (sf_policy/model/rtc.py): the actions still to execute of the chunk
#: being executed, from the observation's tick on, and the ticks until the new chunk takes over.
REQUEST_FIELDS = ("state", "images", "prompt", "seed", "num_steps", "prefix_actions", "inference_delay")
MAX_PREFIX_STEPS = 1000
MAX_PROMPT_CHARS = 2000
MAX_IMAGE_SIDE = 4096
MAX_NUM_STEPS = 100
MAX_SEED = 2**63 - 1
MAX_NDIM = 8
#: Array element kinds that may be decoded: bool, signed, unsigned, float.
ALLOWED_KINDS = frozenset("biuf")

_ND = "__ndarray__"
_GENERIC = "__npgeneric__"


class WireError(ValueError):
    """A request that cannot be served as sent: ``status`` (4xx), the ``field`` at fault, a message."""

    def __init__(self, field: str, message: str, status: int = 400):
        self.field = field
        self.message = message
        self.status = status
        super().__init__(f"{field}: {message}" if field else message)

    def to_dict(self) -> dict:
        return {"status": self.status, "field": self.field, "message": str(self)}


class BadArray:
    """What the decoder leaves where an array map was malformed, so that validation can name the field."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"BadArray({self.reason!r})"


# --------------------------------------------------------------------------------------------
# msgpack + numpy


def _get(obj: Mapping, key: str):
    """``obj[key]`` with the key as str or as bytes (openpi packs its array keys as bytes)."""
    if key in obj:
        return obj[key]
    return obj.get(key.encode())


def _has(obj: Mapping, key: str) -> bool:
    return key in obj or key.encode() in obj


def _dtype(value) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str) or len(value) > 16:
        raise ValueError(f"dtype must be a short string such as '<f4', got {_describe(value)}")
    try:
        with warnings.catch_warnings():  # numpy deprecates some aliases ('a'): a warning must not become a 500
            warnings.simplefilter("ignore")
            dtype = np.dtype(value)
    except Exception:
        raise ValueError(f"unknown dtype {value!r}") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"dtype {value!r} is not allowed (only bool, integer and float arrays)")
    return dtype


def _decode_array(obj: Mapping) -> np.ndarray:
    data = _get(obj, "data")
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"array data must be bytes, got {_describe(data)}")
    dtype = _dtype(_get(obj, "dtype"))
    shape = _get(obj, "shape")
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM or not all(
            type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"array shape must be a list of at most {MAX_NDIM} non-negative integers, "
                         f"got {_describe(shape)}")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise ValueError(f"array of shape {tuple(shape)} and dtype {dtype.str} needs {expected} bytes, "
                         f"got {len(data)}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)  # native byte order, writable, owns its memory


def _decode_generic(obj: Mapping):
    dtype = _dtype(_get(obj, "dtype"))
    data = _get(obj, "data")
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        raise ValueError(f"scalar data must be a number, got {_describe(data)}")
    try:
        return dtype.type(data)
    except (OverflowError, ValueError, TypeError) as exc:
        raise ValueError(f"scalar {data!r} does not fit dtype {dtype.str}: {exc}") from None


def _object_hook(obj: dict):
    try:
        if _has(obj, _ND):
            return _decode_array(obj)
        if _has(obj, _GENERIC):
            return _decode_generic(obj)
    except ValueError as exc:
        return BadArray(str(exc))
    return obj


def _default(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in ALLOWED_KINDS:
        raise TypeError(f"cannot send a numpy array of dtype {obj.dtype} (only bool, integer and float)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__} over the wire (msgpack + numpy only)")


def packb(obj: Any) -> bytes:
    """msgpack bytes of ``obj``; numpy arrays and scalars as openpi encodes them."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def _no_ext(code: int, data: bytes):
    raise ValueError(f"msgpack extension type {code} is not accepted")


#: Bounds on one decoded message: a request is a few dozen objects (arrays travel as bytes), so
#: these leave room for any client and stop a body of millions of empty maps (16 MiB of them cost
#: 1.2 GB and 5.8 s of decoding) before it is decoded.
MAX_OBJECTS = 10_000
MAX_DEPTH = 16

# msgpack type byte → (bytes of its length field, fixed payload bytes, kind): kind "s" skips a
# payload of that length, "a" an array of that many objects, "m" a map of that many pairs.
_HEADERS = {0xc4: (1, 0, "s"), 0xc5: (2, 0, "s"), 0xc6: (4, 0, "s"),          # bin
            0xc7: (1, 1, "s"), 0xc8: (2, 1, "s"), 0xc9: (4, 1, "s"),          # ext (+ type byte)
            0xd9: (1, 0, "s"), 0xda: (2, 0, "s"), 0xdb: (4, 0, "s"),          # str
            0xdc: (2, 0, "a"), 0xdd: (4, 0, "a"), 0xde: (2, 0, "m"), 0xdf: (4, 0, "m")}
_FIXED = {0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8,
          0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9, 0xd8: 17}  # numbers; fixext (type byte + data)


def check_shape(data: bytes, max_objects: int = MAX_OBJECTS, max_depth: int = MAX_DEPTH) -> None:
    """Walk a msgpack message's headers without building anything and refuse (400) one of more than
    ``max_objects`` objects or nested deeper than ``max_depth``. Written here because msgpack-python
    bounds each container's length but neither the total nor the nesting; a malformed message is
    left for ``msgpack.unpackb`` to name."""
    pos, objects, open_ = 0, 0, [1]  # open_: objects still to read at each level
    while open_:
        if open_[-1] == 0:
            open_.pop()
            continue
        open_[-1] -= 1
        if pos >= len(data):
            return
        byte = data[pos]
        pos += 1
        objects += 1
        if objects > max_objects:
            raise WireError("body", f"more than {max_objects} msgpack objects in one message (arrays travel as "
                                    "bytes: a request needs a few dozen)")
        children = 0
        if 0x80 <= byte <= 0x8f:
            children = 2 * (byte & 0x0f)
        elif 0x90 <= byte <= 0x9f:
            children = byte & 0x0f
        elif 0xa0 <= byte <= 0xbf:
            pos += byte & 0x1f
        elif byte in _FIXED:
            pos += _FIXED[byte]
        elif byte in _HEADERS:
            width, extra, kind = _HEADERS[byte]
            length = int.from_bytes(data[pos:pos + width], "big")
            pos += width
            if kind == "s":
                pos += extra + length
            else:
                children = length * (2 if kind == "m" else 1)
        if children:
            if len(open_) > max_depth:
                raise WireError("body", f"msgpack message nested deeper than {max_depth} levels")
            open_.append(children)


def unpackb(data: bytes, max_bytes: int | None = None) -> Any:
    """Decode one msgpack message; any failure is a ``WireError`` (status 400, or 413 when too large).
    Its shape is checked first (``check_shape``): decoding is bounded in time and memory."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("body", f"expected bytes, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise payload_too_large(len(data), max_bytes)
    check_shape(bytes(data) if isinstance(data, memoryview) else data)
    try:
        return msgpack.unpackb(data, object_hook=_object_hook, ext_hook=_no_ext, raw=False, strict_map_key=True,
                               use_list=True)
    except msgpack.ExtraData:
        raise WireError("body", "more than one msgpack object in one message") from None
    except Exception as exc:  # truncated, bad bytes, bad map keys, too deep, invalid utf-8...
        raise WireError("body", f"not a valid msgpack message ({type(exc).__name__}: {exc})") from None


def payload_too_large(size: int | None, limit: int) -> WireError:
    got = f"{size} bytes" if size is not None else "more"
    return WireError("body", f"payload of {got} exceeds the limit of {limit} bytes ({limit / 2**20:.1f} MiB; "
                             "sf serve --max-payload-mb)", status=413)


def to_jsonable(obj: Any) -> Any:
    """Arrays → nested lists, for the JSON flavour of ``POST /infer``."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:  # beyond int64: no field of a request takes it (and float() would overflow)
        raise ValueError(f"integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def json_loads(data: bytes) -> Any:
    try:
        return json.loads(data, parse_int=_json_int)
    except RecursionError:
        raise WireError("body", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError("body", f"not valid JSON ({exc})") from None


# --------------------------------------------------------------------------------------------
# requests


@dataclass
class InferRequest:
    """A checked request: ``sample`` is what ``Policy.predict`` takes for one robot observation."""

    sample: dict
    seed: int | None = None
    num_steps: int | None = None


def _describe(value) -> str:
    if isinstance(value, BadArray):
        return f"a malformed array ({value.reason})"
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {value.shape}"
    if type(value) in (list, tuple):
        return f"a list of {len(value)}"
    if value is None:
        return "nil"
    return type(value).__name__


def parse_request(obj: Any, roles: Sequence[str] = CAMERA_ROLES, *, from_json: bool = False) -> InferRequest:
    """Check a decoded request against the schema (module docstring); the sample for ``Policy.predict``.

    ``from_json``: arrays may come as nested lists (images as integers 0..255).
    """
    if not isinstance(obj, Mapping):
        raise WireError("request", f"expected a map with {', '.join(REQUEST_FIELDS[:3])}, got {_describe(obj)}")
    unknown = [k for k in obj if k not in REQUEST_FIELDS]
    if unknown:
        names = ", ".join(repr(k) for k in unknown[:5])
        raise WireError("request", f"unknown field(s) {names}; a request has {', '.join(REQUEST_FIELDS)}")
    for key in ("state", "images", "prompt"):
        if key not in obj:
            raise WireError(key, "missing (a request needs state, images and prompt)")
    sample = {
        "state": parse_state(obj["state"]),
        "images": parse_images(obj["images"], roles, from_json=from_json),
        "prompt": parse_prompt(obj["prompt"]),
    }
    if obj.get("prefix_actions") is not None:
        sample["prefix_actions"] = parse_prefix(obj["prefix_actions"])
        sample["inference_delay"] = _optional_int(obj, "inference_delay", 0, MAX_PREFIX_STEPS) or 0
    elif obj.get("inference_delay") is not None:
        raise WireError("inference_delay", "sent without prefix_actions (real-time chunking needs both)")
    seed = _optional_int(obj, "seed", 0, MAX_SEED)
    num_steps = _optional_int(obj, "num_steps", 1, MAX_NUM_STEPS)
    return InferRequest(sample, seed, num_steps)


def parse_prefix(value) -> np.ndarray:
    """[n, 14] finite float64 (absolute targets, rad / m), 1 <= n <= MAX_PREFIX_STEPS."""
    field = "prefix_actions"
    what = f"[n, {STATE_DIM}] finite numbers (the actions still to execute, rad / m)"
    try:
        array = np.asarray(value, dtype=np.float64) if isinstance(value, (list, np.ndarray)) else None
    except (TypeError, ValueError):
        array = None
    if (array is None or array.ndim != 2 or array.shape[1] != STATE_DIM or not 1 <= len(array) <= MAX_PREFIX_STEPS
            or (isinstance(value, np.ndarray) and value.dtype.kind not in "iuf")):
        raise WireError(field, f"expected {what}, got {_describe(value)}")
    if not np.isfinite(array).all():
        raise WireError(field, "contains NaN or inf")
    return array


def parse_state(value) -> np.ndarray:
    """[14] finite float64 (rad / m, ``JOINT_NAMES`` order)."""
    field = "state"
    what = f"{STATE_DIM} finite numbers (rad / m: {JOINT_NAMES[0]} .. {JOINT_NAMES[-1]})"
    if isinstance(value, (list, tuple)) and len(value) == STATE_DIM and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            for v in value):
        array = np.asarray(value, dtype=np.float64)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        if value.shape != (STATE_DIM,):
            raise WireError(field, f"expected {what}, got {_describe(value)}")
        array = value.astype(np.float64)
    else:
        raise WireError(field, f"expected {what}, got {_describe(value)}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        names = ", ".join(JOINT_NAMES[i] for i in bad[:4])
        raise WireError(field, f"contains NaN or inf (at {names})")
    return array


def parse_images(value, roles: Sequence[str] = CAMERA_ROLES, *, from_json: bool = False) -> dict:
    """{role: uint8 HxWx3 or None}; 3xHxW (openpi's layout) is transposed. A role left out is an
    absent camera, as for ``Policy.predict``."""
    if not isinstance(value, Mapping):
        raise WireError("images", f"expected a map {{camera role: uint8 HxWx3 array or nil}}, got {_describe(value)}")
    images = {}
    for role, image in value.items():
        if role not in roles:
            raise WireError(f"images.{role}", f"unknown camera role; expected one of {', '.join(roles)}")
        images[role] = parse_image(image, f"images.{role}", from_json=from_json)
    return images


def parse_image(value, field: str, *, from_json: bool = False) -> np.ndarray | None:
    if value is None:
        return None
    if from_json and isinstance(value, list):
        value = _json_image(value, field)
    if not isinstance(value, np.ndarray):
        raise WireError(field, f"expected uint8 HxWx3 (or 3xHxW), got {_describe(value)}")
    if value.dtype != np.uint8 or value.ndim != 3 or 3 not in (value.shape[0], value.shape[2]):
        raise WireError(field, f"expected uint8 HxWx3 (or 3xHxW), got {_describe(value)}")
    if value.shape[2] != 3:  # openpi sends [3, 224, 224]
        value = np.ascontiguousarray(value.transpose(1, 2, 0))
    height, width = value.shape[:2]
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise WireError(field, f"image of {height}x{width} px; each side must be 1..{MAX_IMAGE_SIDE}")
    return value


def _json_image(value: list, field: str) -> np.ndarray:
    try:
        objects = np.asarray(value, dtype=object)  # the JSON values as they came: true is not 1
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise WireError(field, "expected nested lists of integers 0..255 (HxWx3), got ragged lists") from None
    if objects.shape != array.shape or np.frompyfunc(lambda v: type(v) is not int, 1, 1)(objects).any():
        raise WireError(field, "expected nested lists of integers 0..255 (HxWx3), got other values (true/false, "
                               "numbers with a fraction, strings)")
    if array.dtype.kind not in "iu" or array.size == 0 or array.min() < 0 or array.max() > 255:
        raise WireError(field, f"expected nested lists of integers 0..255 (HxWx3), got {array.dtype} {array.shape}")
    return array.astype(np.uint8)


def parse_prompt(value) -> str:
    if not isinstance(value, str):
        raise WireError("prompt", f"expected a string (the task instruction), got {_describe(value)}")
    if len(value) > MAX_PROMPT_CHARS:
        raise WireError("prompt", f"{len(value)} characters; at most {MAX_PROMPT_CHARS}")
    if "\x00" in value:
        raise WireError("prompt", "contains a NUL character")
    return value


def _optional_int(obj: Mapping, field: str, low: int, high: int) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise WireError(field, f"expected an integer in [{low}, {high}], got {_describe(value)}")
    if not low <= int(value) <= high:
        raise WireError(field, f"expected an integer in [{low}, {high}], got {int(value)}")
    return int(value)


# --------------------------------------------------------------------------------------------
# the client side


def encode_sample(sample: Mapping, seed: int | None = None, num_steps: int | None = None) -> dict:
    """A robot sample (as ``Policy.predict`` takes it) → a request map (state as float64, so the
    server sees exactly the numbers a local policy would)."""
    unknown = set(sample) - {"state", "images", "prompt", "prefix_actions", "inference_delay"}
    if unknown:
        raise ValueError(f"sample: unknown field(s) {', '.join(sorted(unknown))}; a request sends state, images, "
                         "prompt (and for real-time chunking prefix_actions, inference_delay)")
    missing = [key for key in ("state", "prompt") if key not in sample]
    if missing:
        raise ValueError(f"sample: missing {', '.join(missing)}")
    request = {
        "state": np.asarray(sample["state"], dtype=np.float64),
        "images": {role: (None if image is None else np.ascontiguousarray(image))
                   for role, image in (sample.get("images") or {}).items()},
        "prompt": sample["prompt"],
    }
    if sample.get("prefix_actions") is not None:
        request["prefix_actions"] = np.asarray(sample["prefix_actions"], dtype=np.float64)
        request["inference_delay"] = int(sample.get("inference_delay", 0))
    if seed is not None:
        request["seed"] = int(seed)
    if num_steps is not None:
        request["num_steps"] = int(num_steps)
    return request


def parse_reply(obj: Any, chunk_size: int | None = None) -> dict:
    """Check a server reply: ``actions`` as float32 [chunk, 14]."""
    if not isinstance(obj, Mapping) or "actions" not in obj:
        raise WireError("reply", f"expected a map with 'actions', got {_describe(obj)}")
    actions = obj["actions"]
    if isinstance(actions, list):
        actions = np.asarray(actions, dtype=np.float32)
    if not isinstance(actions, np.ndarray) or actions.ndim != 2 or actions.shape[1] != STATE_DIM or (
            chunk_size is not None and actions.shape[0] != chunk_size):
        raise WireError("reply.actions", f"expected float32 [chunk, {STATE_DIM}], got {_describe(actions)}")
    return dict(obj, actions=actions.astype(np.float32, copy=False))


__all__ = ["JSON", "MSGPACK", "PROTOCOL", "PROTOCOL_VERSION", "REQUEST_FIELDS", "BadArray", "InferRequest",
           "WireError", "encode_sample", "json_loads", "packb", "parse_image", "parse_images", "parse_prompt",
           "parse_reply", "parse_request", "parse_state", "payload_too_large", "to_jsonable", "unpackb"]
