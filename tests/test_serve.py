"""sf serve: the msgpack + numpy wire format, the FastAPI server over real loopback sockets (HTTP and
websocket), its clients, the token, the payload limit, openpi's layout, and a fuzz of malformed requests.

The policy is a real tiny π0 checkpoint (transformers' PI0 at a tiny size), saved and loaded the
way ``sf serve`` loads one. Servers bind 127.0.0.1 on a free port.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from websockets.sync.client import connect as ws_connect

from conftest import wait_for
from sf_policy.data.features import ACTION, STATE
from sf_policy.data.stats import vector_stats
from sf_policy.embodiment import JOINT_NAMES, STATE_DIM
from sf_policy.model.actions import action_stats
from sf_policy.model.policy import Policy, PolicyConfig
from sf_policy.model.tokenizer import tiny_tokenizer
from sf_policy.serve.client import PolicyClient, PolicyWebsocketClient, RemoteError, ServerUnavailable
from sf_policy.serve.auth import BindRefused, RedactTokens, check_bind
from sf_policy.serve.metadata import checkpoint_info
from sf_policy.serve.running import BackgroundServer
from sf_policy.serve.server import create_app
from sf_policy.serve.wire import BadArray, WireError, packb, parse_request, unpackb
from sf_policy.topics import CAMERA_ROLES
from sf_policy.train.checkpoint import POLICY_DIR, load_policy

LIMIT = 2 * 2**20  # the test servers' payload limit
TOKEN = "test-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """<run>/checkpoints/step_000010/policy/ with a tiny random π0."""
    root = tmp_path_factory.mktemp("serve_run")
    tokenizer = tiny_tokenizer(root / "tokenizer")
    rng = np.random.default_rng(0)
    states = rng.normal(size=(100, STATE_DIM))
    actions = states + 0.01 * rng.normal(size=(100, STATE_DIM))
    stats = {STATE: vector_stats(states), ACTION: action_stats(actions, states, "delta", 50)}
    torch.manual_seed(0)
    policy = Policy.build(PolicyConfig(tiny=True), stats=stats, tokenizer=tokenizer)
    step = root / "checkpoints" / "step_000010"
    policy.save_pretrained(step / POLICY_DIR)
    (step / "dataset.json").write_text(json.dumps({"fingerprint": "abc123"}))
    (root / "checkpoints" / "latest").write_text("step_000010\n")
    return step


@pytest.fixture(scope="module")
def policy(checkpoint) -> Policy:
    return load_policy(checkpoint).eval()


@pytest.fixture(scope="module")
def server(policy, checkpoint):
    app = create_app(policy, max_payload_bytes=LIMIT, metadata={"checkpoint": checkpoint_info(checkpoint)})
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def secure(policy):
    with BackgroundServer(create_app(policy, token=TOKEN, warmup=False)) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def sample(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {"cam_high": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                   "cam_left_wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                   "cam_right_wrist": None},
        "state": 0.1 * rng.normal(size=STATE_DIM),
        "prompt": "lift the pot",
    }


def local(policy: Policy, s: dict, seed: int) -> np.ndarray:
    return policy.predict([s], generator=torch.Generator().manual_seed(seed))[0]


def valid_request(**extra) -> dict:
    return {"state": np.zeros(STATE_DIM), "images": {}, "prompt": "lift the pot", "seed": 0} | extra


def post(http: httpx.Client, body: bytes, **headers) -> httpx.Response:
    return http.post("/infer", content=body, headers={"Content-Type": "application/msgpack"} | headers)


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.json()["error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# wire format


def openpi_packb(obj) -> bytes:
    """openpi_client's documented msgpack_numpy layout: bytes keys, dtype.str, shape."""
    def default(o):
        if isinstance(o, np.ndarray):
            return {b"__ndarray__": True, b"data": o.tobytes(), b"dtype": o.dtype.str, b"shape": o.shape}
        raise TypeError(type(o))
    return msgpack.packb(obj, default=default)


def openpi_unpackb(data: bytes):
    def hook(o):
        if b"__ndarray__" in o:
            return np.ndarray(buffer=o[b"data"], dtype=np.dtype(o[b"dtype"]), shape=o[b"shape"])
        return o
    return msgpack.unpackb(data, object_hook=hook)


