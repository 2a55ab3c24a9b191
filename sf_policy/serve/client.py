"""Clients of ``sf serve``: ``PolicyClient`` (HTTP) and ``PolicyWebsocketClient`` (one websocket, reconnecting).

Both take the robot sample ``Policy.predict`` takes ({"images": {role: uint8 HxWx3 | None},
"state": [14], "prompt": str}) and return the absolute action chunk float32 [50, 14] (rad / m);
``predict(samples)`` mirrors ``Policy.predict`` so that a runtime can swap a local policy for a
remote one. Server-side failures raise ``RemoteError`` (HTTP status, field, message); an
unreachable server raises ``ConnectionError`` subclasses (``ServerUnavailable``).

    with PolicyClient("http://gpu-box:8000", token=os.environ["SF_SERVE_TOKEN"]) as policy:
        chunk = policy.infer({"images": images, "state": state, "prompt": "lift the pot"})
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from sf_policy.serve.wire import MSGPACK, WireError, encode_sample, packb, parse_reply, unpackb

log = logging.getLogger("sf_policy.serve.client")


class RemoteError(RuntimeError):
    """The server answered with an error: ``status`` (HTTP code; 4xx = the request, 5xx = the server)."""

    def __init__(self, status: int, message: str, field: str = ""):
        self.status = int(status)
        self.message = message
        self.field = field
        super().__init__(f"policy server error {self.status}: {message}")

    @classmethod
    def from_body(cls, status: int, body: bytes | str) -> RemoteError:
        try:
            error = json.loads(body)["error"]
            return cls(int(error.get("status", status)), str(error.get("message", "")), str(error.get("field", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
            return cls(status, text.strip()[:500] or "(no message)")


class ServerUnavailable(ConnectionError):
    """The server cannot be reached (refused, timed out, closed the connection)."""


def _base(url: str, schemes: tuple[str, str]) -> str:
    """``url`` with its scheme mapped to ``schemes`` (plain, TLS), no trailing slash, no path."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    secure = parts.scheme in ("https", "wss")
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"policy server URL {url!r}: scheme must be http, https, ws or wss")
    if not parts.hostname:
        raise ValueError(f"policy server URL {url!r} has no host")
    return urlunsplit((schemes[1] if secure else schemes[0], parts.netloc, "", "", ""))


