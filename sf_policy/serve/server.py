"""The policy server: one model behind HTTP and a websocket (FastAPI + uvicorn), msgpack + numpy on the wire.

Endpoints (``docs/serving.md`` has the payloads):

* ``GET /health``    200 ``{"status": "ok", "model_loaded": true}`` (never needs the token);
* ``GET /metadata``  the policy's contract: joint names, cameras, chunk size, fps, units, checkpoint;
* ``POST /infer``    msgpack (or JSON) request → ``{"actions": float32 [50, 14], "timing": {...}}``;
* ``WS /ws``         binary msgpack frames, openpi's layout: the server sends the metadata first, then
  answers every request frame with a reply frame; an error is a *text* frame
  ``{"error": {status, field, message}}`` and the connection stays open. Also at ``/`` (where
  openpi's client connects), and ``/healthz`` answers as ``/health`` does (openpi's name).

Inference runs on one worker thread (one model, requests in arrival order), so the event loop
keeps answering health checks and other clients while the model computes; at most ``max_queue``
requests wait, more get 503. Malformed requests get a 4xx naming the field and never reach
the model. With a token, everything but ``/health`` needs ``Authorization: Bearer <token>``
(openpi's ``Api-Key <token>`` is accepted too; the websocket also takes ``?token=``).

Beside it: ``auth`` (the bind rule and tokens), ``metadata`` (the checkpoint's identity and the
contract ``/metadata`` returns), ``running`` (uvicorn's settings, a background server), ``wire``
(the payloads).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect

from sf_policy.embodiment import STATE_DIM
from sf_policy.serve.auth import authorized, check_token, token_of
from sf_policy.serve.metadata import DEFAULT_FPS, DEFAULT_NUM_STEPS, policy_metadata
from sf_policy.serve.wire import (
    JSON,
    MSGPACK,
    PROTOCOL,
    PROTOCOL_VERSION,
    InferRequest,
    WireError,
    json_loads,
    packb,
    parse_request,
    payload_too_large,
    to_jsonable,
    unpackb,
)

log = logging.getLogger("sf_policy.serve")

DEFAULT_MAX_PAYLOAD = 16 * 2**20
#: Bytes of an over-limit HTTP body read and discarded so the client sees the 413 rather than a reset.
DRAIN_LIMIT = 64 * 2**20
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack", "application/octet-stream", "")


# --------------------------------------------------------------------------------------------
# the runtime behind the endpoints


class _Runtime:
    def __init__(self, policy_or_factory, *, token, max_payload_bytes, metadata, num_steps, fps, max_queue, warmup):
        if _is_policy(policy_or_factory):
            self.policy, self.factory = policy_or_factory, None
        elif callable(policy_or_factory):
            self.policy, self.factory = None, policy_or_factory
        else:
            raise TypeError("create_app needs a Policy or a callable that returns one")
        if max_payload_bytes <= 0 or max_queue <= 0 or not 1 <= num_steps <= 100:
            raise ValueError("max_payload_bytes and max_queue must be positive, num_steps in 1..100")
        self.token = check_token(token)
        self.max_payload = int(max_payload_bytes)
        self.extra = dict(metadata or {})
        self.num_steps = int(num_steps)
        self.fps = float(fps)
        self.max_queue = int(max_queue)
        self.warmup_on_start = warmup
        self.pending = 0
        self.executor: ThreadPoolExecutor | None = None
        self.metadata: dict | None = None
        if self.policy is not None:
            self._set_policy(self.policy)

    def _set_policy(self, policy) -> None:
        if not _is_policy(policy):
            raise TypeError(f"the policy factory returned {type(policy).__name__}, not a Policy")
        self.policy = policy
        self.metadata = policy_metadata(policy, num_steps=self.num_steps, fps=self.fps) | {
            "max_payload_bytes": self.max_payload, "auth": self.token is not None} | self.extra

    async def start(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-infer")
        loop = asyncio.get_running_loop()
        if self.policy is None:
            log.info("loading the policy")
            self._set_policy(await loop.run_in_executor(self.executor, self.factory))
        if self.warmup_on_start:
            await loop.run_in_executor(self.executor, self._warmup)

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def processor_roles(self) -> tuple[str, ...]:
        return tuple(self.policy.processor.config.camera_roles) if self.policy is not None else ()

    def _warmup(self) -> None:
        size = self.policy.processor.config.image_size
        roles = self.policy.processor.config.camera_roles
        sample = {"images": {r: np.zeros((size, size, 3), np.uint8) for r in roles},
                  "state": np.zeros(STATE_DIM), "prompt": "warm up"}
        started = time.perf_counter()
        self._run(InferRequest(sample, seed=0))
        log.info("warm-up inference took %.0f ms", (time.perf_counter() - started) * 1e3)

    def _run(self, request: InferRequest) -> tuple[np.ndarray, float]:
        """On the inference thread: processor (its errors are the client's: 422), then the model."""
        import torch

        started = time.perf_counter()
        policy = self.policy
        from sf_policy.model.policy import GUIDANCE_KEYS

        observation = {k: v for k, v in request.sample.items() if k not in GUIDANCE_KEYS}
        try:
            batch = policy.processor([observation])
            guide = policy.guidance([request.sample])  # real-time chunking, when the client sent a prefix
        except (ValueError, TypeError) as exc:
            raise WireError("", re.sub(r"^sample 0: ", "", str(exc)), status=422) from None
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=policy.device).manual_seed(request.seed)
        actions = policy.sample(batch, request.num_steps or self.num_steps, generator, guide=guide)
        return actions[0].float().cpu().numpy(), (time.perf_counter() - started) * 1e3

    async def infer(self, request: InferRequest, received: float) -> dict:
        if self.policy is None or self.executor is None:
            raise WireError("", "the model is not loaded yet", status=503)
        if self.pending >= self.max_queue:
            raise WireError("", f"busy: {self.pending} requests already waiting (sf serve --max-queue "
                                f"{self.max_queue})", status=503)
        self.pending += 1  # only touched on the event loop: no lock needed
        queued = time.perf_counter()
        try:
            actions, infer_ms = await asyncio.get_running_loop().run_in_executor(self.executor, self._run, request)
        finally:
            self.pending -= 1
        total_ms = (time.perf_counter() - received) * 1e3
        timing = {"infer_ms": infer_ms, "queue_ms": max(0.0, (time.perf_counter() - queued) * 1e3 - infer_ms),
                  "total_ms": total_ms}
        return {"actions": actions.astype(np.float32, copy=False), "timing": timing,
                "server_timing": {"infer_ms": infer_ms}}