def test_arrays_travel_in_openpi_layout_both_ways():
    actions = np.arange(50 * 14, dtype=np.float32).reshape(50, 14)
    raw = msgpack.unpackb(packb({"actions": actions}))["actions"]
    assert raw[b"__ndarray__"] is True and raw[b"dtype"] == "<f4" and raw[b"shape"] == [50, 14]
    np.testing.assert_array_equal(openpi_unpackb(packb({"actions": actions}))["actions"], actions)
    image = np.random.default_rng(0).integers(0, 256, (3, 8, 6), dtype=np.uint8)
    np.testing.assert_array_equal(unpackb(openpi_packb({"img": image}))["img"], image)
    # str keys, big-endian data and numpy scalars decode too; arrays come back writable
    big = {"__ndarray__": True, "data": np.arange(3, dtype=">f8").tobytes(), "dtype": ">f8", "shape": [3]}
    decoded = unpackb(msgpack.packb(big))
    np.testing.assert_array_equal(decoded, [0.0, 1.0, 2.0])
    assert decoded.dtype == np.float64 and decoded.flags.writeable
    assert unpackb(packb(np.float32(1.5))) == np.float32(1.5)


@pytest.mark.parametrize("dtype", ["O", "|O", "V8", "<c16", "<U4", "S3", "<M8[s]", "(2,)<f4", "f4,i4", "nonsense",
                                   "x" * 40, 7, None])
def test_unsafe_or_unknown_dtypes_are_refused(dtype):
    bad = {b"__ndarray__": True, b"data": b"\0" * 16, b"dtype": dtype, b"shape": [2]}
    assert isinstance(unpackb(msgpack.packb(bad)), BadArray)
    request = valid_request(images={"cam_high": bad})
    with pytest.raises(WireError, match=r"^images\.cam_high: expected uint8 HxWx3.*malformed array") as info:
        parse_request(unpackb(msgpack.packb(request, default=lambda o: o.tolist())))
    assert info.value.status == 400


@pytest.mark.parametrize("shape, data", [([2, 3], b"\0" * 5), ([-1], b""), ([2**40, 2**40], b"\0" * 4),
                                          ([1] * 9, b"\0"), ("3", b"\0" * 3), ([2.0], b"\0\0")])
def test_array_shape_must_match_its_bytes(shape, data):
    bad = {b"__ndarray__": True, b"data": data, b"dtype": "|u1", b"shape": shape}
    assert isinstance(unpackb(msgpack.packb(bad)), BadArray)


@pytest.mark.parametrize("change, message", [
    ({"state": np.zeros(3, np.float32)}, "state: expected 14 finite numbers (rad / m: left_joint1 .. right_gripper), "
                                         "got float32 (3,)"),
    ({"state": np.r_[np.zeros(13), np.nan]}, "state: contains NaN or inf (at right_gripper)"),
    ({"state": [0.0] * 13 + [True]}, "state: expected 14"),
    ({"state": "zeros"}, "state: expected 14"),
    ({"images": {"cam_high": np.zeros(3, np.float32)}}, "images.cam_high: expected uint8 HxWx3 (or 3xHxW), "
                                                        "got float32 (3,)"),
    ({"images": {"cam_high": np.zeros((4, 4, 4), np.uint8)}}, "images.cam_high: expected uint8 HxWx3"),
    ({"images": {"cam_high": np.zeros((0, 4, 3), np.uint8)}}, "images.cam_high: image of 0x4 px"),
    ({"images": {"cam_low": None}}, "images.cam_low: unknown camera role; expected one of cam_high"),
    ({"images": [1, 2]}, "images: expected a map"),
    ({"prompt": 3}, "prompt: expected a string"),
    ({"prompt": "x" * 3000}, "prompt: 3000 characters"),
    ({"seed": -1}, "seed: expected an integer in [0, "),
    ({"seed": True}, "seed: expected an integer"),
    ({"num_steps": 0}, "num_steps: expected an integer in [1, 100]"),
    ({"actions": np.zeros((50, 14))}, "request: unknown field(s) 'actions'"),
    ({"prefix_actions": np.zeros((5, 13))}, "prefix_actions: expected [n, 14]"),
    ({"prefix_actions": np.zeros((0, 14))}, "prefix_actions: expected [n, 14]"),
    ({"prefix_actions": [[0.0] * 14, "x"]}, "prefix_actions: expected [n, 14]"),
    ({"prefix_actions": np.full((3, 14), np.inf)}, "prefix_actions: contains NaN or inf"),
    ({"prefix_actions": np.zeros((3, 14)), "inference_delay": -2}, "inference_delay: expected an integer in [0, 1000]"),
    ({"inference_delay": 3}, "inference_delay: sent without prefix_actions"),
])
def test_request_errors_name_the_field(change, message):
    with pytest.raises(WireError) as info:
        parse_request(unpackb(packb(valid_request(**change))))
    assert str(info.value).startswith(message), str(info.value)
    assert 400 <= info.value.status < 500


