"""Issue 27's points about the process and the request contract: the checkpoint folder's odd entries
are logged, a model name is served once; a signal while the models load stops the loading; a second
Ctrl-C exits 130 after the application's shutdown, with no traceback; whole-number floats are the
integers they equal (as documented), and duplicate JSON keys are refused (REST and WebSocket)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from starlette.websockets import WebSocketDisconnect
from test_server import serve, write_checkpoint

from conftest import REPO, LiveServer, live_server_env, server_unet
from model.checkpoint import save_checkpoint
from model.schedule import NoiseSchedule
from server.registry import ModelRegistry

# --- 5: the checkpoint folder ---------------------------------------------------------------------


def test_odd_entries_named_like_checkpoints_are_logged_and_skipped(tmp_path, caplog):
    write_checkpoint(tmp_path / "cond.safetensors", channels=1, num_classes=3, timesteps=50)
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "gone.safetensors").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop.safetensors").symlink_to(tmp_path / "loop.safetensors")
    with caplog.at_level(logging.WARNING, logger="server.registry"):
        registry = ModelRegistry.load(tmp_path, torch.device("cpu"))
    assert list(registry.models) == ["cond"]
    warnings = caplog.text
    assert re.search(r"skipping \S*dir\.safetensors: not a checkpoint file but a directory", warnings), warnings
    for name in ("gone", "loop"):
        assert re.search(rf"skipping \S*{name}\.safetensors: .*symbolic link that leads nowhere or loops", warnings)


def test_a_diffusers_folder_and_a_checkpoint_of_one_name_serve_once(tmp_path, caplog):
    pytest.importorskip("diffusers")
    from diffusers import DDIMPipeline, DDIMScheduler
    from test_diffusers_models import tiny_unet2d

    DDIMPipeline(tiny_unet2d(size=8), DDIMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "twin")
    write_checkpoint(tmp_path / "twin.safetensors", channels=1, num_classes=3, timesteps=50)
    with caplog.at_level(logging.INFO, logger="server.registry"):
        registry = ModelRegistry.load(tmp_path, torch.device("cpu"))
    assert list(registry.models) == ["twin"] and registry.models["twin"].image_shape == (3, 8, 8)  # the folder
    assert caplog.text.count("loaded twin") == 1
    assert re.search(r"skipping \S*twin\.safetensors: model twin is loaded from \S*twin already", caplog.text)


# --- 6 and 7: signals -----------------------------------------------------------------------------


def start_server(folder, env_file) -> tuple[subprocess.Popen, list[str]]:
    """`python -m server` as LiveServer starts it, without waiting for it to listen."""
    start = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('server', run_name='__main__')"
    )
    command = [sys.executable, "-c", start, "--port", "0", "--device", "cpu", "--threads", "1",
               "--checkpoints", str(folder), "--env-file", str(env_file)]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
    process = subprocess.Popen(command, cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return process, lines


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)])
def test_a_signal_while_the_models_load_stops_the_loading(tmp_path, sig, code):
    """Forty checkpoints: the signal comes after the first has loaded. The server used to load all
    forty first (1.5-30 s), then stop; now it loads none after the one in hand."""
    unet, schedule = server_unet(1, 3, seed=0), NoiseSchedule.from_name("linear", 50)
    for i in range(40):
        save_checkpoint(tmp_path / f"m{i:02d}.safetensors", unet, schedule, "toy", ["a", "b", "c"])
    process, lines = start_server(tmp_path, live_server_env(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while not any("loaded m00" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            time.sleep(0.01)
        process.send_signal(sig)
        assert process.wait(timeout=60) == code
    finally:
        process.kill()
    time.sleep(0.2)  # the reader's last lines
    output = "".join(lines)
    loaded = output.count("INFO server.registry: loaded m")
    assert loaded < 40 and "not loading the" in output, output
    assert "Open http" not in output and "Application shutdown complete" in output
    assert "Traceback" not in output, output


def test_a_second_ctrl_c_exits_130_after_the_applications_shutdown_without_a_traceback(tmp_path):
    from websockets.sync.client import connect

    save_checkpoint(tmp_path / "cond.safetensors", server_unet(1, 3, seed=0), NoiseSchedule.from_name("linear", 1000),
                    "toy", ["a", "b", "c"])  # fmt: skip
    server = LiveServer(tmp_path, live_server_env(tmp_path, shutdown_grace_s=30))
    try:
        with connect(server.ws_url) as one, connect(server.ws_url) as two:
            for ws in (one, two):
                ws.send(json.dumps({"sampler": "ddpm", "steps": 1000, "n": 64, "every": 100}))
                assert json.loads(ws.recv(timeout=30))["type"] == "start"
            server.process.send_signal(signal.SIGINT)
            time.sleep(0.3)
            server.process.send_signal(signal.SIGINT)
            assert server.process.wait(timeout=60) == 130
    finally:
        server.stop()
    output = server.output
    assert "Traceback" not in output and "CancelledError" not in output, output
    assert "Application shutdown complete" in output
    # the 30 s grace period was cut short at the second signal, and said so
    assert "stopping 2 jobs still running at a second signal" in output, output


# --- 8: numbers and duplicate keys ------------------------------------------------------------------

BASE = {"model": "cond", "sampler": "ddim", "steps": 2, "n": 1, "seed": 1, "label": 1}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    write_checkpoint(folder / "cond.safetensors", channels=1, num_classes=3, timesteps=50, class_names="abc")
    with serve(folder) as client:
        yield client


def post(client, text: str):
    return client.post("/sample", content=text, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("field", "written", "taken"),
    [("n", "2.0", 2), ("label", "2.0", 2), ("steps", "2e0", 2), ("seed", "1e15", 10**15), ("seed", "10.0e-1", 1)],
)
def test_a_whole_number_written_as_a_float_is_that_integer(client, field, written, taken):
    """The documented contract (JSON Schema's integer): 2.0 is 2; the answer says what was taken."""
    rest = json.dumps({key: value for key, value in BASE.items() if key != field})
    body = post(client, rest[:-1] + f', "{field}": {written}}}')
    assert body.status_code == 200, body.text
    answer = body.json()
    assert (len(answer["images"]) if field == "n" else answer[field]) == taken


@pytest.mark.parametrize(
    "text",
    [
        '{"n": 1, "n": 2}',
        '{"model": "cond", "model": "cond"}',
        '{"branch": {"from": {"seed": 1, "seed": 2}, "at_step": 1}}',
        '{"seed": 4503599627370496.5}',  # a fraction lost in the nearest float: still not an integer
        '{"n": 1.5}',
    ],
)
def test_duplicate_keys_and_fractions_are_refused_over_rest_and_the_websocket(client, text):
    response = post(client, text)
    assert response.status_code == 422, response.text
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_text(text)
        message = ws.receive_json()
        assert message["type"] == "error" and message["kind"] == "invalid"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008
