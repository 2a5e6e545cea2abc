"""diffusers' DDPM models served beside the project's checkpoints: the scheduler config mapped onto
NoiseSchedule, the UNet2DModel behind the UNet's interface, and the server's images against
diffusers' own DDIMPipeline and DDPMPipeline (the oracle) from the same seed.

The models are tiny random UNet2DModels written with save_pretrained into a temporary checkpoints
folder, so everything runs offline on the CPU in seconds.
"""

from __future__ import annotations

import base64
import io
import shutil
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, PNDMScheduler, UNet2DModel
from PIL import Image
from test_evaluate import small_features
from test_server import serve

from conftest import server_unet
from model import visualize
from model.checkpoint import CheckpointError, save_checkpoint
from model.diffusers_models import (
    DiffusersUNet,
    eps_from_prediction,
    load_diffusers_model,
    schedule_from_config,
    scheduler_defaults,
)
from model.evaluate import conditioning, evaluate, parse_args
from model.formats import load_model
from model.samplers import ddim_timesteps
from model.schedule import NoiseSchedule
from server.registry import ModelRegistry

SEED = 5


def tiny_unet2d(size: int = 32, num_class_embeds: int | None = None, out_channels: int = 3, seed: int = 0):
    """A random UNet2DModel of a few thousand parameters; at 256 px without attention, which would
    be quadratic in 128 × 128 pixels."""
    torch.manual_seed(seed)
    small = size <= 64
    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=out_channels,
        block_out_channels=(8, 16) if small else (2, 2),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D") if small else ("DownBlock2D", "DownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D") if small else ("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4 if small else 1,
        attention_head_dim=8,
        add_attention=small,
        num_class_embeds=num_class_embeds,
    ).eval()


