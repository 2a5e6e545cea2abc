"""The sampling server's HTTP and WebSocket contract, through FastAPI's TestClient, with tiny random
checkpoints written to a temporary folder."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file
from starlette.websockets import WebSocketDisconnect
from torchvision.utils import make_grid

from conftest import server_unet
from model.checkpoint import save_checkpoint
from model.device import resolve_device
from model.samplers import SAMPLERS, ddim_timesteps
from model.schedule import NoiseSchedule
from model.unet import UNet, UNetConfig
from model.visualize import to_unit
from server import images
from server.__main__ import browsable_host, parse_args, settings_from_args
from server.app import create_app
from server.settings import Settings

WAIT_S = 30  # generous: the machine is shared; a passing test never waits this long


def write_checkpoint(path, channels: int, num_classes: int, timesteps: int, class_names=()):
    unet = server_unet(channels, num_classes, seed=channels + num_classes)
    save_checkpoint(path, unet, NoiseSchedule.from_name("linear", timesteps), "toy", list(class_names), step=7)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """cond: 1×8×8, 3 classes, T=1000. uncond: 3×8×8, T=100. Beside them, files to skip: a broken
    one, a safetensors file that is not a diffusion checkpoint, and one in a subfolder."""
    folder = tmp_path_factory.mktemp("checkpoints")
    write_checkpoint(folder / "cond.safetensors", channels=1, num_classes=3, timesteps=1000, class_names="abc")
    write_checkpoint(folder / "uncond.safetensors", channels=3, num_classes=0, timesteps=100)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    save_file({"weight": torch.zeros(2)}, folder / "other.safetensors")
    write_checkpoint(folder / "classifiers" / "classifier.safetensors", channels=1, num_classes=3, timesteps=100)
    return folder


TEST_HOSTS = ["testserver"]  # the Host that TestClient sends


@contextmanager
def serve(checkpoint_dir, **overrides):
    overrides = {"web_dir": None, "allowed_hosts": TEST_HOSTS, **overrides}
    settings = Settings(_env_file=None, checkpoint_dir=checkpoint_dir, **overrides)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def client(checkpoints):
    # a frame buffer as long as any run here: these tests read every frame the loop makes
    with serve(checkpoints, ws_frame_buffer=10_000) as client:
        yield client


def png_image(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    return image


def pixels(data: str) -> bytes:
    return png_image(data).tobytes()


def active_jobs(client) -> int:
    return client.app.state.server.loop.active_jobs


def wait_until_idle(client) -> None:
    deadline = time.monotonic() + WAIT_S
    while active_jobs(client) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert active_jobs(client) == 0


def read_to_end(ws) -> list[dict]:
    """Messages up to the job's last one: done, cancelled or error."""
    messages = [ws.receive_json()]
    while messages[-1]["type"] not in ("done", "cancelled", "error"):
        messages.append(ws.receive_json())
    return messages


def stream(ws, request: dict) -> list[dict]:
    ws.send_json(request)
    return read_to_end(ws)


def expect_close(ws, code: int) -> None:
    message = ws.receive()
    assert message["type"] == "websocket.close" and message["code"] == code


# --- health, models ----------------------------------------------------------------------------


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "models": ["cond", "uncond"]}


def test_not_ready_without_models(tmp_path):
    with serve(tmp_path) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        response = client.post("/sample", json={})
        assert response.status_code == 422 and "loaded: none" in response.text


def test_models_lists_the_diffusion_checkpoints_and_skips_the_rest(checkpoints, caplog):
    with caplog.at_level("WARNING", logger="server.registry"), serve(checkpoints) as client:
        models = client.get("/models").json()
    for model in models:  # measured at load: a time, different each run
        assert 0 < model.pop("seconds_per_row") < 10
    assert models == [
        {
            "name": "cond",
            "dataset": "toy",
            "image_size": 8,
            "channels": 1,
            "num_classes": 3,
            "class_names": ["a", "b", "c"],
            "guidance": True,
            "guidance_input": False,
            "timesteps": 1000,
            "schedule": "linear",
            "device": "cpu",
            "default_sampler": None,
            "default_steps": None,
            "distilled": False,
            "teacher": None,
            "sampler_params": {"ddim": {"spacing": "leading"}, "ddpm": {"variance": "fixed_large"}},
        },
        {
            "name": "uncond",
            "dataset": "toy",
            "image_size": 8,
            "channels": 3,
            "num_classes": 0,
            "class_names": [],
            "guidance": False,
            "guidance_input": False,
            "timesteps": 100,
            "schedule": "linear",
            "device": "cpu",
            "default_sampler": None,
            "default_steps": None,
            "distilled": False,
            "teacher": None,
            "sampler_params": {"ddim": {"spacing": "leading"}, "ddpm": {"variance": "fixed_large"}},
        },
    ]
    skipped = " ".join(record.getMessage() for record in caplog.records)
    assert "broken.safetensors" in skipped and "other.safetensors" in skipped
    assert "classifier" not in skipped  # subfolders are not looked at


