"""LeRobot v3.0 datasets written and read with pyarrow + PyAV (docs/datasets.md).

``from sf_policy.data import DatasetWriter, DatasetReader, validate`` works; the submodules
load lazily so that the encoder subprocess (``python -m sf_policy.data.video``) and ``sf``
start without importing pyarrow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DatasetWriter": "writer", "Episode": "writer", "EpisodeSummary": "writer",
    "DatasetReader": "reader", "EpisodeInfo": "reader",
    "DatasetError": "features", "VideoOptions": "video",
    "validate": "validate", "Problem": "validate",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