def test_request_parsing_accepts_openpi_chw_images_and_missing_cameras():
    hwc = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    parsed = parse_request(unpackb(packb(valid_request(images={"cam_high": hwc.transpose(2, 0, 1)}))))
    np.testing.assert_array_equal(parsed.sample["images"]["cam_high"], hwc)
    assert parsed.seed == 0 and parsed.num_steps is None
    with pytest.raises(WireError, match="^prompt: missing"):
        parse_request({"state": [0.0] * 14, "images": {}})


# --------------------------------------------------------------------------------------------
# the server over real sockets


def test_health_and_metadata(server, checkpoint):
    with PolicyClient(server.url) as client:
        assert client.health()["status"] == "ok" and client.health()["model_loaded"] is True
        meta = client.metadata()
    assert meta["joint_names"] == list(JOINT_NAMES) and meta["camera_roles"] == list(CAMERA_ROLES)
    assert (meta["chunk_size"], meta["fps"], meta["image_size"], meta["state_dim"]) == (50, 30.0, 224, 14)
    assert meta["action_units"]["joints"] == "rad" and meta["action_units"]["gripper"].startswith("m")
    assert meta["max_payload_bytes"] == LIMIT and meta["auth"] is False
    info = meta["checkpoint"]
    assert info["id"] == "step_000010" and info["run"] == checkpoint.parent.parent.name
    assert info["fingerprint"].startswith("sha256:") and info["dataset_fingerprint"] == "abc123"
    assert info["fingerprint"] == checkpoint_info(checkpoint.parent.parent)["fingerprint"]  # run dir → latest


def test_http_infer_equals_local_predict_with_the_same_seed(server, policy):
    s = sample(0)
    expected = local(policy, s, seed=7)
    with PolicyClient(server.url) as client:
        reply = client.infer_reply(s, seed=7)
        again = client.infer(s, seed=7)
        other = client.infer(s, seed=8)
        batch = client.predict([s, sample(1)], seed=7)
    actions = reply["actions"]
    assert actions.dtype == np.float32 and actions.shape == (50, STATE_DIM)
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(again, actions)
    assert not np.allclose(other, actions)
    assert batch.shape == (2, 50, STATE_DIM)
    np.testing.assert_array_equal(batch[0], actions)
    assert set(reply["timing"]) == {"infer_ms", "queue_ms", "total_ms"}
    assert reply["timing"]["total_ms"] >= reply["timing"]["infer_ms"] > 0


def test_real_time_chunking_through_the_server_equals_local_predict(server, policy):
    """The client sends the actions still to execute and the delay; the server guides the
    sampler as Policy.predict does locally (sf_policy/model/rtc.py)."""
    s = sample(0)
    prefix = local(policy, s, seed=1)[:20] + 0.03
    guided = dict(s, prefix_actions=prefix, inference_delay=5)
    expected = local(policy, guided, seed=7)
    with PolicyClient(server.url) as client:
        actions = client.infer(guided, seed=7)
        free = client.infer(s, seed=7)
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
    assert np.abs(actions[:5] - prefix[:5]).max() < np.abs(free[:5] - prefix[:5]).max()