def test_schedule_gives_alphas_cumprod(client):
    body = client.get("/models/uncond/schedule").json()
    expected = NoiseSchedule.from_name("linear", 100).alphas_cumprod
    assert body["name"] == "uncond" and body["schedule"] == "linear" and body["timesteps"] == 100
    torch.testing.assert_close(torch.tensor(body["alphas_cumprod"]), expected)
    assert client.get("/models/nope/schedule").status_code == 404


def test_default_model_prefers_the_setting(checkpoints):
    with serve(checkpoints, default_model="uncond") as client:
        assert client.post("/sample", json={"n": 1, "steps": 1}).json()["model"] == "uncond"


def test_config_publishes_the_limits_the_defaults_and_the_sampler_table(checkpoints):
    settings = {"max_n": 8, "max_steps": 500, "max_jobs": 2, "max_queue": 5, "max_jobs_per_client": 3}
    with serve(checkpoints, **settings, default_sampler="unipc", default_steps=None) as client:
        config = client.get("/config").json()
        assert config["limits"] == {
            **settings,
            "max_guidance": 20.0,
            "max_seed": 2**53 - 1,
            "max_init_image_bytes": 262_144,
        }
        assert config["load"] == {"iteration_s": None, "active_jobs": 0, "queued_jobs": 0}  # nothing has run yet
        assert config["defaults"] == {"model": "cond", "sampler": "unipc", "steps": 10, "n": 8, "guidance": 3.0}
        assert [s["name"] for s in config["samplers"]] == list(SAMPLERS)
        assert config["samplers"] == [sampler.info() for sampler in SAMPLERS.values()]
        unipc = next(s for s in config["samplers"] if s["name"] == "unipc")
        assert unipc["title"] == "UniPC" and unipc["default_steps"] == 10 and unipc["evals_per_step"] == 1
        assert {"name": "order", "type": "integer", "default": 2, "choices": [1, 2, 3]}.items() <= unipc["params"][
            0
        ].items()
        # what it says a request without n or sampler gets, it gets
        body = client.post("/sample", json={"model": "cond", "seed": 1}).json()
        assert (body["sampler"], body["steps"], len(body["images"])) == ("unipc", 10, 8)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        Settings(_env_file=None, default_sampler="euler")


# --- POST /sample ----------------------------------------------------------------------------


def test_sample_answers_images_and_their_grid(client):
    response = client.post("/sample", json={"model": "cond", "n": 5, "steps": 4, "label": 1, "seed": 9})
    assert response.status_code == 200
    body = response.json()
    assert [png_image(data).size for data in body["images"]] == [(8, 8)] * 5
    assert png_image(body["images"][0]).mode == "L"
    # ceil(√5) = 3 a row, 2 rows, 2 px padding around and between
    assert png_image(body["grid"]).size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)
    assert {key: body[key] for key in ("seed", "model", "sampler", "steps", "params", "label", "guidance")} == {
        "seed": 9,
        "model": "cond",
        "sampler": "dpm-solver++",  # the server's default sampler, with every parameter at its default
        "steps": 4,
        "params": {"order": 2, "spacing": "trailing", "thresholding": "clip"},
        "label": 1,
        "guidance": 3.0,  # the default guidance, with a label
    }
    assert body["elapsed_ms"] > 0


def test_sample_defaults(client):
    body = client.post("/sample", json={"model": "uncond", "sampler": "ddpm", "n": 1}).json()
    assert (body["steps"], body["label"], body["guidance"]) == (100, None, None)  # all T steps
    assert body["params"] == {"variance": "fixed_large", "thresholding": "clip"}
    body = client.post("/sample", json={"model": "cond"}).json()
    assert (body["sampler"], body["steps"], len(body["images"])) == ("dpm-solver++", 10, 16)
    assert png_image(body["images"][0]).size == (8, 8)
    body = client.post("/sample", json={"model": "cond", "sampler": "ddim", "eta": 1, "n": 1}).json()
    assert (body["steps"], body["params"]["eta"]) == (50, 1.0)  # ddim's own default steps; 1 is a fine float


