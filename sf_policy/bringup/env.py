"""The environment our ROS processes run in (no ROS import: it only builds a dict)."""

from __future__ import annotations

import os

from .plan import bringup_share

PROFILE_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"


def large_data_profile() -> str:
    """config/fastdds_large_data.xml: whole images through shared memory (see the file)."""
    return str(bringup_share() / "config" / "fastdds_large_data.xml")


def ros_env(local: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """``local``: DDS on loopback, in a domain of this run's own unless one was chosen.
    Always: the large-data Fast DDS profile unless the user set a profile or another RMW."""
    env = dict(os.environ if base is None else base)
    if local:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        env.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp":
        env.setdefault(PROFILE_VAR, large_data_profile())
    env["PYTHONUNBUFFERED"] = "1"
    return env
