"""The policy server (``sf serve``) and its clients; see ``docs/serving.md``.

Importing this package imports neither FastAPI nor torch; ``server`` and ``client`` do on use.
"""

from __future__ import annotations

from sf_policy.serve.client import PolicyClient, PolicyWebsocketClient, RemoteError, ServerUnavailable, connect_policy
from sf_policy.serve.wire import WireError, packb, unpackb

__all__ = ["PolicyClient", "PolicyWebsocketClient", "RemoteError", "ServerUnavailable", "WireError",
           "connect_policy", "packb", "unpackb"]