def test_a_model_may_name_its_own_default_sampler_and_steps(checkpoints):
    """The hook for distilled models: a request that names no sampler gets the model's; one that names
    the model's sampler without steps gets the model's steps; any other sampler keeps its own defaults."""
    with serve(checkpoints, default_sampler="ddim", default_steps=7) as client:
        model = client.app.state.server.registry.models["cond"]
        model.default_sampler, model.default_steps = "unipc", 3
        try:
            assert {"name": "cond", "default_sampler": "unipc", "default_steps": 3}.items() <= next(
                m for m in client.get("/models").json() if m["name"] == "cond"
            ).items()
            answers = [
                client.post("/sample", json={"model": model, "n": 1, **extra}).json()
                for model, extra in [("cond", {}), ("cond", {"sampler": "unipc"}), ("cond", {"sampler": "ddim"}),
                                     ("uncond", {}), ("uncond", {"sampler": "dpm-solver++"})]
            ]  # fmt: skip
            assert [(a["sampler"], a["steps"]) for a in answers] == [
                ("unipc", 3), ("unipc", 3), ("ddim", 50), ("ddim", 7), ("dpm-solver++", 10)
            ]  # fmt: skip
        finally:
            model.default_sampler = model.default_steps = None


def test_a_distilled_checkpoint_is_served_by_its_own_sampler_and_steps_only(tmp_path):
    """A student's metadata names its sampler, steps and their parameters: a request that leaves them out
    gets them, with w as the model's input (one forward a step); any other sampler, step count or fixed
    parameter is a clear 422."""
    config = {**server_unet(1, 3, seed=1).config.to_dict(), "guidance_input": True, "prediction": "v"}
    student = UNet(UNetConfig.from_dict(config))
    sampling = {"sampler": "ddim", "steps": 2, "spacing": "trailing", "eta": 0.0}
    save_checkpoint(tmp_path / "fast.safetensors", student, NoiseSchedule.from_name("linear"), "toy", list("abc"),
                    sampling=sampling, distillation={"teacher": "runs/toy.safetensors"})  # fmt: skip
    with serve(tmp_path) as client:
        info = client.get("/models").json()[0]
        assert (info["default_sampler"], info["default_steps"], info["distilled"]) == ("ddim", 2, True)
        assert info["teacher"] == "toy"  # the name its teacher would be served under
        assert info["sampler_params"] == {"ddim": {"spacing": "trailing", "eta": 0.0}}  # what it takes, and only that
        done = client.post("/sample", json={"model": "fast", "n": 2, "label": 1, "guidance": 4, "seed": 3}).json()
        assert (done["sampler"], done["steps"], done["params"]["spacing"]) == ("ddim", 2, "trailing")
        again = client.post("/sample", json={"n": 2, "label": 1, "guidance": 4, "seed": 3, "sampler": "ddim",
                                             "steps": 2, "spacing": "trailing"}).json()  # fmt: skip
        assert again["images"] == done["images"]
        for wrong, field in [({"steps": 4}, "steps"), ({"sampler": "unipc"}, "sampler"),
                             ({"spacing": "leading"}, "spacing")]:  # fmt: skip
            answer = client.post("/sample", json={"model": "fast", "n": 1, **wrong})
            assert answer.status_code == 422
            assert answer.json()["detail"][0]["loc"][-1] == field and "distilled" in answer.json()["detail"][0]["msg"]


