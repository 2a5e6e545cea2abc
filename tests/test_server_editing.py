"""Issue #18 over REST and the WebSocket: SDEdit (init_image, strength), inpainting (mask), branches
(branch) and seed interpolation (interpolate_to), and the 422s for what they refuse. A tiny 1×8×8
model of T = 50, so that every run takes milliseconds."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
import torch
from PIL import Image
from starlette.websockets import WebSocketDisconnect
from test_server import png_image, read_to_end, serve, write_checkpoint

from model.samplers import SAMPLERS
from model.schedule import NoiseSchedule

SIZE = 8


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    write_checkpoint(folder / "cond.safetensors", channels=1, num_classes=3, timesteps=50, class_names="abc")
    write_checkpoint(folder / "rgb.safetensors", channels=3, num_classes=0, timesteps=50)
    with serve(folder, ws_frame_buffer=10_000, max_init_image_bytes=4096) as client:
        yield client


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def picture(mode: str = "L", size: int = SIZE) -> Image.Image:
    """A diagonal ramp, so that every pixel differs from its neighbours."""
    values = [(x * 29 + y * 11) % 256 for y in range(size) for x in range(size)]
    grey = Image.new("L", (size, size))
    grey.putdata(values)
    return grey.convert(mode)


def half_mask() -> Image.Image:
    """The right half repainted (255), the left half kept (0)."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (SIZE // 2, 0, SIZE, SIZE))
    return mask


def post(client, body: dict):
    return client.post("/sample", json=body)


def sample(client, body: dict) -> dict:
    response = post(client, body)
    assert response.status_code == 200, response.text
    return response.json()


def grey(data: str) -> torch.Tensor:
    return torch.tensor(list(png_image(data).convert("L").tobytes()), dtype=torch.float32).view(SIZE, SIZE)


BASE = {"model": "cond", "sampler": "ddim", "steps": 10, "n": 2, "seed": 5, "label": 1}


# --- SDEdit: init_image and strength ------------------------------------------------------------


def test_strength_1_is_the_plain_run_of_the_same_seed(client):
    plain = sample(client, BASE)
    forgotten = sample(client, {**BASE, "init_image": png_b64(picture()), "strength": 1})
    assert forgotten["images"] == plain["images"]


def test_small_strength_stays_close_to_the_image_and_every_image_starts_from_it(client):
    init = grey(png_b64(picture()))

    def distance(strength):
        body = sample(client, {**BASE, "init_image": png_b64(picture()), "strength": strength})
        return [float((grey(image) - init).abs().mean()) for image in body["images"]]

    near, far = distance(0.1), distance(1.0)
    assert max(near) < 12 < min(far)  # grey levels: one step at the end of the grid barely changes it
    assert distance(0.1) == near  # the same seed, the same images


def test_a_data_url_is_accepted_and_any_png_mode_is_converted(client):
    image = picture()
    plain = sample(client, {**BASE, "init_image": png_b64(image), "strength": 0.5})
    as_url = sample(client, {**BASE, "init_image": "data:image/png;base64," + png_b64(image), "strength": 0.5})
    as_rgb = sample(client, {**BASE, "init_image": png_b64(image.convert("RGB")), "strength": 0.5})
    as_palette = sample(client, {**BASE, "init_image": png_b64(image.convert("P")), "strength": 0.5})
    assert plain["images"] == as_url["images"] == as_rgb["images"]
    assert len(as_palette["images"]) == 2