def test_http_infer_accepts_json(server, policy, http):
    s = sample(2)
    s["images"] = {"cam_high": s["images"]["cam_high"][:8, :8]}
    body = {"state": s["state"].tolist(), "images": {"cam_high": s["images"]["cam_high"].tolist()},
            "prompt": s["prompt"], "seed": 3, "num_steps": 4}
    response = http.post("/infer", json=body)
    assert response.status_code == 200, response.text
    got = np.asarray(response.json()["actions"], dtype=np.float32)
    expected = policy.predict([s], num_steps=4, generator=torch.Generator().manual_seed(3))[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    bad = http.post("/infer", json=dict(body, images={"cam_high": [[[1, 2, 300]]]}))
    assert bad.status_code == 400 and error_of(bad)["field"] == "images.cam_high"
    assert http.post("/infer", content=b"hi", headers={"Content-Type": "text/plain"}).status_code == 415


def test_a_prompt_the_processor_refuses_is_a_4xx(http):
    response = post(http, packb(valid_request(prompt="<image>")))
    assert response.status_code == 422 and "image token" in error_of(response)["message"]


def test_websocket_sends_metadata_first_then_answers_frames(server, policy):
    s = sample(3)
    expected = local(policy, s, seed=11)
    url = server.url.replace("http", "ws") + "/ws"
    with ws_connect(url, max_size=None) as ws:
        meta = unpackb(ws.recv(timeout=30))
        assert meta["protocol"] == "sf-policy" and meta["chunk_size"] == 50
        ws.send(packb(dict(s, seed=11)))
        reply = unpackb(ws.recv(timeout=60))
        np.testing.assert_allclose(reply["actions"], expected, rtol=0, atol=1e-6)
        ws.send(packb(valid_request(state=[1.0, 2.0])))  # a bad frame: an error text frame, the socket stays
        error = json.loads(ws.recv(timeout=30))["error"]
        assert error["status"] == 400 and error["field"] == "state"
        ws.send("not msgpack")
        assert json.loads(ws.recv(timeout=30))["error"]["field"] == "frame"
        ws.send(packb(dict(s, seed=11)))
        np.testing.assert_array_equal(unpackb(ws.recv(timeout=60))["actions"], reply["actions"])
    with PolicyWebsocketClient(server.url) as client:
        assert client.metadata()["joint_names"] == list(JOINT_NAMES)
        np.testing.assert_array_equal(client.infer(s, seed=11), reply["actions"])
        with pytest.raises(RemoteError) as info:
            client.infer(dict(s, state=np.full(STATE_DIM, np.inf)))
        assert info.value.status == 400 and info.value.field == "state"
        np.testing.assert_array_equal(client.infer(s, seed=11), reply["actions"])  # still connected
        assert client.reconnects == 0


def test_an_openpi_style_client_works_over_the_websocket(server):
    """openpi's layout: bytes-keyed arrays, CHW uint8 [3, 224, 224] images, float32 state; its
    decoder reads our reply. The actions equal those of the same images sent HWC."""
    rng = np.random.default_rng(4)
    images = {role: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for role in CAMERA_ROLES}
    state = (0.1 * rng.normal(size=STATE_DIM)).astype(np.float32)
    obs = {"state": state, "images": {r: im.transpose(2, 0, 1) for r, im in images.items()}, "prompt": "lift the pot",
           "seed": 5}
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    with ws_connect(server.url.replace("http", "ws"), max_size=None, compression=None) as ws:  # openpi's path: /
        metadata = openpi_unpackb(ws.recv(timeout=30))
        assert metadata["camera_roles"] == list(CAMERA_ROLES)
        ws.send(openpi_packb(obs))
        reply = openpi_unpackb(ws.recv(timeout=60))
    assert reply["actions"].shape == (50, STATE_DIM) and reply["server_timing"]["infer_ms"] > 0
    with PolicyClient(server.url) as client:
        hwc = client.infer({"images": images, "state": state.astype(np.float64), "prompt": "lift the pot"}, seed=5)
    np.testing.assert_array_equal(reply["actions"], hwc)


def test_websocket_client_reconnects_after_a_server_restart(policy):
    s = sample(5)
    port = free_port()
    with BackgroundServer(create_app(policy, warmup=False), port=port) as first:
        client = PolicyWebsocketClient(first.url, retries=20, backoff=0.05)
        before = client.infer(s, seed=1)
    with BackgroundServer(create_app(policy, warmup=False), port=port):
        after = client.infer(s, seed=1)  # the old socket is dead: reconnect and resend
    np.testing.assert_array_equal(after, before)
    assert client.reconnects >= 1
    other = create_app(policy, warmup=False, metadata={"checkpoint": {"fingerprint": "sha256:another"}})
    with BackgroundServer(other, port=port):  # restarted with another checkpoint: refuse to go on with it
        with pytest.raises(RemoteError, match="now serves another model .checkpoint fingerprint") as info:
            client.infer(s, seed=1)
        assert info.value.status == 409
        relaxed = PolicyWebsocketClient(f"http://127.0.0.1:{port}", allow_model_change=True)
        relaxed._metadata = {"checkpoint": None}
        relaxed.connect()
        relaxed.close()
    client.close()
    with pytest.raises(ServerUnavailable):  # nobody listens any more
        PolicyWebsocketClient(f"http://127.0.0.1:{port}", retries=0)


class GatedPolicy:
    """The tiny policy, but ``sample`` waits until the test opens the gate: a slow model, without timing."""

    def __init__(self, policy: Policy):
        self.policy, self.processor = policy, policy.processor
        self.entered, self.release = threading.Event(), threading.Event()
        self.device, self.dtype, self.guidance = policy.device, policy.dtype, policy.guidance

    def sample(self, batch, num_steps, generator=None, guide=None):
        self.entered.set()
        assert self.release.wait(60), "the test never opened the gate"
        return self.policy.sample(batch, num_steps, generator, guide=guide)


def test_inference_runs_off_the_event_loop_and_the_queue_is_bounded(policy):
    gated = GatedPolicy(policy)
    result = {}
    with BackgroundServer(create_app(gated, max_queue=1, warmup=False)) as running, \
            PolicyClient(running.url) as first, PolicyClient(running.url) as second:
        worker = threading.Thread(target=lambda: result.update(actions=first.infer(sample(10), seed=0)))
        worker.start()
        try:
            wait_for(gated.entered.is_set, timeout=60, what="the first request to reach the model")
            assert second.health()["status"] == "ok"  # the event loop answers while the model computes
            with PolicyWebsocketClient(running.url) as ws:
                assert ws.metadata()["chunk_size"] == 50
            with pytest.raises(RemoteError, match="busy: 1 requests already waiting") as info:
                second.infer(sample(10), seed=0)
            assert info.value.status == 503
        finally:
            gated.release.set()
            worker.join(timeout=60)
        assert result["actions"].shape == (50, STATE_DIM)
        np.testing.assert_array_equal(second.infer(sample(10), seed=0), result["actions"])  # the queue drained


# --------------------------------------------------------------------------------------------
# security


def test_token_is_required_everywhere_but_health(secure):
    with httpx.Client(base_url=secure.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            response = http.get("/metadata", headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert error_of(response)["field"] == "authorization"
            assert post(http, packb(valid_request()), **headers).status_code == 401
        assert http.get("/metadata", headers={"Authorization": f"Api-Key {TOKEN}"}).status_code == 200  # openpi
    with PolicyClient(secure.url, token="wrong-token-0123456789") as client, pytest.raises(RemoteError) as info:
        client.metadata()
    assert info.value.status == 401
    with PolicyClient(secure.url, token=TOKEN) as client:
        assert client.metadata()["auth"] is True
        assert client.infer(sample(6), seed=0).shape == (50, STATE_DIM)
    with pytest.raises(RemoteError) as info:
        PolicyWebsocketClient(secure.url)
    assert info.value.status == 401
    with PolicyWebsocketClient(secure.url, token=TOKEN) as client:
        assert client.metadata()["auth"] is True
    with ws_connect(secure.url.replace("http", "ws") + f"/ws?token={TOKEN}") as ws:  # the query form
        assert unpackb(ws.recv(timeout=30))["auth"] is True


def test_non_loopback_bind_without_a_token_is_refused(checkpoint, monkeypatch):
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        check_bind(host, None)
    with pytest.raises(BindRefused, match="refusing to serve on 0.0.0.0 without a token.*SF_SERVE_TOKEN"):
        check_bind("0.0.0.0", None)
    with pytest.raises(BindRefused, match="at least 16"):
        check_bind("192.168.1.20", "short")
    with pytest.raises(BindRefused, match="printable ASCII"):
        check_bind("::", "a token with spaces in it")
    check_bind("0.0.0.0", TOKEN)
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5000", f"/ws?token={TOKEN}&x=1"), None)
    RedactTokens().filter(record)
    assert TOKEN not in record.getMessage() and "/ws?token=***&x=1" in record.getMessage()
    with pytest.raises(BindRefused):
        create_app(lambda: None, token="bad token")

    from sf_policy.cli.serve import app

    monkeypatch.delenv("SF_SERVE_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", str(checkpoint), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "refusing to serve on 0.0.0.0" in result.output
    result = CliRunner().invoke(app, ["serve", str(checkpoint), "--host", "10.0.0.2"], env={"SF_SERVE_TOKEN": "abc"})
    assert result.exit_code == 2 and "at least 16" in result.output


def test_payload_limit_is_413_naming_the_limit(server, http):
    response = post(http, b"\0" * (LIMIT + 1))
    assert response.status_code == 413
    assert f"limit of {LIMIT} bytes" in error_of(response)["message"]

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(LIMIT // 2**16 + 2):
            yield b"\0" * 2**16
    response = post(http, chunks())
    assert response.status_code == 413 and "exceeds the limit" in error_of(response)["message"]
    with PolicyWebsocketClient(server.url) as client:
        error = json.loads(client.send_raw(b"\0" * (LIMIT + 10)))["error"]
        assert error["status"] == 413 and str(LIMIT) in error["message"]
        assert client.infer(sample(7), seed=0).shape == (50, STATE_DIM)  # the connection stays usable
    assert post(http, packb(valid_request())).status_code == 200


# --------------------------------------------------------------------------------------------
# fuzz: malformed requests get a 4xx, never a 5xx, and the server keeps serving

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
JUNK = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | TEXT
                    | st.binary(max_size=16),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=8)
DTYPES = st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|b1", "<u2", ">f4", "<f2"])


@st.composite
def arrays(draw, max_side: int = 6):
    dtype = np.dtype(draw(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, max_side), max_size=4)))
    return np.zeros(shape, dtype) if dtype.kind != "u" else np.full(shape, 7, dtype)


@st.composite
def raw_array_maps(draw):
    """An ndarray map with one thing wrong: dtype, shape, data or a missing key."""
    good = {b"__ndarray__": True, b"data": b"\0" * 12, b"dtype": "|u1", b"shape": [2, 2, 3]}
    key = draw(st.sampled_from([b"data", b"dtype", b"shape", None]))
    if key is None:
        del good[draw(st.sampled_from([b"data", b"dtype", b"shape"]))]
        return good
    replacement = {
        b"data": st.binary(max_size=11) | JUNK.filter(lambda v: not isinstance(v, bytes)),
        b"dtype": (st.sampled_from(["O", "V12", "<c8", "U1", "S12", "M8", "(3,)u1", "bogus", ""])
                   | JUNK).filter(lambda v: not _is_uint8(v)),
        b"shape": (st.sampled_from([[2**31, 2**31, 3], [-2, -2, 3], [12, 1], [2, 2, 2], [1] * 12])
                   | JUNK).filter(lambda v: not _is_image_shape_of_12(v)),
    }[key]
    good[key] = draw(replacement)
    return good


def _is_uint8(dtype) -> bool:
    """Would numpy read this dtype string as uint8 (then the array would be a valid image)?"""
    try:
        return np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype) == np.uint8
    except Exception:
        return False


def _is_image_shape_of_12(shape) -> bool:
    return (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int and n > 0 for n in shape)
            and shape[0] * shape[1] * shape[2] == 12 and 3 in (shape[0], shape[2]))