def test_sample_as_png(client):
    response = client.post(
        "/sample", json={"model": "uncond", "n": 4, "steps": 2, "seed": 3}, headers={"Accept": "image/png"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "3"
    grid = Image.open(io.BytesIO(response.content))
    assert grid.mode == "RGB" and grid.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    as_json = client.post("/sample", json={"model": "uncond", "n": 4, "steps": 2, "seed": 3}).json()
    assert grid.tobytes() == pixels(as_json["grid"])


@pytest.mark.parametrize(
    "request_body",
    [
        {"model": "cond", "sampler": "ddim", "steps": 5, "eta": 0.5, "label": 2, "guidance": 3.0},
        {"model": "cond", "sampler": "ddpm", "steps": 5},
        {"model": "uncond", "sampler": "ddim", "steps": 5},
        {"model": "cond", "sampler": "unipc", "steps": 4, "order": 3, "label": 0},
    ],
)
def test_same_seed_same_images(client, request_body):
    first = client.post("/sample", json={**request_body, "n": 3, "seed": 1234}).json()
    again = client.post("/sample", json={**request_body, "n": 3, "seed": 1234}).json()
    other = client.post("/sample", json={**request_body, "n": 3, "seed": 1235}).json()
    assert [pixels(image) for image in first["images"]] == [pixels(image) for image in again["images"]]
    assert first["images"] != other["images"]


def test_a_drawn_seed_is_reported_and_reproduces_the_images(client):
    drawn = client.post("/sample", json={"model": "cond", "n": 2, "steps": 3, "seed": None}).json()
    assert isinstance(drawn["seed"], int) and 0 <= drawn["seed"] < 2**32
    replayed = client.post("/sample", json={"model": "cond", "n": 2, "steps": 3, "seed": drawn["seed"]}).json()
    assert replayed["images"] == drawn["images"]


BAD_REQUESTS = {
    "unknown model": {"model": "nope"},
    "unknown sampler": {"sampler": "euler"},
    "unknown field": {"cfg_scale": 7},
    "n zero": {"n": 0},
    "n over max_n": {"n": 65},
    "steps zero": {"steps": 0},
    "steps over max_steps": {"steps": 1001},
    "steps over the model's T": {"model": "uncond", "steps": 101},
    "steps over the solver's T - 1": {"model": "uncond", "sampler": "dpm-solver++", "steps": 100},
    "eta negative": {"sampler": "ddim", "eta": -0.1},
    "eta over 1": {"sampler": "ddim", "eta": 1.5},
    "eta as a bool": {"sampler": "ddim", "eta": False},
    "eta of another sampler": {"sampler": "ddpm", "eta": 0.0},
    "order not a choice": {"sampler": "unipc", "order": 4},
    "spacing not a choice": {"sampler": "ddim", "spacing": "karras"},
    "guidance negative": {"label": 1, "guidance": -1.0},
    "guidance over max": {"label": 1, "guidance": 21.0},
    "label on an unconditional model": {"model": "uncond", "label": 0},
    "label out of range": {"model": "cond", "label": 3},
    "label negative": {"model": "cond", "label": -1},
    "seed negative": {"seed": -1},
    "seed beyond 2^53": {"seed": 2**53},
    "n as a string": {"n": "4"},
    "n as a fraction": {"n": 4.5},
    "n as a bool": {"n": True},
    "steps as a list": {"steps": [5]},
    "model as a number": {"model": 5},
    "eta as a string": {"sampler": "ddim", "eta": "0.5"},
    "not an object": [1, 2],
}


@pytest.mark.parametrize("body", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_are_422(client, body):
    response = client.post("/sample", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "content",
    [b'{"n": 4', b"", b"null", b'{"n": NaN}', b"\xff\xfe"],
    ids=["truncated JSON", "empty", "null", "NaN", "not UTF-8"],
)
def test_malformed_bodies_are_422(client, content):
    response = client.post("/sample", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text


def test_a_huge_body_is_422_before_it_is_read(client):
    # over request_bytes: max_body_bytes and room for 4 images of max_init_image_bytes (1.4 MB by default)
    huge = json.dumps({"model": "cond", "padding": "x" * 2_000_000}).encode()
    response = client.post("/sample", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "request body is larger than" in response.text

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield huge[:10_000]
        yield huge[10_000:]

    response = client.post("/sample", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "request body is larger than" in response.text
    # under it, the request without its images must still fit in max_body_bytes
    response = client.post("/sample", json={"model": "cond", "padding": "x" * 100_000})
    assert response.status_code == 422 and "larger than 16384 bytes, besides its images" in response.text


def test_errors_list_every_bad_field(client):
    detail = client.post("/sample", json={"model": "cond", "n": 100, "label": 5}).json()["detail"]
    assert sorted(tuple(error["loc"]) for error in detail) == [("body", "label"), ("body", "n")]
    body = {"model": "cond", "sampler": "ddim", "eta": 2, "order": 2, "steps": 1001}
    detail = client.post("/sample", json=body).json()["detail"]
    assert {error["loc"][-1]: error["msg"] for error in detail} == {
        "eta": "eta must be at least 0 and at most 1",
        "order": "Extra inputs are not permitted: ddim has no parameter order "
        "(its parameters: eta, spacing, thresholding)",
        "steps": "at most 1000 steps (ddim on a model of T = 1000 takes 1000, the server allows 1000)",
    }


def test_with_no_queue_over_the_job_limit_is_503_with_retry_after(checkpoints):
    with serve(checkpoints, max_jobs=1, max_queue=0) as client, client.websocket_connect("/ws/sample") as ws:
        ws.send_json({"model": "cond", "sampler": "ddpm", "steps": 1000, "n": 1})
        assert ws.receive_json()["type"] == "start"
        response = client.post("/sample", json={"n": 1, "steps": 1})
        assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
        with client.websocket_connect("/ws/sample") as second:
            second.send_json({"n": 1, "steps": 1})
            assert second.receive_json()["type"] == "error"
            expect_close(second, 1013)
        ws.send_json({"type": "cancel"})
        assert read_to_end(ws)[-1]["type"] == "cancelled"
        assert client.post("/sample", json={"n": 1, "steps": 1}).status_code == 200


def test_a_job_over_the_time_limit_is_504(checkpoints):
    with serve(checkpoints, request_timeout_s=0.05) as client:
        response = client.post("/sample", json={"model": "cond", "sampler": "ddpm", "steps": 1000, "n": 1})
        assert response.status_code == 504 and "longer than" in response.json()["detail"]
        assert active_jobs(client) == 0


def test_metrics_count_requests_jobs_and_batches(client):
    client.post("/sample", json={"model": "uncond", "n": 1, "steps": 2})
    client.post("/sample", json={"n": 0})
    client.get("/config")
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'ddpm_http_requests_total{method="POST",route="/sample",status="200"}' in text
    assert 'ddpm_http_requests_total{method="POST",route="/sample",status="422"}' in text
    assert 'ddpm_http_requests_total{method="GET",route="/config",status="200"}' in text
    assert 'ddpm_errors_total{kind="invalid"}' in text
    samples = ("ddpm_active_jobs 0.0", "ddpm_queued_jobs 0.0", "ddpm_batch_jobs_count", "ddpm_batch_images_bucket")
    for sample in (*samples, "_per_second"):
        assert sample in text
    steps = float(next(line.split()[1] for line in text.splitlines() if line.startswith("ddpm_denoising_steps_total")))
    assert steps >= 2


def test_openapi_documents_the_contract(client):
    schema = client.get("/openapi.json").json()
    assert {"/healthz", "/readyz", "/models", "/models/{name}/schedule", "/sample", "/metrics"} <= set(schema["paths"])
    assert "image/png" in schema["paths"]["/sample"]["post"]["responses"]["200"]["content"]
    assert "/ws/sample" in schema["info"]["description"]
    assert client.get("/docs").status_code == 200


# --- WS /ws/sample ---------------------------------------------------------------------------


def test_ws_streams_start_every_frame_and_done(client):
    with client.websocket_connect("/ws/sample") as ws:
        messages = stream(ws, {"model": "cond", "sampler": "ddim", "steps": 6, "n": 3, "seed": 4, "label": 0})
        expect_close(ws, 1000)
    start, frames, done = messages[0], messages[1:-1], messages[-1]
    assert start == {
        "type": "start",
        "total": 6,
        "at_step": 0,
        "seed": 4,
        "model": "cond",
        "sampler": "ddim",
        "steps": 6,
        "n": 3,
        "every": 1,
        "image_size": 8,
        "channels": 1,
        "preview_size": 8,
        "params": {"eta": 0.0, "spacing": "leading", "thresholding": "clip"},
        "label": 0,
        "guidance": 3.0,
    }
    assert [frame["type"] for frame in frames] == ["frame"] * 6
    assert [frame["step"] for frame in frames] == [1, 2, 3, 4, 5, 6]
    assert [frame["t"] for frame in frames] == [*ddim_timesteps(1000, 6)[1:], -1]
    assert all(frame["total"] == 6 for frame in frames)
    assert png_image(frames[0]["x_t"]).size == png_image(frames[0]["x0"]).size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    assert done["type"] == "done" and len(done["images"]) == 3 and done["seed"] == 4
    assert pixels(frames[-1]["x_t"]) == pixels(done["grid"])  # the last frame is the result


def test_ws_every_k_streams_every_kth_step_and_the_last(client):
    with client.websocket_connect("/ws/sample") as ws:
        messages = stream(ws, {"model": "uncond", "steps": 10, "n": 1, "every": 4})
    assert [m["step"] for m in messages if m["type"] == "frame"] == [4, 8, 10]


def test_ws_gives_the_same_images_as_rest(client):
    request = {"model": "cond", "sampler": "ddpm", "steps": 5, "n": 2, "seed": 77, "label": 2}
    with client.websocket_connect("/ws/sample") as ws:
        done = stream(ws, request)[-1]
    rest = client.post("/sample", json=request).json()
    assert done["images"] == rest["images"] and done["grid"] == rest["grid"]


def test_ws_cancel_stops_the_job(client):
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_json({"model": "cond", "sampler": "ddpm", "steps": 1000, "n": 1})
        assert ws.receive_json()["type"] == "start"
        assert ws.receive_json()["type"] == "frame"
        ws.send_json({"type": "cancel"})
        messages = read_to_end(ws)
        expect_close(ws, 1000)
    cancelled = messages[-1]
    assert cancelled["type"] == "cancelled" and 1 <= cancelled["step"] < 1000
    assert all(m["type"] == "frame" and m["step"] <= cancelled["step"] for m in messages[:-1])
    wait_until_idle(client)


def test_ws_disconnect_mid_stream_ends_the_job(client):
    cancelled_before = client.app.state.server.metrics.value("ddpm_jobs_total", outcome="cancelled")
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_json({"model": "cond", "sampler": "ddpm", "steps": 1000, "n": 2})
        assert ws.receive_json()["type"] == "start"
        assert ws.receive_json()["type"] == "frame"
    wait_until_idle(client)
    assert client.app.state.server.metrics.value("ddpm_jobs_total", outcome="cancelled") == cancelled_before + 1
    assert client.get("/healthz").status_code == 200
    assert client.post("/sample", json={"n": 1, "steps": 2}).status_code == 200


WS_BAD_MESSAGES = {
    "malformed JSON": '{"n": ',
    "not an object": "[1]",
    "unknown field": json.dumps({"n": 1, "nope": 1}),
    "unknown model": json.dumps({"model": "nope"}),
    "steps out of range": json.dumps({"steps": 5000}),
    "every zero": json.dumps({"every": 0}),
    "label on an unconditional model": json.dumps({"model": "uncond", "label": 1}),
    "wrong type": json.dumps({"n": "many"}),
    "too long": json.dumps({"model": "x" * 20_000}),
}


@pytest.mark.parametrize("text", WS_BAD_MESSAGES.values(), ids=WS_BAD_MESSAGES.keys())
def test_ws_bad_requests_get_an_error_and_close_1008(client, text):
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_text(text)
        message = ws.receive_json()
        assert message["type"] == "error" and message["detail"]
        expect_close(ws, 1008)


def test_ws_binary_request_is_refused(client):
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_bytes(b'{"n": 1}')
        assert ws.receive_json()["type"] == "error"
        expect_close(ws, 1008)


def test_ws_a_bad_message_while_sampling_ends_the_job(client):
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_json({"model": "cond", "sampler": "ddpm", "steps": 1000, "n": 1})
        assert ws.receive_json()["type"] == "start"
        ws.send_json({"type": "pause"})
        messages = read_to_end(ws)
        expect_close(ws, 1008)
    assert messages[-1]["type"] == "error"
    wait_until_idle(client)


def test_ws_origin_must_be_allowed(checkpoints):
    with serve(checkpoints, cors_origins=["https://allowed.example"]) as client:
        for origin in ("https://allowed.example", "http://testserver", None):  # listed, same origin, no browser
            headers = {"origin": origin} if origin else {}
            with client.websocket_connect("/ws/sample", headers=headers) as ws:
                assert stream(ws, {"n": 1, "steps": 1})[-1]["type"] == "done"
        evil = {"origin": "https://evil.example"}
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws/sample", headers=evil):
            pass
        assert refused.value.code == 1008


def test_ws_origin_other_than_same_origin_is_refused_by_default(client):
    other = {"origin": "http://localhost:1234"}
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws/sample", headers=other):
        pass


def test_cors_headers_only_for_allowed_origins(checkpoints, client):
    assert "access-control-allow-origin" not in client.get("/models", headers={"origin": "https://a.example"}).headers
    with serve(checkpoints, cors_origins=["https://a.example"]) as allowing:
        response = allowing.get("/models", headers={"origin": "https://a.example"})
        assert response.headers["access-control-allow-origin"] == "https://a.example"


# --- the browser UI, settings, command line ------------------------------------------------------


def test_the_ui_is_served_at_the_root_after_the_api(checkpoints, tmp_path):
    (tmp_path / "index.html").write_text("<h1>demo</h1>")
    settings = Settings(_env_file=None, checkpoint_dir=checkpoints, web_dir=tmp_path, allowed_hosts=TEST_HOSTS)
    with TestClient(create_app(settings)) as client:
        assert client.get("/").text == "<h1>demo</h1>"
        assert client.get("/models").status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}


def test_without_a_ui_the_root_points_to_the_docs(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/docs"


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_MAX_N", "8")
    monkeypatch.setenv("DDPM_DEVICE", "cpu")
    monkeypatch.setenv("DDPM_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("DDPM_ALLOWED_HOSTS", "demo.example,*.demo.example")
    settings = Settings(_env_file=None)
    assert (settings.max_n, settings.device) == (8, "cpu")
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.allowed_hosts == ["demo.example", "*.demo.example"]
    env_file = tmp_path / "server.env"
    env_file.write_text("DDPM_PORT=9100\nDDPM_MAX_JOBS=3\n")
    from_file = Settings(_env_file=env_file)
    assert (from_file.port, from_file.max_jobs) == (9100, 3)


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("DDPM_PORT", "9000")
    monkeypatch.setenv("DDPM_HOST", "0.0.0.0")
    flags = ["--port", "9001", "--checkpoints", "ckpts", "--device", "cpu", "--threads", "1", "--max-jobs", "2"]
    settings = settings_from_args(parse_args(flags))
    assert (settings.port, settings.host, str(settings.checkpoint_dir), settings.device) == (
        9001,
        "0.0.0.0",
        "ckpts",
        "cpu",
    )
    assert (settings.torch_threads, settings.max_jobs) == (1, 2)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        Settings(_env_file=None, device="gpu")
    with pytest.raises(ValueError):
        Settings(_env_file=None, max_n=0)


def test_the_device_is_cuda_when_there_is_one_and_asking_for_a_missing_one_fails():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_the_announced_address_can_be_opened():
    assert browsable_host("0.0.0.0") == "127.0.0.1"
    assert browsable_host("::") == "[::1]"
    assert browsable_host("127.0.0.1") == "127.0.0.1"


# --- hardening: headers, methods, Host, the schema, the docs, one failure table (issue 19) --------


def test_security_headers_on_every_answer(client):
    for response in (
        client.get("/models"),
        client.post("/sample", json={"n": 0}),
        client.get("/nope"),
        client.get("/openapi.json"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "default-src 'self'" in response.headers["content-security-policy"]


def test_readyz_does_not_show_paths(tmp_path):
    with serve(tmp_path) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and str(tmp_path) not in response.text


def test_options_and_wrong_methods_name_the_routes_own_methods(client):
    options = client.options("/sample")
    assert options.status_code == 204 and options.headers["allow"] == "OPTIONS, POST"
    wrong = client.get("/sample")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "OPTIONS, POST"
    assert client.post("/models").headers["allow"] == "GET, OPTIONS"
    # every router's routes, /config's too (it answered OPTIONS with 405 and was counted as "other")
    assert client.options("/config").status_code == 204 and client.post("/config").headers["allow"] == "GET, OPTIONS"


def test_cors_preflight_still_works(checkpoints):
    with serve(checkpoints, cors_origins=["https://a.example"]) as client:
        preflight = client.options(
            "/sample", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://a.example"


def test_a_body_over_the_limit_counts_under_its_route(client):
    client.post("/sample", content=b"x" * 20_000, headers={"Content-Type": "application/json"})
    metrics = client.get("/metrics").text
    assert 'ddpm_http_requests_total{method="POST",route="/sample",status="422"}' in metrics
    assert 'route="other",status="422"' not in metrics


def test_a_body_that_is_not_json_is_422(client):
    response = client.post("/sample", content=b'{"n": 1}', headers={"Content-Type": "text/plain"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "content_type"


def test_the_openapi_schema_has_the_servers_limits(checkpoints):
    with serve(checkpoints, max_n=8, max_steps=30, max_guidance=5.0) as client:
        schema = client.get("/openapi.json").json()
    variants = schema["components"]["schemas"]["SampleRequest"]["anyOf"]
    # one variant a sampler (and one naming none), each with that sampler's parameters only
    assert [v["properties"]["sampler"].get("const") for v in variants] == [None, *SAMPLERS]
    assert all(v["additionalProperties"] is False for v in variants)
    assert set(variants[2]["properties"]) - set(variants[0]["properties"]) == {p.name for p in SAMPLERS["ddim"].params}
    fields = variants[0]["properties"]
    assert fields["n"]["maximum"] == 8
    assert fields["steps"]["anyOf"][0]["maximum"] == 30
    assert fields["guidance"]["anyOf"][0]["maximum"] == 5.0
    assert fields["label"]["anyOf"][0]["maximum"] == 2  # cond has 3 classes
    assert fields["model"]["anyOf"][0]["enum"] == ["cond", "uncond"]
    body = schema["paths"]["/sample"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SampleRequest"}


def test_the_docs_work_offline(client):
    for page, script in (("/docs", "docs-assets/swagger-ui-bundle.js"), ("/redoc", "docs-assets/redoc.standalone.js")):
        response = client.get(page)
        assert response.status_code == 200 and f'src="{script}"' in response.text
        assert "http://" not in response.text and "https://" not in response.text  # no CDN, no web fonts
        assert client.get("/" + script).status_code == 200
    csp = client.get("/docs").headers["content-security-policy"]
    inline = re.search(r"<script>(.*?)</script>", client.get("/docs").text, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "'unsafe-inline'" not in csp.split("style-src")[0]


def test_only_loopback_names_by_default_when_bound_to_loopback(checkpoints):
    settings = Settings(_env_file=None, checkpoint_dir=checkpoints, web_dir=None, host="127.0.0.1")
    with TestClient(create_app(settings), base_url="http://evil.example") as foreign:
        assert foreign.get("/models").status_code == 400
        with pytest.raises(WebSocketDisconnect), foreign.websocket_connect("/ws/sample"):
            pass
    for name in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        with TestClient(create_app(settings), base_url=f"http://{name}") as local:
            assert local.get("/models").status_code == 200
    anywhere = Settings(_env_file=None, checkpoint_dir=checkpoints, web_dir=None, host="0.0.0.0")
    with TestClient(create_app(anywhere), base_url="http://demo.example") as client:
        assert client.get("/healthz").status_code == 200


def test_an_unexpected_exception_in_a_ws_session_is_an_error_and_1011(client, monkeypatch):
    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr("server.ws.resolve", broken)
    errors_before = client.app.state.server.metrics.value("ddpm_ws_sessions_total", outcome="error")
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_json({"n": 1})
        message = ws.receive_json()
        expect_close(ws, 1011)
    assert message["type"] == "error" and "a bug" not in message["detail"]
    assert client.app.state.server.metrics.value("ddpm_ws_sessions_total", outcome="error") == errors_before + 1


def test_the_failure_table_gives_each_kind_one_status_and_one_close_code():
    from server.errors import FAILURES

    table = {kind: (failure.status, failure.close_code) for kind, failure in FAILURES.items()}
    assert table == {
        "invalid": (422, 1008),
        "busy": (503, 1013),
        "client_limit": (429, 1008),
        "shutdown": (503, 1001),
        "timeout": (504, 1011),
        "error": (500, 1011),
    }


def test_error_details_always_encode():
    from server.errors import safe_errors

    surrogate = "\ud800"
    nans = [float("nan")] * 99
    weird = [{"type": surrogate, "loc": ["body", surrogate, 3], "msg": object(), "input": {surrogate: nans}}]
    text = json.dumps(safe_errors(weird), allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert b"\\ud800" in text
    assert safe_errors(None) == [{"type": "invalid", "loc": [], "msg": "invalid request"}]


def test_an_integral_number_is_an_integer_however_it_is_written(client):
    """As in JSON Schema, whose "integer" the OpenAPI schema says: 2.0 and 2e0 are the integer 2."""
    body = client.post("/sample", json={"model": "cond", "n": 2.0, "steps": 2e0, "seed": 5.0, "label": 1.0}).json()
    assert (len(body["images"]), body["steps"], body["seed"], body["label"]) == (2, 2, 5, 1)
    assert (
        client.post("/sample", json={"model": "cond", "sampler": "ddim", "eta": 1, "steps": 2, "n": 1}).json()[
            "params"
        ]["eta"]
        == 1.0
    )


def test_host_names_and_patterns():
    from server.middleware import host_allowed, host_name

    assert [host_name(h) for h in ("[::1]:8000", "LocalHost:80", "a.example", "::1")] == [
        "::1",
        "localhost",
        "a.example",
        "::1",
    ]
    allowed = ["demo.example", "*.demo.example"]
    assert host_allowed("demo.example:8000", allowed) and host_allowed("a.b.demo.example", allowed)
    assert not host_allowed("evildemo.example", allowed) and not host_allowed(None, allowed)
    assert host_allowed("anything", ["*"])


@pytest.mark.parametrize("n", [1, 2, 3, 10, 16])
@pytest.mark.parametrize("channels", [1, 3])
def test_pngs_hold_the_pixels_and_grid_of_torchvision(n, channels):
    """The encoder works in NumPy (no torch op per image): its pixels and grid are those of torchvision's
    make_grid and a torch round trip, values out of range and exact halves of a grey level included."""
    x = torch.randn(n, channels, 8, 6) * 1.5
    levels = (torch.arange(256) / 127.5 - 1 + 1 / 255)[: x.numel()]  # grey levels, each exactly between two
    x.view(-1)[: len(levels)] = levels

    def as_bytes(unit: torch.Tensor) -> torch.Tensor:  # (C, H, W) in [0, 1] → (H, W, C), as torch rounds
        return (unit * 255).round().to(torch.uint8).permute(1, 2, 0)

    def read(text: str) -> torch.Tensor:
        array = np.array(Image.open(io.BytesIO(base64.b64decode(text))))
        return torch.from_numpy(array.reshape(*array.shape[:2], -1))

    grid, pngs = images.grid_and_images_b64(x)
    unit = to_unit(x)
    assert torch.equal(read(grid), as_bytes(make_grid(unit, nrow=images.grid_nrow(n), padding=2)[:channels]))
    assert all(torch.equal(read(png), as_bytes(image)) for png, image in zip(pngs, unit, strict=True))
