"""The real thing: `python -m server` under uvicorn on a free loopback port, spoken to over TCP
with an HTTP client and a WebSocket client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect

from model.checkpoint import save_checkpoint
from model.schedule import NoiseSchedule
from model.unet import UNet, UNetConfig

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # importing torch and loading models on a busy 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server's base URL; its output lines are collected in `server.lines`."""
    folder = tmp_path_factory.mktemp("checkpoints")
    config = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), num_classes=2, dropout=0.0)
    save_checkpoint(folder / "digits.safetensors", UNet(config), NoiseSchedule.from_name("linear", 1000), "toy")
    env_file = folder / "test.env"
    # room for every frame of the short runs below: with the default of one slot, a frame the loop makes
    # before the previous one is sent replaces it (by design; test_server_loop.py checks the Outbox)
    env_file.write_text("DDPM_WS_FRAME_BUFFER=16\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
    command = [
        sys.executable,
        "-m",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    process = subprocess.Popen(
        [*command, "--checkpoints", str(folder), "--env-file", str(env_file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: [output.append(line) for line in process.stdout], daemon=True)
    reader.start()
    deadline, url = time.monotonic() + START_TIMEOUT_S, None
    while url is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        announced = re.search(r"^Open (http://127\.0\.0\.1:\d+) in your browser$", "".join(output), re.MULTILINE)
        url = announced and announced.group(1)
    if url is None:
        process.kill()
        pytest.fail("the server did not announce its address:\n" + "".join(output))
    yield url, output
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        process.wait(timeout=30)
    finally:
        process.kill()
    reader.join(timeout=5)
    assert "Application shutdown complete" in "".join(output)


def test_the_server_logs_what_it_loaded(server):
    _, output = server
    assert any("loaded digits" in line and "on cpu" in line for line in output)
    assert any("serving digits on cpu" in line and "1 PyTorch CPU threads" in line for line in output)


def test_http_endpoints(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        assert [model["name"] for model in client.get("/models").json()] == ["digits"]
        body = client.post("/sample", json={"n": 2, "steps": 3, "seed": 1, "label": 1}).json()
        assert len(body["images"]) == 2 and body["seed"] == 1
        assert client.post("/sample", json={"n": 2, "steps": -3}).status_code == 422


def test_websocket_stream(server):
    url, _ = server
    with connect(url.replace("http", "ws") + "/ws/sample") as ws:
        # frames are base64 PNGs: deflate wins back most of base64's third on the wire (bench/bench_frames.py)
        assert [extension.name for extension in ws.protocol.extensions] == ["permessage-deflate"]
        ws.send(json.dumps({"n": 2, "steps": 4, "sampler": "ddpm"}))
        messages = [json.loads(ws.recv(timeout=60))]
        while messages[-1]["type"] not in ("done", "error", "cancelled"):
            messages.append(json.loads(ws.recv(timeout=60)))
        with pytest.raises(ConnectionClosedOK) as closed:  # the server closes after done
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1000
    assert [m["type"] for m in messages] == ["start", "frame", "frame", "frame", "frame", "done"]
    assert [m["step"] for m in messages[1:-1]] == [1, 2, 3, 4]


def test_websocket_from_another_site_is_refused(server):
    url, _ = server
    with pytest.raises(InvalidStatus) as refused:
        connect(url.replace("http", "ws") + "/ws/sample", origin="https://elsewhere.example")
    assert refused.value.response.status_code == 403


def test_a_client_that_leaves_frees_its_place(server):
    url, _ = server
    with pytest.raises(httpx.ReadTimeout):  # a 1000-step DDPM run outlasts the client's patience
        httpx.post(url + "/sample", json={"sampler": "ddpm", "steps": 1000, "n": 1}, timeout=0.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = httpx.get(url + "/metrics").text
        if re.search(r"^ddpm_active_jobs 0.0$", metrics, re.MULTILINE):
            break
        time.sleep(0.05)
    assert re.search(r'^ddpm_jobs_total\{outcome="cancelled"\} 1.0$', metrics, re.MULTILINE), metrics
