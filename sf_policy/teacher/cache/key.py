"""The cache key: what a cache's targets were computed from.

A cache is keyed by (dataset fingerprint, teacher checkpoint hash, preprocessing); opening
with a key for which only other caches of the same dataset exist raises `StaleCacheError`
naming what changed, so a stale cache is never used silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sf_policy.align.grid import VLA_GRID, VLA_PATCH, PatchBox, letterbox_geometry
from sf_policy.align.targets import PE_SCALE
from sf_policy.data.features import image_key
from sf_policy.data.reader import DatasetReader
from sf_policy.teacher.cache.fingerprint import _sha256, pixel_fingerprint
from sf_policy.teacher.cache.store import FORMAT_VERSION, STORAGE_DTYPES
from sf_policy.teacher.features import TEACHER_WIDTH, Teacher
from sf_policy.teacher.geometry import GeometryConfig, GeometryTeacher
from sf_policy.teacher.vggt import AggregatorConfig
from sf_policy.topics import CAMERA_ROLES


@dataclass(frozen=True)
class Preprocessing:
    """Everything besides the dataset and the weights that shapes a stored target."""

    width: int = TEACHER_WIDTH  # teacher input width (height keeps the aspect)
    layer: int = -1  # aggregator layer; normalised to 0..depth-1 so -1 and 23 are the same key
    pe_scale: float = PE_SCALE
    grid: int = VLA_GRID
    storage: str = "bf16"  # "bf16" or "fp8" (e4m3 with a float32 scale per token)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    # The twin's geometry teacher instead of an aggregator (width, layer and aggregator unused).
    geometry: GeometryConfig | None = None

    def __post_init__(self) -> None:
        if self.storage not in STORAGE_DTYPES:
            raise ValueError(f"cache storage must be one of {STORAGE_DTYPES}, got {self.storage!r}")
        if self.geometry is not None:
            return
        depth = self.aggregator.depth
        layer = self.layer + depth if self.layer < 0 else self.layer
        if not 0 <= layer < depth:
            raise ValueError(f"teacher layer {self.layer} out of range for an aggregator of depth {depth}")
        object.__setattr__(self, "layer", layer)

    @classmethod
    def from_teacher(cls, teacher: Teacher | GeometryTeacher, storage: str = "bf16") -> Preprocessing:
        if isinstance(teacher, GeometryTeacher):
            return cls(pe_scale=teacher.pe_scale, grid=teacher.grid, storage=storage, geometry=teacher.config)
        return cls(teacher.width, teacher.layer, teacher.pe_scale, teacher.grid, storage, teacher.aggregator.config)

    def boxes(self, reader: DatasetReader) -> list[PatchBox | None]:
        """Per camera slot (CAMERA_ROLES order) its letterbox box on the VLA grid; None if the dataset lacks it."""
        boxes: list[PatchBox | None] = []
        for role in CAMERA_ROLES:
            if role not in reader.camera_roles:
                boxes.append(None)
                continue
            h, w = reader.features[image_key(role)]["shape"][:2]
            boxes.append(letterbox_geometry(h, w, self.grid * VLA_PATCH, VLA_PATCH)[-1])
        return boxes

    def teacher_settings(self) -> dict:
        """What the teacher itself must follow (``_check_teacher``): a VGGT key keeps exactly its
        old fields (existing caches stay valid); a geometry key names the encoding instead."""
        own = ({"teacher": "geometry", "geometry": self.geometry.describe()} if self.geometry is not None else
               {"width": self.width, "layer": self.layer, "aggregator": asdict(self.aggregator)})
        return own | {"pe_scale": self.pe_scale, "grid": self.grid}

    def describe(self, reader: DatasetReader) -> dict:
        """The key's preprocessing part: these settings plus the camera layout they imply."""
        boxes = self.boxes(reader)
        return {
            "format": FORMAT_VERSION,
            **self.teacher_settings(),
            "letterbox": self.grid * VLA_PATCH,
            "storage": self.storage,
            "camera_roles": list(CAMERA_ROLES),
            "boxes": [None if b is None else [b.row0, b.row1, b.col0, b.col1] for b in boxes],
        }


@dataclass(frozen=True)
class CacheKey:
    """(dataset, teacher, preprocessing), each a readable dict.

    Only dataset["fingerprint"], teacher["sha256"] and the whole preprocessing dict enter
    the digest; the dataset root, frame counts and the checkpoint path are there to write
    useful error messages (a dataset that moved keeps its cache).
    """

    dataset: dict
    teacher: dict
    preprocessing: dict

    @classmethod
    def create(cls, reader: DatasetReader, teacher_sha256: str, preprocessing: Preprocessing,
               teacher_source: str = "") -> CacheKey:
        dataset = {
            "root": str(reader.root.resolve()),
            "fingerprint": pixel_fingerprint(reader),
            "frames": reader.num_frames,
            "episodes": reader.num_episodes,
        }
        return cls(dataset, {"sha256": teacher_sha256, "source": teacher_source}, preprocessing.describe(reader))

    @property
    def digest(self) -> str:
        return _sha256([self.dataset["fingerprint"], self.teacher["sha256"], self.preprocessing])

    @property
    def short(self) -> str:
        return self.digest[:16]

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "teacher": self.teacher, "preprocessing": self.preprocessing}

    @classmethod
    def from_dict(cls, data: dict) -> CacheKey:
        return cls(data["dataset"], data["teacher"], data["preprocessing"])

    def changes_since(self, old: CacheKey) -> list[tuple[str, str]]:
        """(part, readable line) for each way `old` (a cache's key) differs from this key."""
        out = []
        a, b = old.dataset, self.dataset
        if a["fingerprint"] != b["fingerprint"]:
            out.append(("dataset", f"dataset changed: {b['root']} had {a['frames']} frames in {a['episodes']} "
                                   f"episodes (fingerprint {a['fingerprint'][:12]}) when cached, now "
                                   f"{b['frames']} frames in {b['episodes']} episodes ({b['fingerprint'][:12]})"))
        a, b = old.teacher, self.teacher
        if a["sha256"] != b["sha256"]:
            out.append(("teacher", f"teacher checkpoint changed: cached from {a['source'] or '?'} (sha256 "
                                   f"{a['sha256'][:12]}), now {b['source'] or '?'} (sha256 {b['sha256'][:12]})"))
        old_prep, new_prep = _flatten(old.preprocessing), _flatten(self.preprocessing)
        kinds = [_teacher_kind(k.preprocessing) for k in (old, self)]
        if kinds[0] != kinds[1]:  # another kind of teacher: its own settings are not "changes"
            out.append(("preprocessing", f"teacher changed: {kinds[0]} in the cache, {kinds[1]} now"))
            own = ("geometry.", "aggregator.", "width", "layer", "teacher")
            old_prep, new_prep = ({k: v for k, v in d.items() if not k.startswith(own)} for d in (old_prep, new_prep))
        for name in sorted(old_prep.keys() | new_prep.keys()):
            if old_prep.get(name) != new_prep.get(name):
                out.append(("preprocessing", f"preprocessing changed: {name} = {old_prep.get(name)!r} in the "
                                             f"cache, {new_prep.get(name)!r} now"))
        return out


def _teacher_kind(preprocessing: dict) -> str:
    return "the twin's geometry teacher" if "geometry" in preprocessing else "a VGGT aggregator"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
