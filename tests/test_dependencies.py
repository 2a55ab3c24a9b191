"""pyproject.toml declares what sf_policy imports: every third-party module the package imports
(at the top of a file or inside a function) belongs to a distribution named in the core
dependencies or an extra. ROS 2's modules come from a ROS install or the ros-kilted wheels
(requirements/ros-wheels.txt), never from PyPI extras."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from conftest import REPO

#: Provided by ROS 2 (a system install or requirements/ros-wheels.txt), imported by ROS tools in
#: sf_policy (calibration/timesync.py listens to the graph).
ROS_MODULES = {"rclpy", "sensor_msgs", "std_msgs", "builtin_interfaces", "rosgraph_msgs"}


def _imports() -> dict[str, str]:
    """Top-level third-party module -> one file importing it."""
    found = {}
    for path in sorted((REPO / "sf_policy").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "sf_policy":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_module_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    declared = {_normal(re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0]) for r in requirements}
    distributions = packages_distributions()
    missing = []
    for module, where in _imports().items():
        if module in ROS_MODULES:
            continue
        names = {_normal(d) for d in distributions.get(module, [])}
        if not names & declared:
            missing.append(f"{module} (imported by {where}; distribution {sorted(names) or 'not installed'})")
    assert not missing, "declare in pyproject.toml: " + "; ".join(missing)


def test_the_extras_cover_the_pinned_requirements():
    """requirements/base.txt is the pinned set: everything in it that sf_policy needs is in an extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_normal(re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0])
                for r in project["dependencies"] + sum(project["optional-dependencies"].values(), [])}
    pinned = {_normal(re.split(r"[<>=!~\[ ;#]", line.strip(), maxsplit=1)[0])
              for line in (REPO / "requirements" / "base.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert pinned - declared == set(), f"pinned but not declared: {sorted(pinned - declared)}"