def _not(valid):
    return lambda v: not valid(v)


def _state_ok(v) -> bool:
    return isinstance(v, np.ndarray) and v.shape == (14,) and v.dtype.kind in "iuf"


def _image_ok(v) -> bool:
    return v is None or (isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 3
                         and 3 in (v.shape[0], v.shape[2]) and 0 not in v.shape)


BAD_STATE = (JUNK | arrays().filter(_not(_state_ok))
             | st.integers(0, 13).map(lambda i: np.where(np.arange(14) == i, np.nan, 0.0))
             | st.integers(0, 13).map(lambda i: np.where(np.arange(14) == i, -np.inf, 0.0))
             | st.just([True] * 14) | st.just(["0"] * 14))
BAD_IMAGE = (JUNK.filter(lambda v: v is not None) | arrays(max_side=4).filter(_not(_image_ok)) | raw_array_maps()
             | st.just(np.zeros((4097, 1, 3), np.uint8)))
BAD_IMAGES = (JUNK.filter(lambda v: not isinstance(v, dict))
              | st.dictionaries(st.sampled_from(list(CAMERA_ROLES)), BAD_IMAGE, min_size=1)
              | st.dictionaries(st.sampled_from(["cam_low", "", "CAM_HIGH"]), st.none(), min_size=1))