class PolicyClient:
    """HTTP client: ``metadata()``, ``health()``, ``infer(sample)``; one pooled connection (httpx)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0):
        import httpx

        self.url = _base(url, ("http", "https"))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._metadata: dict | None = None
        self.last_timing: dict = {}

    def _request(self, method: str, path: str, **kwargs):
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(f"policy server {self.url}{path}: timed out ({exc})") from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"policy server {self.url}{path}: {exc}") from exc
        if response.status_code >= 400:
            raise RemoteError.from_body(response.status_code, response.content)
        return response

    def health(self) -> dict:
        return self._request("GET", "/health").json()

    def metadata(self, refresh: bool = False) -> dict:
        if self._metadata is None or refresh:
            self._metadata = self._request("GET", "/metadata").json()
        return self._metadata

    def infer_reply(self, sample: Mapping, *, seed: int | None = None, num_steps: int | None = None) -> dict:
        """The full reply: ``actions`` float32 [chunk, 14] and ``timing`` (infer_ms, queue_ms, total_ms)."""
        body = packb(encode_sample(sample, seed, num_steps))
        response = self._request("POST", "/infer", content=body, headers={"Content-Type": MSGPACK})
        try:
            reply = parse_reply(unpackb(response.content))
        except WireError as exc:
            raise RemoteError(response.status_code, f"unreadable reply: {exc}") from None
        self.last_timing = dict(reply.get("timing") or {})
        return reply

    def infer(self, sample: Mapping, *, seed: int | None = None, num_steps: int | None = None) -> np.ndarray:
        """Absolute joint targets float32 [chunk, 14] for one robot sample."""
        return self.infer_reply(sample, seed=seed, num_steps=num_steps)["actions"]

    def predict(self, samples: Sequence[Mapping], num_steps: int | None = None, seed: int | None = None) -> np.ndarray:
        """Like ``Policy.predict``: [B, chunk, 14] (one request per sample)."""
        return np.stack([self.infer(s, seed=seed, num_steps=num_steps) for s in samples])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PolicyWebsocketClient:
    """One websocket to ``/ws`` (openpi's protocol): metadata on connect, a reply per request.

    A dropped connection is reopened on the next call (``retries`` attempts, ``backoff`` seconds
    apart, doubling); inference is stateless on the server, so a request that was in flight is
    simply sent again. If the reopened server serves another model (checkpoint fingerprint, chunk
    size, joints or cameras differ from the first connection's metadata), the call raises
    ``RemoteError`` 409 unless ``allow_model_change``. ``connect=False`` defers connecting to the
    first call. One thread at a time: the connection carries one request at a time.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.2, connect: bool = True, allow_model_change: bool = False):
        self.url = _base(url, ("ws", "wss")) + "/ws"
        self.allow_model_change = allow_model_change
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._ws = None
        self._stack: ExitStack | None = None
        self._metadata: dict | None = None
        self.reconnects = 0
        self.last_timing: dict = {}
        if connect:
            self.connect()

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def connect(self) -> dict:
        """Open the websocket (closing any previous one) and return the server's metadata."""
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        self.close()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        stack = ExitStack()  # websockets >= 17.1 wants connect() used as a context manager
        try:
            ws = stack.enter_context(connect(self.url, additional_headers=headers, open_timeout=self.timeout,
                                             close_timeout=1.0, max_size=None, compression=None))
        except InvalidStatus as exc:
            raise RemoteError.from_body(exc.response.status_code, exc.response.body or b"") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ServerUnavailable(f"policy server {self.url}: {exc}") from exc
        try:
            first = ws.recv(timeout=self.timeout)
            metadata = unpackb(first) if isinstance(first, bytes) else None
        except (OSError, TimeoutError, WebSocketException, WireError) as exc:
            stack.close()
            raise ServerUnavailable(f"policy server {self.url}: no metadata after connecting ({exc})") from exc
        if not isinstance(metadata, dict):
            stack.close()
            raise RemoteError(502, f"{self.url}: the first frame was not the metadata map")
        changed = _contract_change(self._metadata, metadata)
        if changed and not self.allow_model_change:
            stack.close()
            raise RemoteError(409, f"{self.url} now serves another model ({changed} changed since the first "
                                   "connection); refusing to continue with it (allow_model_change=True to accept)")
        self._ws, self._stack, self._metadata = ws, stack, metadata
        return metadata

    def metadata(self) -> dict:
        if self._metadata is None:
            self.connect()
        return self._metadata

    def _exchange(self, frame: bytes):
        from websockets.exceptions import WebSocketException

        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                if self._ws is None:
                    self.connect()
                    if attempt:
                        self.reconnects += 1
                self._ws.send(frame)
                return self._ws.recv(timeout=self.timeout)
            except TimeoutError as exc:  # the reply may still come: the connection is out of step now
                self.close()
                raise ServerUnavailable(f"policy server {self.url}: no reply within {self.timeout} s") from exc
            except (OSError, WebSocketException, ServerUnavailable) as exc:  # dropped: reconnect and resend
                self.close()
                if attempt == self.retries:
                    raise ServerUnavailable(f"policy server {self.url}: {exc}") from exc
                log.warning("policy server connection lost (%s); reconnecting in %.2f s", exc, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def infer_reply(self, sample: Mapping, *, seed: int | None = None, num_steps: int | None = None) -> dict:
        reply = self._exchange(packb(encode_sample(sample, seed, num_steps)))
        if isinstance(reply, str):  # errors come as text frames
            raise RemoteError.from_body(400, reply)
        try:
            parsed = parse_reply(unpackb(reply))
        except WireError as exc:
            raise RemoteError(502, f"unreadable reply: {exc}") from None
        self.last_timing = dict(parsed.get("timing") or {})
        return parsed

    def infer(self, sample: Mapping, *, seed: int | None = None, num_steps: int | None = None) -> np.ndarray:
        return self.infer_reply(sample, seed=seed, num_steps=num_steps)["actions"]

    def predict(self, samples: Sequence[Mapping], num_steps: int | None = None, seed: int | None = None) -> np.ndarray:
        return np.stack([self.infer(s, seed=seed, num_steps=num_steps) for s in samples])

    def send_raw(self, frame: bytes | str):
        """Send one frame as is and return the server's answer (bytes or an error text): for tests."""
        if self._ws is None:
            self.connect()
        self._ws.send(frame)
        return self._ws.recv(timeout=self.timeout)

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._stack.close()
            except Exception:  # already gone
                pass
            self._ws = self._stack = None

    def __enter__(self) -> PolicyWebsocketClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: Metadata entries that define the model a client is talking to.
CONTRACT_KEYS = ("chunk_size", "joint_names", "camera_roles", "representation")


def _contract_change(before: dict | None, after: dict) -> str | None:
    """The first metadata entry (checkpoint fingerprint or ``CONTRACT_KEYS``) that differs, or None."""
    if before is None:
        return None
    if (before.get("checkpoint") or {}).get("fingerprint") != (after.get("checkpoint") or {}).get("fingerprint"):
        return "checkpoint fingerprint"
    return next((key for key in CONTRACT_KEYS if before.get(key) != after.get(key)), None)


def connect_policy(url: str, token: str | None = None, timeout: float = 10.0, **kwargs):
    """A client for ``url``: ws:// or wss:// → ``PolicyWebsocketClient``, http(s):// → ``PolicyClient``."""
    if url.startswith(("ws://", "wss://")):
        return PolicyWebsocketClient(url, token=token, timeout=timeout, **kwargs)
    return PolicyClient(url, token=token, timeout=timeout)


__all__ = ["PolicyClient", "PolicyWebsocketClient", "RemoteError", "ServerUnavailable", "connect_policy"]
