"""The frozen 3-D teacher of Spatial Forcing: VGGT's aggregator, its checkpoint, its targets; and,
for the twin only, a teacher that knows the geometry exactly (geometry.py)."""

from __future__ import annotations

from sf_policy.teacher.checkpoint import (
    CheckpointMismatch,
    load_aggregator,
    load_aggregator_state,
    official_state_dict,
    save_state_dict,
)
from sf_policy.teacher.features import Teacher, teacher_input_size
from sf_policy.teacher.geometry import GeometryConfig, GeometryTeacher
from sf_policy.teacher.vggt import Aggregator, AggregatorConfig, AggregatorOutput

__all__ = [
    "Aggregator",
    "AggregatorConfig",
    "AggregatorOutput",
    "CheckpointMismatch",
    "GeometryConfig",
    "GeometryTeacher",
    "Teacher",
    "load_aggregator",
    "load_aggregator_state",
    "official_state_dict",
    "save_state_dict",
    "teacher_input_size",
]
