"""Running the app: uvicorn's settings for it, and a server in a background thread (tests,
notebooks). ``sf serve`` runs uvicorn in the foreground with the same settings."""

from __future__ import annotations

import threading
import time

from sf_policy.serve.server import DEFAULT_MAX_PAYLOAD


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", **kwargs):
    """uvicorn settings for ``app``: websocket frames up to the payload limit (+1 MiB, so that a slightly
    larger frame gets the 413 error frame; far larger ones are closed with 1009), no per-message
    compression (arrays do not compress, and it costs CPU), the sans-I/O websockets implementation."""
    import uvicorn

    limit = getattr(app.state, "max_payload_bytes", DEFAULT_MAX_PAYLOAD)
    options = {"ws": "websockets-sansio", "ws_max_size": limit + 2**20, "ws_per_message_deflate": False,
               "log_level": log_level, "lifespan": "on", "timeout_graceful_shutdown": 5} | kwargs
    return uvicorn.Config(app, host=host, port=port, **options)


class BackgroundServer:
    """uvicorn serving ``app`` in a thread (tests, notebooks): ``with BackgroundServer(app) as s: s.url``.

    ``port=0`` picks a free port; ``__enter__`` returns once the app has started (model loaded,
    warmed up) and raises if it failed to.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 120.0, **kwargs):
        import uvicorn

        self.host = host
        self.server = uvicorn.Server(uvicorn_config(app, host, port, log_level=kwargs.pop("log_level", "warning"),
                                                   **kwargs))
        self.startup_timeout = startup_timeout
        self.thread = threading.Thread(target=self.server.run, name="sf-serve", daemon=True)
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the policy server failed to start (see its log)")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"the policy server did not start within {self.startup_timeout} s")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __exit__(self, *exc) -> None:
        self.close()