DDIM_MODELS = {  # name: (prediction_type, clip_sample)
    f"ddim-{prediction}-{'clip' if clip else 'noclip'}": (prediction, clip)
    for prediction in ("epsilon", "v_prediction")
    for clip in (True, False)
}
DDPM_MODELS = {"ddpm-small-clip": ("fixed_small", True), "ddpm-large-noclip": ("fixed_large", False)}
BROKEN = {  # folder: what its log line must name
    "corrupt": "cannot load the UNet2DModel",
    "thresholding": "thresholding=True",
    "linspace": "timestep_spacing='linspace'",
    "pickle-only": "safetensors only",
    "learned-variance": "out_channels 6",
    "pndm": "'PNDMScheduler'",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A checkpoints folder: diffusers pipelines (ε and v prediction, clipped or not, DDIM and DDPM
    configs), a bare class-conditional UNet2DModel with its scheduler config, a 256 px model, one of
    the project's checkpoints, and diffusers folders that cannot be served."""
    folder = tmp_path_factory.mktemp("checkpoints")
    unet = tiny_unet2d()
    for name, (prediction, clip) in DDIM_MODELS.items():
        scheduler = DDIMScheduler(num_train_timesteps=100, prediction_type=prediction, clip_sample=clip)
        DDIMPipeline(unet, scheduler).save_pretrained(folder / name)
    for name, (variance, clip) in DDPM_MODELS.items():
        scheduler = DDPMScheduler(num_train_timesteps=20, variance_type=variance, clip_sample=clip)
        DDPMPipeline(unet, scheduler).save_pretrained(folder / name)
    tiny_unet2d(num_class_embeds=3, seed=1).save_pretrained(folder / "classes")  # the bare layout
    DDIMScheduler(num_train_timesteps=100).save_pretrained(folder / "classes")
    DDIMPipeline(tiny_unet2d(size=256), DDIMScheduler(num_train_timesteps=10)).save_pretrained(folder / "big")
    save_checkpoint(folder / "toy.safetensors", server_unet(1, 0, seed=0), NoiseSchedule.from_name("linear", 100), "t")

    DDIMPipeline(unet, DDIMScheduler()).save_pretrained(folder / "corrupt")
    weights = folder / "corrupt" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    DDPMPipeline(unet, DDPMScheduler(thresholding=True)).save_pretrained(folder / "thresholding")
    DDIMPipeline(unet, DDIMScheduler(timestep_spacing="linspace")).save_pretrained(folder / "linspace")
    DDPMPipeline(unet, DDPMScheduler()).save_pretrained(folder / "pickle-only", safe_serialization=False)
    tiny_unet2d(out_channels=6).save_pretrained(folder / "learned-variance")
    DDPMScheduler().save_pretrained(folder / "learned-variance")
    DDIMPipeline(unet, DDIMScheduler()).save_pretrained(folder / "pndm")
    PNDMScheduler().save_pretrained(folder / "pndm" / "scheduler")
    unet.save_config(folder / ".ddpm-cifar10-32.x1y2.partial")  # a download in progress: not looked at
    return folder


@pytest.fixture(scope="module")
def client(folder):
    with serve(folder, ws_frame_buffer=1000) as client:
        yield client


def pixels(client, request: dict) -> np.ndarray:
    """The images of POST /sample as uint8 (N, H, W, C)."""
    response = client.post("/sample", json=request)
    assert response.status_code == 200, response.text
    return np.stack([np.asarray(png(data)) for data in response.json()["images"]])


def png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    return image


def quantised(images: np.ndarray) -> np.ndarray:
    """A diffusers pipeline's float images in [0, 1] as the uint8 a PNG holds (numpy_to_pil's rounding)."""
    return (images * 255).round().astype(np.uint8)


def assert_same_images(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Within 1/255 after PNG quantisation: float rounding may tip a pixel to the next level, no more."""
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


# --- the scheduler config → NoiseSchedule ------------------------------------------------------------


def mapped(scheduler) -> tuple[NoiseSchedule, str]:
    name = type(scheduler).__name__
    config = {**scheduler.config, "_class_name": name}
    return schedule_from_config(config, "scheduler_config.json", scheduler_defaults(name))


@pytest.mark.parametrize(
    "options",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.03, "num_train_timesteps": 200},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "sigmoid", "num_train_timesteps": 300},
        {"trained_betas": np.linspace(1e-3, 0.05, 50).tolist(), "num_train_timesteps": 50},
    ],
)
def test_schedule_has_diffusers_alphas_cumprod(options):
    scheduler = DDPMScheduler(**options)
    schedule, _ = mapped(scheduler)
    assert schedule.num_timesteps == scheduler.config.num_train_timesteps
    assert torch.allclose(schedule.alphas_cumprod, scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_ddpm_papers_schedule_is_the_projects_linear_one():
    schedule, prediction = mapped(DDPMScheduler())
    assert schedule.name == "linear" and prediction == "epsilon"
    assert torch.equal(schedule.betas, NoiseSchedule.from_name("linear").betas)
    assert mapped(DDPMScheduler(beta_schedule="squaredcos_cap_v2"))[0].name == "cosine"


def test_sampling_options_are_the_configs():
    schedule, prediction = mapped(
        DDPMScheduler(
            clip_sample=False, clip_sample_range=2.5, variance_type="fixed_large", prediction_type="v_prediction"
        )
    )
    own = schedule.sampling
    assert (own.clip, own.clip_range, own.variance, prediction) == (False, 2.5, "fixed_large", "v_prediction")
    # a DDIMScheduler has no variance_type: a DDPMScheduler made from its config gets fixed_small
    assert mapped(DDIMScheduler())[0].sampling.variance == "fixed_small"
    assert mapped(DDPMScheduler(variance_type="fixed_small_log"))[0].sampling.variance == "fixed_small"
    # respacing (DDPM on fewer steps) keeps them
    assert schedule.respace([0, 5, 10]).sampling == own


@pytest.mark.parametrize(("spacing", "offset", "steps"), [("leading", 0, 50), ("leading", 1, 50), ("trailing", 0, 20)])
def test_ddim_timesteps_are_the_schedulers(spacing, offset, steps):
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    own = mapped(scheduler)[0].sampling
    scheduler.set_timesteps(steps)
    assert ddim_timesteps(1000, steps, own.spacing, own.steps_offset) == scheduler.timesteps.tolist()


def test_old_configs_keys_are_ignored_as_diffusers_ignores_them():
    """google/ddpm-* configs were written by diffusers 0.1–0.4: keys since dropped, others missing."""
    config = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.1.1",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": True,
        "num_train_timesteps": 1000,
        "timestep_values": None,
        "trained_betas": None,
        "variance_type": "fixed_small",
    }
    schedule, prediction = schedule_from_config(config, "x", scheduler_defaults("DDPMScheduler"))
    assert (schedule.name, schedule.sampling.clip, schedule.sampling.variance, prediction) == (
        "linear",
        True,
        "fixed_small",
        "epsilon",
    )


@pytest.mark.parametrize(
    ("scheduler", "named"),
    [
        (DDPMScheduler(thresholding=True), "thresholding=True"),
        (DDPMScheduler(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True"),
        (DDPMScheduler(variance_type="learned_range"), "variance_type='learned_range'"),
        (DDPMScheduler(timestep_spacing="linspace"), "timestep_spacing='linspace'"),
        (DDIMScheduler(set_alpha_to_one=False), "set_alpha_to_one=False"),
        (PNDMScheduler(), "'PNDMScheduler'"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(scheduler, named):
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(")):
        mapped(scheduler)


def test_v_and_x0_predictions_become_eps():
    schedule = NoiseSchedule.from_name("linear", 1000)
    x0, eps = torch.rand(6, 3, 4, 4) * 2 - 1, torch.randn(6, 3, 4, 4)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    x_t = schedule.q_sample(x0, t, eps)
    abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(eps_from_prediction("v_prediction", v, x_t, t, schedule), eps, atol=1e-4)
    assert torch.allclose(eps_from_prediction("sample", x0, x_t, t, schedule), eps, atol=1e-3)
    assert eps_from_prediction("epsilon", eps, x_t, t, schedule) is eps


# --- the noise predictor's interface ---------------------------------------------------------------


def test_a_pipeline_folder_loads_behind_the_unets_interface(folder):
    checkpoint = load_diffusers_model(folder / "ddim-v_prediction-clip")
    model = checkpoint.unet
    assert isinstance(model, DiffusersUNet) and not model.training
    assert (model.config.in_channels, model.config.image_size, model.config.num_classes) == (3, 32, 0)
    assert checkpoint.config is model.config and model.null_label is None
    assert checkpoint.schedule.sampling.clip is True and checkpoint.schedule.num_timesteps == 100
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([99, 3])
    with torch.no_grad():
        v = UNet2DModel.from_pretrained(folder / "ddim-v_prediction-clip" / "unet")(x, t).sample
        expected = eps_from_prediction("v_prediction", v, x, t, checkpoint.schedule)
        assert torch.allclose(model(x, t), expected, atol=1e-5)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, t, torch.tensor([0, 1]))


def test_the_papers_models_are_known_by_their_folder_name(folder, tmp_path):
    shutil.copytree(folder / "ddpm-small-clip", tmp_path / "ddpm-cifar10-32")
    assert load_diffusers_model(tmp_path / "ddpm-cifar10-32").dataset == "cifar10"  # for the evaluation's FID
    assert load_diffusers_model(folder / "ddpm-small-clip").dataset == "diffusers"


# --- the server against diffusers' pipelines ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(DDIM_MODELS))
def test_server_ddim_gives_diffusers_ddim_pipelines_images(client, folder, name):
    """Same seed, so the same x_T (both draw it with torch.randn from a generator seeded with it).
    use_clipped_model_output=True: with clip_sample, ε is re-derived from the clipped x0, as this
    project's DDIM does (diffusers' default keeps the network's ε)."""
    ours = pixels(client, {"model": name, "sampler": "ddim", "steps": 10, "eta": 0.0, "n": 4, "seed": SEED})
    pipeline = DDIMPipeline.from_pretrained(folder / name)
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        batch_size=4,
        generator=torch.Generator().manual_seed(SEED),
        num_inference_steps=10,
        eta=0.0,
        use_clipped_model_output=True,
        output_type="np",
    ).images
    assert_same_images(ours, quantised(theirs))


def test_clip_sample_is_honoured(client):
    """The parity above covers both settings only if clipping changes these images."""
    request = {"sampler": "ddim", "steps": 10, "n": 4, "seed": SEED}
    clipped = pixels(client, {**request, "model": "ddim-epsilon-clip"})
    unclipped = pixels(client, {**request, "model": "ddim-epsilon-noclip"})
    assert np.abs(clipped.astype(int) - unclipped.astype(int)).max() > 10


@pytest.mark.parametrize("name", sorted(DDPM_MODELS))
def test_server_ddpm_gives_diffusers_ddpm_pipelines_images(client, folder, name):
    """All T steps, each drawing its noise from the run's generator in the same order as diffusers."""
    ours = pixels(client, {"model": name, "sampler": "ddpm", "n": 4, "seed": SEED})
    pipeline = DDPMPipeline.from_pretrained(folder / name)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(SEED)
    theirs = pipeline(batch_size=4, generator=generator, num_inference_steps=20, output_type="np").images
    assert_same_images(ours, quantised(theirs))


def class_conditional_ddim(folder, label: int, n: int, steps: int) -> np.ndarray:
    """What a diffusers user writes for a class-conditional UNet2DModel (no pipeline takes labels)."""
    unet = UNet2DModel.from_pretrained(folder / "classes")
    scheduler = DDIMScheduler.from_pretrained(folder / "classes")
    scheduler.set_timesteps(steps)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(SEED))
    labels = torch.full((n,), label)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(x, t, class_labels=labels).sample
            x = scheduler.step(eps, t, x, use_clipped_model_output=True).prev_sample
    return quantised((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())


def test_class_conditional_model_answers_with_the_asked_class(client, folder):
    info = {model["name"]: model for model in client.get("/models").json()}["classes"]
    assert (info["num_classes"], info["guidance"], info["channels"], info["image_size"]) == (3, False, 3, 32)
    request = {"model": "classes", "sampler": "ddim", "steps": 10, "n": 3, "seed": SEED}
    by_label = {label: pixels(client, {**request, "label": label}) for label in range(3)}
    for label in (0, 2):
        assert_same_images(by_label[label], class_conditional_ddim(folder, label, 3, 10))
    assert np.abs(by_label[0].astype(int) - by_label[2].astype(int)).max() > 10

    # no label: each image is sampled with a class of its own (the model has no unconditional one)
    anyclass = pixels(client, request)
    for i in range(3):
        assert any(np.abs(anyclass[i].astype(int) - by_label[c][i].astype(int)).max() <= 1 for c in range(3)), i
    # and no classifier-free guidance
    response = client.post("/sample", json={**request, "label": 1, "guidance": 3.0})
    assert response.status_code == 422 and "no unconditional class" in response.text
    assert client.post("/sample", json={**request, "label": 1, "guidance": 1.0}).status_code == 200


def test_unservable_folders_are_skipped_with_a_reason_and_the_rest_serves(folder, caplog):
    with caplog.at_level("WARNING", logger="server.registry"), serve(folder) as client:
        ready = client.get("/readyz").json()["models"]
        assert client.post("/sample", json={"model": "toy", "n": 1, "steps": 2}).status_code == 200
    assert ready == sorted(["big", "classes", "toy", *DDIM_MODELS, *DDPM_MODELS])
    lines = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    for name, reason in BROKEN.items():
        mine = [line for line in lines if f"/{name}/" in line or line.endswith(f"/{name}")]
        assert len(mine) == 1 and reason in mine[0], (name, lines)
    assert len(lines) == len(BROKEN)  # and nothing about the download in progress


def test_without_diffusers_the_folders_are_skipped_in_one_line(folder, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now fails
    with caplog.at_level("WARNING", logger="server.registry"):
        registry = ModelRegistry.load(folder, torch.device("cpu"))
    assert list(registry.models) == ["toy"]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "pip install -e '.[diffusers]'" in lines[0] and "ddim-epsilon-clip" in lines[0]
    with pytest.raises(CheckpointError, match=r"pip install -e '\.\[diffusers\]'"):
        load_diffusers_model(folder / "ddim-epsilon-clip")


# --- colour and large images, streamed ---------------------------------------------------------


def read_stream(ws, request: dict) -> list[dict]:
    ws.send_json(request)
    messages = [ws.receive_json()]
    while messages[-1]["type"] not in ("done", "error", "cancelled"):
        messages.append(ws.receive_json())
    return messages


def grid_side(n: int, size: int) -> int:
    """The side of the server's square grid of n = k² images: k images and k + 1 gaps of 2 pixels."""
    k = round(n**0.5)
    return k * size + (k + 1) * 2


def test_ws_256px_frames_are_previews_and_done_is_full_size(client):
    with client.websocket_connect("/ws/sample") as ws:
        messages = read_stream(ws, {"model": "big", "sampler": "ddim", "steps": 2, "n": 16, "seed": 1, "every": 1})
    start, frames, done = messages[0], messages[1:-1], messages[-1]
    assert (start["image_size"], start["channels"], start["preview_size"]) == (256, 3, 64)
    assert [frame["step"] for frame in frames] == [1, 2]
    for frame in frames:
        for key in ("x_t", "x0"):
            image = png(frame[key])
            assert image.mode == "RGB" and image.size == (grid_side(16, 64), grid_side(16, 64))
    assert done["type"] == "done" and len(done["images"]) == 16
    assert all(png(data).size == (256, 256) and png(data).mode == "RGB" for data in done["images"])
    assert png(done["grid"]).size == (grid_side(16, 256), grid_side(16, 256))
    # the preview is what makes a frame light: the full-size grid is many times its bytes
    assert len(done["grid"]) > 8 * len(frames[-1]["x_t"])

    with client.websocket_connect("/ws/sample") as ws:
        request = {"model": "big", "steps": 1, "n": 4, "every": 1, "preview_size": 24}
        messages = read_stream(ws, request)
    assert messages[0]["preview_size"] == 24 and png(messages[1]["x_t"]).size == (grid_side(4, 24),) * 2

    with client.websocket_connect("/ws/sample") as ws:
        error = read_stream(ws, {"model": "big", "steps": 1, "preview_size": 65})[-1]
    assert error["type"] == "error" and error["detail"][0]["loc"] == ["preview_size"]


def test_small_models_stream_at_full_size(client):
    """28 and 32 px images are below the preview limit: their frames are the images themselves."""
    with client.websocket_connect("/ws/sample") as ws:
        messages = read_stream(ws, {"model": "ddim-epsilon-clip", "steps": 2, "n": 16, "every": 1})
    assert messages[0]["preview_size"] == 32 and png(messages[1]["x_t"]).size == (grid_side(16, 32),) * 2


def test_evaluation_samples_a_diffusers_folder_as_its_config_says(folder, tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    args = parse_args([
        str(folder / "ddim-v_prediction-clip"), "--sampler", "ddim", "--steps", "2", "-n", "6", "--batch-size", "3",
        "--metrics", "fid", "--dataset", "folder", "--data-root", str(data), "--out", str(tmp_path / "eval"),
        "--no-progress",
    ])  # fmt: skip
    rows, _ = evaluate(args, fid_features=small_features)
    assert [(row["sampler"], row["steps"], row["n"]) for row in rows] == [("DDIM", 2, 6)]
    report = (tmp_path / "eval" / "results.md").read_text()
    assert "diffusers UNet2DModel" in report and "v_prediction prediction" in report
    assert "the model's own where its files state them" in report
    # the config's choices, which generate() puts under the flags given
    own = load_model(folder / "ddim-v_prediction-clip").sampler_defaults()
    assert own == {"ddim": {"spacing": "leading"}, "ddpm": {"variance": "fixed_small"}}


def test_evaluation_samples_a_model_without_an_unconditional_class_only_unguided(folder):
    model = load_model(folder / "classes")
    assert conditioning(parse_args([str(folder / "classes"), "--guidance", "1"]), model)
    with pytest.raises(ValueError, match="no unconditional class"):
        conditioning(parse_args([str(folder / "classes"), "--guidance", "1", "3"]), model)


def test_visualize_draws_a_diffusers_folder_the_server_serves(folder, tmp_path):
    grid, process = tmp_path / "grid.png", tmp_path / "process.png"
    visualize.main(["grid", str(folder / "ddim-epsilon-clip"), "-n", "4", "--steps", "2", "--scale", "1",
                    "--out", str(grid)])  # fmt: skip
    assert Image.open(grid).size == (grid_side(4, 32), grid_side(4, 32))
    # the bare layout, class-conditional: a label for every sample
    visualize.main(["process", str(folder / "classes"), "-n", "2", "--steps", "3", "--columns", "3",
                    "--out", str(process)])  # fmt: skip
    assert Image.open(process).mode == "RGB"