# --- inpainting: mask ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [{"sampler": "ddim"}, {"sampler": "ddpm", "steps": 20}, {"sampler": "unipc"}])
def test_the_unmasked_pixels_keep_the_image_and_the_masked_are_repainted(client, sampler):
    init = grey(png_b64(picture()))
    body = sample(client, {**BASE, **sampler, "init_image": png_b64(picture()), "mask": png_b64(half_mask())})
    for image in body["images"]:
        out = grey(image)
        assert (out[:, : SIZE // 2] - init[:, : SIZE // 2]).abs().max() <= 1
        assert (out[:, SIZE // 2 :] - init[:, SIZE // 2 :]).abs().max() > 10


def test_transparency_is_composited_on_black(tmp_path_factory, client):
    """A fully transparent init image is black: its kept half comes out black, in every channel."""
    clear = Image.new("RGBA", (SIZE, SIZE), (200, 100, 50, 0))
    body = sample(client, {"model": "rgb", "sampler": "ddim", "steps": 5, "n": 1, "seed": 1,
                           "init_image": png_b64(clear), "mask": png_b64(half_mask().convert("RGBA"))})  # fmt: skip
    out = png_image(body["images"][0]).convert("RGB")
    assert all(out.getpixel((x, y)) == (0, 0, 0) for x in range(SIZE // 2) for y in range(SIZE))


# --- interpolate_to ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [{"sampler": "ddim"}, {"sampler": "dpm-solver++"}])
def test_an_interpolation_ends_at_each_seeds_own_image(client, sampler):
    one = {**BASE, **sampler, "n": 1}
    row = sample(client, {**one, "n": 4, "seed": 5, "interpolate_to": 9})["images"]
    assert row[0] == sample(client, {**one, "seed": 5})["images"][0]
    assert row[-1] == sample(client, {**one, "seed": 9})["images"][0]
    assert len(set(row)) == 4


# --- branch -------------------------------------------------------------------------------------

ORIGINALS = {
    "ddpm": {**BASE, "sampler": "ddpm", "steps": 12, "guidance": 2.0},
    "ddim-eta": {**BASE, "eta": 0.7},
    "unipc": {**BASE, "sampler": "unipc", "order": 3},
    "inpainting": {**BASE, "sampler": "dpm-solver++", "init_image": png_b64(picture()), "mask": png_b64(half_mask())},
    "sdedit": {**BASE, "sampler": "ddpm", "steps": 12, "init_image": png_b64(picture()), "strength": 0.6},
}


@pytest.mark.parametrize("name", list(ORIGINALS))
def test_an_unchanged_branch_is_the_original_run(client, name):
    original = ORIGINALS[name]
    final = sample(client, original)["images"]
    assert sample(client, {**original, "branch": {"from": original, "at_step": 3}})["images"] == final
    settings = {k: v for k, v in original.items() if k not in ("model", "n", "seed", "init_image", "mask", "strength")}
    assert sample(client, {**settings, "branch": {"from": original, "at_step": 0}})["images"] == final
    as_streamed = {**original, "every": 3, "preview_size": 8}  # the WebSocket's request, as the page keeps it
    assert sample(client, {**settings, "branch": {"from": as_streamed, "at_step": 2}})["images"] == final


def test_a_branch_with_another_label_changes_only_what_follows(client):
    original = ORIGINALS["ddim-eta"]
    final = sample(client, original)["images"]
    relabelled = sample(client, {**original, "label": 2, "branch": {"from": original, "at_step": 5}})["images"]
    at_the_end = sample(client, {**original, "label": 2, "branch": {"from": original, "at_step": 10}})["images"]
    assert relabelled != final and at_the_end == final


def stream(client, request: dict) -> list[dict]:
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_text(json.dumps(request))
        return read_to_end(ws)


def test_a_branch_streams_on_from_its_step_on_the_new_grid(client):
    original = {**BASE, "sampler": "ddim", "steps": 10}
    frames = [m for m in stream(client, original) if m["type"] == "frame"]
    t_k = frames[3]["t"]  # after step 4
    branch = {"sampler": "unipc", "steps": 20, "label": 0, "branch": {"from": original, "at_step": 4}}
    messages = stream(client, branch)
    start, done = messages[0], messages[-1]
    grid = [t for t in SAMPLERS["unipc"].timesteps(NoiseSchedule.from_name("linear", 50), 20, {}) if t < t_k]
    steps = [m for m in messages if m["type"] == "frame"]
    assert start["type"] == "start" and start["total"] == 4 + len(grid) + 1 and start["seed"] == 5
    assert [m["step"] for m in steps] == list(range(5, start["total"] + 1))
    assert [m["t"] for m in steps] == [*grid, -1]
    assert done["type"] == "done" and done["images"] == sample(client, branch)["images"]


def test_a_branch_of_a_branch_replays_both(client):
    original = ORIGINALS["ddim-eta"]
    first = {"sampler": "ddpm", "steps": 12, "branch": {"from": original, "at_step": 2}}
    second = {"sampler": "ddpm", "steps": 12, "label": 0, "branch": {"from": first, "at_step": 2}}
    assert (
        sample(client, {**first, "branch": {"from": first, "at_step": 6}})["images"] == sample(client, first)["images"]
    )
    assert (
        sample(client, second)["images"]
        == sample(client, {**second, "branch": {"from": original, "at_step": 2}})["images"]
    )


# --- what is refused: 422 over REST, an error and 1008 over the WebSocket ---------------------------


def raw_png(width: int, height: int) -> str:
    """A PNG whose header says width × height, with one empty IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return base64.b64encode(data).decode()


def big_png() -> str:
    image = picture()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_text(5000))
    return base64.b64encode(buffer.getvalue()).decode()


def _text(size: int):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("padding", "x" * size)
    return info


IMAGE = png_b64(picture())
BAD = {
    "init_image not base64": ({"init_image": "not base64!"}, "init_image", "not base64"),
    "init_image not a PNG": ({"init_image": base64.b64encode(b"GIF89a....").decode()}, "init_image", "not a PNG"),
    "init_image too large": ({"init_image": big_png()}, "init_image", "larger than 4096 bytes"),
    "init_image wrong size": (
        {"init_image": png_b64(picture(size=30))}, "init_image", "must be 8×8 for model cond, not 30×30"
    ),
    "init_image bomb": ({"init_image": raw_png(100_000, 100_000)}, "init_image", "not 100000×100000"),
    "init_image broken": ({"init_image": raw_png(SIZE, SIZE)}, "init_image", "pixel data"),
    "init_image a number": ({"init_image": 3}, "init_image", "string"),
    "mask without init_image": ({"mask": png_b64(half_mask())}, "mask", "needs init_image"),
    "mask wrong size": ({"init_image": IMAGE, "mask": png_b64(picture(size=4))}, "mask", "must be 8×8"),
    "mask not a PNG": ({"init_image": IMAGE, "mask": "AAAA"}, "mask", "not a PNG"),
    "strength without init_image": ({"strength": 0.5}, "strength", "needs init_image"),
    "strength 0": ({"init_image": IMAGE, "strength": 0}, "strength", "greater than 0"),
    "strength over 1": ({"init_image": IMAGE, "strength": 1.5}, "strength", "less than or equal to 1"),
    "strength a string": ({"init_image": IMAGE, "strength": "0.5"}, "strength", "number"),
    "interpolate_to with ddpm": ({"sampler": "ddpm", "interpolate_to": 3}, "interpolate_to", "deterministic sampler"),
    "interpolate_to with ddim eta": ({"eta": 0.5, "interpolate_to": 3}, "interpolate_to", "eta > 0"),
    "interpolate_to with n 1": ({"n": 1, "interpolate_to": 3}, "n", "at least 2"),
    "interpolate_to negative": ({"interpolate_to": -1}, "interpolate_to", "greater than or equal to 0"),
    "branch bad from": ({"branch": {"from": {**BASE, "n": "x"}, "at_step": 1}}, "n", "integer"),
    "branch from without seed": ({"branch": {"from": {"model": "cond"}, "at_step": 1}}, "seed", "needs its seed"),
    "branch past the end": ({"branch": {"from": BASE, "at_step": 11}}, "at_step", "0 … 10"),
    "branch negative step": ({"branch": {"from": BASE, "at_step": -1}}, "at_step", "greater than or equal to 0"),
    "branch other n": ({"n": 3, "branch": {"from": BASE, "at_step": 1}}, "n", "starts from branch.from's n"),
    "branch other image": ({"init_image": IMAGE, "branch": {"from": BASE, "at_step": 1}}, "init_image", "starts from"),
    "branch unknown field": ({"branch": {"from": BASE, "at_step": 1, "x": 1}}, "x", "Extra inputs"),
    "branch without at_step": ({"branch": {"from": BASE}}, "at_step", "required"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_editing_requests_are_422_naming_the_field(client, case):
    fields, field, words = BAD[case]
    response = post(client, {**BASE, **fields})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"][-1] == field and words in error["msg"] for error in detail), detail
    if case.startswith("branch bad"):
        assert detail[0]["loc"] == ["body", "branch", "from", "n"]
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_text(json.dumps({**BASE, **fields}))
        message = ws.receive_json()
        assert message["type"] == "error" and message["kind"] == "invalid"
        assert any(error["loc"][-1] == field for error in message["detail"])
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008


def test_the_images_do_not_count_against_the_body_limit_but_the_rest_does(client):
    assert post(client, {**BASE, "init_image": IMAGE, "mask": png_b64(half_mask())}).status_code == 200
    response = post(client, {**BASE, "init_image": IMAGE, "model": "x" * 20_000})
    assert response.status_code == 422 and "larger than 16384 bytes" in response.text


def test_config_publishes_the_image_limit_and_models_their_time_per_row(client):
    assert client.get("/config").json()["limits"]["max_init_image_bytes"] == 4096
    assert all(0 < model["seconds_per_row"] < 10 for model in client.get("/models").json())
    sample(client, BASE)
    assert client.get("/config").json()["load"]["iteration_s"] > 0


JUNK = [
    {"init_image": []}, {"init_image": {"a": 1}}, {"init_image": True}, {"init_image": ""},
    {"init_image": "data:image/png;base64,"},
    {"mask": 1, "init_image": IMAGE}, {"strength": None, "init_image": IMAGE}, {"strength": True, "init_image": IMAGE},
    {"branch": "x"}, {"branch": []}, {"branch": {"from": "x", "at_step": 0}}, {"branch": {"from": {}, "at_step": "1"}},
    {"branch": {"from": {"seed": 1, "branch": {"from": {"seed": 2}, "at_step": 99}}, "at_step": 0}},
    {"branch": {"from": {**BASE, "model": "nope"}, "at_step": 0}},
    {"branch": {"from": BASE, "at_step": 1}, "model": "rgb"},
    {"interpolate_to": 1.5}, {"interpolate_to": "3"}, {"interpolate_to": 2**60}, {"interpolate_to": None, "n": 1},
]  # fmt: skip


@pytest.mark.parametrize("fields", JUNK, ids=range(len(JUNK)))
def test_junk_in_the_new_fields_is_a_4xx_never_a_500(client, fields):
    response = post(client, {**BASE, **fields})
    assert response.status_code in (200, 422), response.text
    assert response.status_code == 200 or response.json()["detail"]


def test_an_sdedit_stream_takes_the_last_steps_of_the_grid(client):
    messages = stream(client, {**BASE, "init_image": IMAGE, "strength": 0.3})
    frames = [m for m in messages if m["type"] == "frame"]
    grid = SAMPLERS["ddim"].timesteps(NoiseSchedule.from_name("linear", 50), 10, {"spacing": "leading"})
    assert (messages[0]["total"], messages[0]["at_step"], messages[0]["steps"]) == (3, 0, 10)
    assert [(m["step"], m["t"]) for m in frames] == [(1, grid[-2]), (2, grid[-1]), (3, -1)]


def test_an_interpolation_combines_with_sdedit_and_inpainting(client):
    edit = {**BASE, "init_image": IMAGE, "strength": 0.6, "mask": png_b64(half_mask())}
    row = sample(client, {**edit, "n": 3, "interpolate_to": 9})["images"]
    assert row[0] == sample(client, {**edit, "n": 1})["images"][0]
    assert row[-1] == sample(client, {**edit, "n": 1, "seed": 9})["images"][0]