def _is_policy(obj) -> bool:
    return hasattr(obj, "processor") and hasattr(obj, "sample")


# --------------------------------------------------------------------------------------------
# the app


def create_app(policy_or_factory: Any, *, token: str | None = None, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
               metadata: Mapping | None = None, num_steps: int = DEFAULT_NUM_STEPS, fps: float = DEFAULT_FPS,
               max_queue: int = 8, warmup: bool = True):
    """The FastAPI app serving one policy.

    ``policy_or_factory``: a loaded ``Policy``, or a callable returning one, called at startup (on
    the inference thread; a failure stops the server from starting). ``metadata``: extra entries
    for ``/metadata`` (``checkpoint_info`` gives the checkpoint's). ``token``: require it on every
    endpoint but ``/health``. ``warmup``: one inference at startup so the first request is not slow.
    """
    runtime = _Runtime(policy_or_factory, token=token, max_payload_bytes=max_payload_bytes, metadata=metadata,
                       num_steps=num_steps, fps=fps, max_queue=max_queue, warmup=warmup)

    @asynccontextmanager
    async def lifespan(app):
        await runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(title="sf-policy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    app.state.max_payload_bytes = runtime.max_payload

    def json_response(body: Any, status: int = 200, headers: Mapping | None = None) -> Response:
        return Response(json.dumps(to_jsonable(body)).encode(), status_code=status, media_type=JSON,
                        headers=dict(headers or {}))

    def error_response(error: WireError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return json_response({"error": error.to_dict()}, error.status, headers)

    def unauthorized(given: str | None) -> WireError:
        what = "missing" if given is None else "wrong"
        return WireError("authorization", f"{what} token: send 'Authorization: Bearer <token>'", status=401)

    @app.exception_handler(WireError)
    async def _wire_error(request, exc: WireError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):  # 404, 405...: the documented {"error": ...}
        return error_response(WireError("path", f"{request.method} {request.url.path}: {exc.detail}",
                                        status=exc.status_code))

    def require_token(request: Request) -> None:
        given = token_of(request.headers)
        if not authorized(runtime.token, given):
            raise unauthorized(given)

    @app.get("/health")
    @app.get("/healthz")  # openpi's name
    async def health():
        loaded = runtime.metadata is not None and runtime.executor is not None
        body = {"status": "ok" if loaded else "loading", "model_loaded": loaded, "protocol": PROTOCOL,
                "version": PROTOCOL_VERSION}
        return json_response(body, 200 if loaded else 503)

    @app.get("/metadata")
    async def metadata_endpoint(request: Request):
        require_token(request)
        if runtime.metadata is None:
            raise WireError("", "the model is not loaded yet", status=503)
        return json_response(runtime.metadata)

    @app.post("/infer")
    async def infer(request: Request):
        require_token(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != JSON and content_type not in MSGPACK_TYPES:
            raise WireError("content-type", f"{content_type!r} is not supported; send {MSGPACK} (or {JSON})",
                            status=415)
        body = await read_body(request, runtime.max_payload)
        received = time.perf_counter()
        try:
            # decoded in a worker thread: however large the body, /health and the websockets go on
            parsed = await asyncio.to_thread(decode_request, body, runtime.processor_roles(), content_type == JSON)
            reply = await runtime.infer(parsed, received)
        except WireError as exc:
            return error_response(exc)
        except Exception as exc:  # not the request's fault (the model failed): a 500, and the server goes on
            log.exception("request failed")
            return error_response(WireError("", f"internal error: {type(exc).__name__}: {exc}", status=500))
        if content_type == JSON:
            return json_response(reply)
        return Response(packb(reply), media_type=MSGPACK)

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket):
        given = token_of(websocket.headers, websocket.query_params)
        if not authorized(runtime.token, given):
            error = unauthorized(given)
            try:
                await websocket.send_denial_response(error_response(error))
            except RuntimeError:  # the ASGI server cannot send an HTTP denial: close during the handshake
                await websocket.close(code=1008, reason=str(error)[:120])
            return
        if runtime.metadata is None or runtime.executor is None:
            await websocket.close(code=1013, reason="the model is not loaded yet")
            return
        await websocket.accept()
        try:
            await websocket.send_bytes(packb(runtime.metadata))
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                received = time.perf_counter()
                try:
                    data = message.get("bytes")
                    if data is None:
                        raise WireError("frame", "expected a binary msgpack frame, got a text frame")
                    if len(data) > runtime.max_payload:
                        raise payload_too_large(len(data), runtime.max_payload)
                    parsed = await asyncio.to_thread(decode_request, data, runtime.processor_roles(), False)
                    reply = await runtime.infer(parsed, received)
                except WireError as exc:
                    await websocket.send_text(json.dumps({"error": exc.to_dict()}))
                    continue
                except Exception as exc:
                    log.exception("request failed")
                    error = WireError("", f"internal error: {type(exc).__name__}: {exc}", status=500)
                    await websocket.send_text(json.dumps({"error": error.to_dict()}))
                    continue
                await websocket.send_bytes(packb(reply))
        except WebSocketDisconnect:
            pass

    app.add_api_websocket_route("/", websocket_endpoint)  # openpi clients connect to ws://host:port
    return app


def decode_request(body: bytes, roles, from_json: bool) -> InferRequest:
    """A request body → a checked request (msgpack, or JSON); bad input is a WireError."""
    if from_json:
        return parse_request(json_loads(body), roles, from_json=True)
    return parse_request(unpackb(body), roles)


async def read_body(request, limit: int) -> bytes:
    """The request body, or a 413 naming the limit once it passes ``limit`` bytes. An over-limit body
    is read on (discarded, up to ``DRAIN_LIMIT``) so the client gets the 413, not a reset connection."""
    declared = request.headers.get("content-length")
    size_hint = None
    if declared is not None:
        try:
            size_hint = int(declared)
        except ValueError:
            raise WireError("content-length", f"not an integer: {declared!r}") from None
    chunks, size, over = [], 0, size_hint is not None and size_hint > limit
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                over = True
            if over:
                chunks.clear()
                if size > limit + DRAIN_LIMIT:
                    break
                continue
            chunks.append(chunk)
    except ClientDisconnect:  # an aborted upload: nobody to answer, nothing to log as an error
        log.info("%s %s: the client went away during the upload", request.method, request.url.path)
        raise WireError("body", "the client disconnected during the upload") from None
    if over:
        raise payload_too_large(size_hint, limit)
    return b"".join(chunks)
