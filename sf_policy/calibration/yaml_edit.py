"""Set values in a YAML configuration file without losing its comments and layout.

The configuration files are edited by people and carry comments that explain each field;
a load + dump round trip through PyYAML would drop them. ruamel.yaml's round-trip mode (a
dependency of rosbags, so already installed) keeps comments, key order and quoting; the
tools only ever set or remove a few values at a known key path (``cameras.cam_high.serial``,
``limits.gripper``). Lists are written in flow style (``[0.0, 0.07]``), as the shipped files
write them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

REMOVE = object()


def _round_trip() -> YAML:
    yaml = YAML()  # round-trip loader/dumper
    yaml.preserve_quotes = True
    yaml.width = 10_000
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _node(value: Any) -> Any:
    """Plain values as ruamel nodes; lists in flow style like the hand-written files."""
    if isinstance(value, dict):
        node = CommentedMap()
        for key, item in value.items():
            node[key] = _node(item)
        return node
    if isinstance(value, (list, tuple)):
        seq = CommentedSeq(_node(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    return value


def update_yaml_file(path: str | Path, updates: list[tuple[list[str], Any]]) -> bool:
    """Applies ``(key path, value)`` updates to a file in place (it is created when missing);
    a value of :data:`REMOVE` deletes the entry. Returns True (comments are always kept)."""
    path = Path(path)
    yaml = _round_trip()
    data = (yaml.load(path.read_text()) if path.is_file() else None) or CommentedMap()
    for keys, value in updates:
        node = data
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = CommentedMap()
            node = node[key]
        if value is REMOVE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = _node(value)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w") as stream:
        yaml.dump(data, stream)
    tmp.replace(path)  # never a half-written config file
    return True


def update_checked(path: str | Path, updates: list[tuple[list[str], Any]], check) -> bool:
    """update_yaml_file, but the result must pass ``check(trial_path)`` before it replaces
    ``path``; an exception from check propagates and leaves ``path`` as it was. A symlinked
    ``path`` (a ``colcon build --symlink-install`` share) is edited at its target."""
    path = Path(path).resolve()
    trial = path.with_name(f".{path.name}.check")
    if path.is_file():
        trial.write_text(path.read_text())
    try:
        kept = update_yaml_file(trial, updates)
        check(trial)
        trial.replace(path)
    finally:
        trial.unlink(missing_ok=True)
    return kept