BAD_PROMPT = JUNK.filter(lambda v: not isinstance(v, str)) | st.just("p" * 2001) | st.just("a\x00b")
BAD_SEED = st.sampled_from([-1, 2**63, 1.5, "7", True, [1]])
BAD_STEPS = st.sampled_from([0, -3, 101, 10**6, 2.0, "ten", False])


@st.composite
def bad_requests(draw) -> bytes:
    """One malformed request, as the bytes a client would send."""
    kind = draw(st.sampled_from(["field"] * 6 + ["missing", "extra", "top", "bytes", "truncated", "trailing", "huge"]))
    request = valid_request()
    if kind == "huge":  # past the payload limit: 413
        request[draw(st.sampled_from(["state", "prompt"]))] = np.zeros(LIMIT // 8 + 1)
    if kind == "field":
        field = draw(st.sampled_from(["state", "images", "prompt", "seed", "num_steps"]))
        request[field] = draw({"state": BAD_STATE, "images": BAD_IMAGES, "prompt": BAD_PROMPT, "seed": BAD_SEED,
                               "num_steps": BAD_STEPS}[field])
    elif kind == "missing":
        del request[draw(st.sampled_from(["state", "images", "prompt"]))]
    elif kind == "extra":
        request[draw(TEXT.filter(lambda k: k not in request and k != "num_steps"))] = draw(JUNK)
    elif kind == "top":
        request = draw(JUNK.filter(lambda v: not isinstance(v, dict)) | arrays())
    elif kind == "bytes":
        return draw(st.binary(max_size=256))
    body = msgpack.packb(request, default=packb_default, use_bin_type=True)
    if kind == "truncated":
        return body[:draw(st.integers(0, len(body) - 1))]
    if kind == "trailing":
        return body + draw(st.binary(min_size=1, max_size=8))
    return body


def packb_default(o):
    return msgpack.unpackb(packb(o), raw=False)  # our array encoding, as a plain map


FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(body=bad_requests())
def test_fuzz_http_malformed_requests_get_a_4xx(http, body):
    response = post(http, body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert error_of(response)["message"]


@settings(FUZZ, max_examples=120)
@given(body=bad_requests())
def test_fuzz_websocket_bad_frames_get_error_frames(ws_client, body):
    answer = ws_client.send_raw(body)
    assert isinstance(answer, str), "a bad frame must get an error text frame"
    assert 400 <= json.loads(answer)["error"]["status"] < 500


@pytest.fixture(scope="module")
def ws_client(server):
    with PolicyWebsocketClient(server.url, retries=0) as client:
        yield client
        assert client.reconnects == 0  # no bad frame closed the connection


def test_after_the_fuzz_the_server_still_serves(server, policy, http, ws_client):
    """Runs after the fuzz tests (file order): the same server answers valid requests on both paths."""
    s = sample(8)
    expected = local(policy, s, seed=2)
    assert http.get("/health").json()["status"] == "ok"
    with PolicyClient(server.url) as client:
        np.testing.assert_allclose(client.infer(s, seed=2), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ws_client.infer(s, seed=2), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# app wiring and the command line


def test_a_factory_is_loaded_at_startup_and_a_failing_one_stops_it(policy):
    from fastapi.testclient import TestClient

    calls = []
    app = create_app(lambda: calls.append(1) or policy, warmup=True)
    with TestClient(app) as client:
        assert client.get("/health").json()["model_loaded"] is True
        assert client.get("/metadata").json()["chunk_size"] == 50
        assert client.get("/nothing").status_code == 404 and client.get("/infer").status_code == 405
    assert calls == [1]

    def broken():
        raise FileNotFoundError("no such checkpoint")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        with TestClient(create_app(broken)):
            pass


@pytest.mark.slow  # 4 s: the default tier stays under 5 minutes
def test_sf_serve_command_serves_a_checkpoint(checkpoint, tmp_path):
    port = free_port()
    env = dict(os.environ, SF_SERVE_TOKEN=TOKEN, PYTHONPATH=str(REPO))
    log = (tmp_path / "serve.log").open("w")
    code = "import sys; from sf_policy.cli.serve import app; sys.exit(app())"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(checkpoint.parent.parent), "--port", str(port),
                             "--no-warmup", "--log-level", "info"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    client = PolicyClient(f"http://127.0.0.1:{port}", token=TOKEN)
    try:

        def up():
            try:
                return client.health()["model_loaded"]
            except (ServerUnavailable, RemoteError):
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                return False
        wait_for(up, timeout=180, period=0.2, what="sf serve to answer /health")
        meta = client.metadata()
        assert meta["checkpoint"]["id"] == "step_000010" and meta["dtype"] == "float32" and meta["device"] == "cpu"
        assert client.infer(sample(9), seed=0).shape == (50, STATE_DIM)
        with ws_connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
            assert unpackb(ws.recv(timeout=30))["auth"] is True
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert '"WebSocket /ws?token=***" [accepted]' in text and TOKEN not in text  # the token stays out of the log


def test_a_damaged_weight_file_is_named_by_sf_serve_and_load_policy_without_a_traceback(checkpoint, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from sf_policy.cli.serve import app
    from sf_policy.model.policy import CheckpointError
    from sf_policy.train.checkpoint import load_policy

    damaged = tmp_path / "step_000010"
    shutil.copytree(checkpoint, damaged)
    weights = damaged / POLICY_DIR / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)  # an interrupted copy
    with pytest.raises(CheckpointError, match=rf"{weights}: cannot be read .*damaged or incomplete"):
        load_policy(damaged)
    result = CliRunner().invoke(app, ["serve", str(damaged)])
    assert result.exit_code == 2 and "model.safetensors: cannot be read" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------------
# probed as a hostile client would (issue 16)


def test_a_body_of_millions_of_empty_maps_or_deep_nesting_is_refused_before_it_is_decoded(server, http):
    maps = b"\xdd" + (LIMIT - 5).to_bytes(4, "big") + b"\x80" * (LIMIT - 5)  # 2 M empty maps in one array
    response = post(http, maps)
    assert response.status_code == 400 and "more than 10000 msgpack objects" in error_of(response)["message"]
    deep = b"\x91" * 40 + b"\xc0"  # [[[...[nil]...]]], 40 deep
    response = post(http, deep)
    assert response.status_code == 400 and "nested deeper than 16" in error_of(response)["message"]
    assert post(http, packb(valid_request())).status_code == 200  # a real request has a few dozen objects
    assert http.get("/health").status_code == 200


def test_a_json_integer_beyond_int64_is_a_400_naming_it(server, http):
    body = b'{"state": [' + b"1" * 401 + b', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "images": {}, "prompt": "x"}'
    response = http.post("/infer", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "401 digits is out of range" in error_of(response)["message"]


def test_json_images_of_booleans_are_refused(server, http):
    image = [[[1, True, 0]] * 4] * 4
    body = json.dumps({"state": [0.0] * STATE_DIM, "images": {"cam_high": image}, "prompt": "x"})
    response = http.post("/infer", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and error_of(response)["field"] == "images.cam_high"


def test_unknown_paths_and_methods_answer_in_the_documented_error_shape(server, http):
    for response, status in ((http.get("/nope"), 404), (http.get("/infer"), 405)):
        assert response.status_code == status
        error = error_of(response)
        assert error["status"] == status and "/" in error["message"] and "detail" not in response.json()


def test_token_redaction_keeps_uvicorns_access_line_intact():
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/metadata?token={TOKEN}", "1.1", 200), None)
    RedactTokens().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert TOKEN not in line and "/metadata?token=***" in line


def test_an_aborted_upload_is_logged_in_one_line_not_a_traceback(server, caplog):
    host, port = server.url.removeprefix("http://").split(":")
    with caplog.at_level(logging.INFO):
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                        b"Content-Length: 100000\r\n\r\n" + b"\x00" * 100)
        wait_for(lambda: "went away during the upload" in caplog.text, timeout=10, what="the disconnect logged")
    assert "Traceback" not in caplog.text and "Exception in ASGI application" not in caplog.text


def test_over_long_prompts_are_remembered_boundedly_and_shown_cut(policy):
    from sf_policy.model.processor import WARNED_PROMPTS

    processor = policy.processor
    with pytest.warns(UserWarning, match=r"characters\)'$"):
        processor.tokenize("lift " * 400 + "0")
    with pytest.warns(UserWarning):
        for k in range(WARNED_PROMPTS + 50):
            processor.tokenize("lift " * 60 + str(k))
    assert len(processor._warned_prompts) == WARNED_PROMPTS
