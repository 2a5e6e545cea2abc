"""Every reproducer of the adversarial probe (issue 19), replayed against the real server: `python -m
server` under uvicorn on a loopback port, spoken to over TCP with plain HTTP, WebSocket and raw
socket clients. Each gets the documented answer: 422 over REST, an error message and close 1008
over the WebSocket, never a 500 or a 1006; bad checkpoints are skipped; incomplete requests, slow
readers and SIGTERM are dealt with within their set times."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import struct
import threading
import time

import httpx
import pytest
import torch
from safetensors.torch import save_file
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import LiveServer, live_server_env, server_unet
from model.checkpoint import read_metadata, save_checkpoint
from model.schedule import NoiseSchedule
from model.unet import UNet, UNetConfig

TIMEOUT_S = 1.0  # the server's read, send, keep-alive timeouts and shutdown grace in these tests
MARGIN_S = 3.0  # what a busy 2-core machine may add to a timeout


def write_checkpoints(folder):
    """digits: a working class-conditional 1×8×8 model, T = 1000; rgb: 3×64×64, unconditional, the
    cheapest UNet that makes big frames (a 64-image grid of noise is 2 MB a frame: a client that reads
    nothing fills the server's buffers within a few frames). Beside them, the probe's bad files:
    metadata with "step": "abc", metadata with "class_names": 5, and weights overwritten with 0xFF (NaN)."""
    schedule = NoiseSchedule.from_name("linear", 1000)
    rgb = UNetConfig(in_channels=3, image_size=64, base_channels=4, channel_mults=(1, 1, 1, 1), num_res_blocks=0,
                     attention_resolutions=(), dropout=0.0, groups=4)  # fmt: skip
    save_checkpoint(folder / "rgb.safetensors", UNet(rgb), schedule, "toy")
    unet = server_unet(channels=1, num_classes=2, seed=0)
    good = save_checkpoint(folder / "digits.safetensors", unet, schedule, "toy", ["a", "b"])
    tensors = {name: value.contiguous() for name, value in unet.state_dict().items()}
    for name, change in (("bad-step", {"step": "abc"}), ("bad-classes", {"class_names": 5})):
        save_file(tensors, folder / f"{name}.safetensors", {"diffusion": json.dumps({**read_metadata(good), **change})})
    data = bytearray(good.read_bytes())
    data[-4096:] = b"\xff" * 4096  # the last tensors' bytes: float32 NaNs
    (folder / "nan.safetensors").write_bytes(bytes(data))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    write_checkpoints(folder)
    env = live_server_env(
        folder,
        ws_send_timeout_s=TIMEOUT_S,
        request_read_timeout_s=TIMEOUT_S,
        keep_alive_timeout_s=TIMEOUT_S,
        shutdown_grace_s=TIMEOUT_S,
    )
    server = LiveServer(folder, env)
    yield server
    assert server.stop() == 130  # the shell's code for Ctrl-C
    assert "Application shutdown complete" in server.output
    assert "Exception in ASGI application" not in server.output and "Traceback" not in server.output, server.output


def metric(server: LiveServer, sample: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# --- bad checkpoints ------------------------------------------------------------------------------


def test_bad_checkpoints_are_skipped_and_the_others_serve(server):
    assert [model["name"] for model in httpx.get(server.url + "/models").json()] == ["digits", "rgb"]
    skipped = [line for line in server.lines if "skipping a checkpoint" in line]
    assert any("bad-step.safetensors" in line and "'step'" in line for line in skipped), skipped
    assert any("bad-classes.safetensors" in line and "'class_names'" in line for line in skipped), skipped
    assert any("nan.safetensors" in line and "NaN" in line for line in skipped), skipped
    response = httpx.post(server.url + "/sample", json={"n": 1, "steps": 2, "label": 1}, timeout=60)
    assert response.status_code == 200


# --- malformed input: REST 422, WebSocket error + 1008 -------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"model": ' + b"[" * depth + b"]" * depth + b"}"


MALFORMED = {
    "nested 500 deep": nested(500),
    "nested 960 deep": nested(960),
    "nested 5000 deep": nested(5000),
    "lone surrogate in model": b'{"model": "\\ud800"}',
    "lone surrogate in sampler": b'{"sampler": "\\udfff"}',
    "lone surrogate in label": b'{"label": "\\ud800x"}',
    "lone surrogate in a key": b'{"\\ud800": 1}',
    "5000-digit integer": b'{"n": ' + b"9" * 5000 + b"}",
    "4301-digit integer": b'{"seed": ' + b"1" * 4301 + b"}",
    "NaN": b'{"eta": NaN}',
    "a float overflowing to infinity": b'{"guidance": 1e999, "label": 1}',
    "empty model name": b'{"model": ""}',
}


@pytest.mark.parametrize("body", [*MALFORMED.values(), b'{"model": "\xff\xfe"}'], ids=[*MALFORMED, "invalid UTF-8"])
def test_rest_malformed_json_is_422(server, body):
    response = httpx.post(server.url + "/sample", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail and all(error["loc"][0] == "body" for error in detail)


def receive_until_closed(ws) -> tuple[list[dict], int | None]:
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=30)))
    except ConnectionClosed as closed:
        return messages, closed.rcvd.code if closed.rcvd else None


WS_MALFORMED = {
    **{name: body.decode() for name, body in MALFORMED.items()},
    "over the size limit (20 kB)": json.dumps({"model": "x" * 20_000}),
    "over 64 KiB": json.dumps({"model": "x" * 100_000}),
}


@pytest.mark.parametrize("text", WS_MALFORMED.values(), ids=WS_MALFORMED.keys())
def test_ws_malformed_json_is_an_error_and_1008(server, text):
    with connect(server.ws_url, max_size=None) as ws:
        ws.send(text)
        messages, code = receive_until_closed(ws)
    assert [message["type"] for message in messages] == ["error"] and messages[0]["detail"]
    assert code == 1008


def test_ws_binary_request_is_an_error_and_1008(server):
    with connect(server.ws_url) as ws:
        ws.send(b'{"model": "\xff\xfe"}')
        messages, code = receive_until_closed(ws)
    assert [message["type"] for message in messages] == ["error"] and code == 1008


def test_a_forged_forwarded_for_does_not_escape_the_per_client_limit(server):
    """uvicorn on its own believes X-Forwarded-For from 127.0.0.1; this server trusts only its
    trusted_proxies (none here), so five runs that each claim another address are still one client's."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for i in range(5):  # the default limit is 4
            ws = stack.enter_context(connect(server.ws_url, additional_headers={"X-Forwarded-For": f"203.0.113.{i}"}))
            ws.send(json.dumps({"model": "digits", "sampler": "ddpm", "steps": 1000, "n": 1, "every": 1000}))
            sockets.append(ws)
        assert all(json.loads(ws.recv(timeout=30))["type"] == "start" for ws in sockets[:4])
        messages, code = receive_until_closed(sockets[4])
        assert [message.get("kind") for message in messages] == ["client_limit"] and code == 1008
        for ws in sockets[:4]:
            ws.send(json.dumps({"type": "cancel"}))
            assert receive_until_closed(ws)[0][-1]["type"] == "cancelled"


def test_no_server_error_was_answered(server):
    """Runs after the malformed requests above: none was a 500, each WebSocket session was counted."""
    text = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in text
    assert metric(server, 'ddpm_ws_sessions_total{outcome="invalid"}') >= len(WS_MALFORMED) + 1
    assert metric(server, 'ddpm_http_requests_total{method="POST",route="/sample",status="422"}') >= len(MALFORMED)


# --- DNS rebinding -----------------------------------------------------------------------------------


def raw_handshake(server: LiveServer, host: str, origin: str | None = None, rcvbuf: int | None = None):
    """A WebSocket handshake on a raw socket; returns (socket, the response head)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /ws/sample HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]  # fmt: skip
    if origin:
        lines.append(f"Origin: {origin}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, head.decode("latin-1")


def test_a_foreign_host_is_refused(server):
    evil = f"evil.example:{server.port}"
    assert httpx.get(server.url + "/models", headers={"Host": evil}).status_code == 400
    assert httpx.post(server.url + "/sample", json={"n": 1}, headers={"Host": evil}).status_code == 400
    sock, head = raw_handshake(server, evil, origin=f"http://{evil}")
    sock.close()
    assert head.startswith("HTTP/1.1 403"), head
    sock, head = raw_handshake(server, f"127.0.0.1:{server.port}")  # the same handshake with a loopback name
    sock.close()
    assert head.startswith("HTTP/1.1 101"), head


# --- a slow reader, incomplete requests ------------------------------------------------------------


def masked_text_frame(text: str) -> bytes:
    payload, mask = text.encode(), os.urandom(4)
    length = (
        bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    )
    return bytes([0x81]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_side_established(server: LiveServer, client_port: int) -> bool:
    """Whether the server still holds an open (ESTABLISHED) TCP connection to our `client_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, remote, state = line.split()[1:4]
                if int(local.split(":")[1], 16) == server.port and int(remote.split(":")[1], 16) == client_port:
                    return state == "01"
    return False


def test_a_slow_reader_is_dropped_and_its_socket_closed(server):
    before = metric(server, 'ddpm_ws_sessions_total{outcome="slow_client"}')
    sock, head = raw_handshake(server, f"127.0.0.1:{server.port}", rcvbuf=4096)
    assert head.startswith("HTTP/1.1 101"), head
    client_port = sock.getsockname()[1]
    request = {"model": "rgb", "sampler": "ddpm", "steps": 1000, "n": 64, "every": 1}
    sock.sendall(masked_text_frame(json.dumps(request)))
    try:  # and read nothing: the server's buffers fill, a send times out, the client is dropped
        deadline = time.monotonic() + 60
        while metric(server, 'ddpm_ws_sessions_total{outcome="slow_client"}') == before:
            assert time.monotonic() < deadline, "the slow reader was not dropped within 60 s"
            time.sleep(0.05)
        dropped = time.monotonic()
        while server_side_established(server, client_port):
            assert time.monotonic() - dropped < TIMEOUT_S + MARGIN_S, "the server keeps the slow reader's socket"
            time.sleep(0.05)
    finally:
        sock.close()
    deadline = time.monotonic() + 30
    while metric(server, "ddpm_active_jobs") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "ddpm_active_jobs") == 0


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"POST /sample HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"n": 1',
    ],
    ids=["silent connection", "partial headers", "partial body"],
)
def test_an_incomplete_request_is_dropped_in_time(server, sent):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        held = time.monotonic() - started
    assert 0.5 * TIMEOUT_S <= held < TIMEOUT_S + MARGIN_S
    assert httpx.get(server.url + "/healthz").status_code == 200


# --- SIGTERM: bounded, with the documented answers ---------------------------------------------------


def test_sigterm_during_long_jobs_answers_503_and_1001_and_exits_within_the_grace_period(tmp_path):
    write_checkpoints(tmp_path)
    server = LiveServer(tmp_path, live_server_env(tmp_path, shutdown_grace_s=TIMEOUT_S, ws_send_timeout_s=TIMEOUT_S))
    long_job = {"sampler": "ddpm", "steps": 1000, "n": 64}
    try:
        answers = {}
        rest = threading.Thread(
            target=lambda: answers.setdefault("rest", httpx.post(server.url + "/sample", json=long_job, timeout=60))
        )
        rest.start()
        with connect(server.ws_url) as ws:
            ws.send(json.dumps({**long_job, "every": 100}))
            assert json.loads(ws.recv(timeout=30))["type"] == "start"
            deadline = time.monotonic() + 30
            while metric(server, "ddpm_active_jobs") < 2:
                assert time.monotonic() < deadline, "the REST job did not start"
                time.sleep(0.05)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            messages, code = receive_until_closed(ws)
        assert server.process.wait(timeout=TIMEOUT_S + 30) in (0, -signal.SIGTERM)  # uvicorn re-raises it
        exited = time.monotonic() - signalled
        rest.join(timeout=30)
    finally:
        server.stop()
    assert exited < TIMEOUT_S + MARGIN_S + 2, f"exited {exited:.1f} s after SIGTERM"
    assert [m["type"] for m in messages if m["type"] != "frame"] == ["error"] and code == 1001
    assert "shutting down" in messages[-1]["detail"]
    assert answers["rest"].status_code == 503 and "shutting down" in answers["rest"].json()["detail"]
    assert "Exception in ASGI application" not in server.output


def test_the_checkpoint_with_nan_weights_is_refused_at_load(tmp_path):
    from model.checkpoint import CheckpointError, load_checkpoint

    write_checkpoints(tmp_path)
    assert torch.isfinite(next(iter(load_checkpoint(tmp_path / "digits.safetensors").unet.parameters()))).all()
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(tmp_path / "nan.safetensors")
