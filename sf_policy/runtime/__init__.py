"""Running a policy on the arms, without ROS: chunk scheduling and the safety filter.

``ChunkScheduler`` executes action chunks at the control rate while the next chunk is
inferred in a worker thread (elapsed steps skipped, overlaps blended); ``SafetyFilter``
decides what of it may reach the arms. The policy node (``sf_nodes``) wires them between
its subscriptions and the arm command topics. See docs/runtime.md.
"""

from .clock import Clock, ManualClock, TickGrid
from .safety import SafetyDecision, SafetyFilter
from .scheduler import ChunkScheduler, SchedulerStats, check_chunk, interpolate, policy_infer, substeps

__all__ = [
    "ChunkScheduler", "Clock", "ManualClock", "SafetyDecision", "SafetyFilter", "SchedulerStats", "TickGrid",
    "check_chunk", "interpolate", "policy_infer", "substeps",
]
