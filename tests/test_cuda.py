"""The CUDA paths, on a machine with a GPU: bf16 autocast and channels-last, torch.compile, training
under torchrun (NCCL), and the server on the GPU. Marked `cuda` (bench/gpu_check.py runs `pytest -m
cuda`); without a GPU they skip."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import REPO, server_unet, tiny_unet
from model.checkpoint import save_checkpoint
from model.schedule import NoiseSchedule
from server.app import create_app
from server.settings import Settings

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def inputs(unet, batch: int = 4, device: str = "cuda"):
    torch.manual_seed(1)
    size, channels = unet.config.image_size, unet.config.in_channels
    x = torch.randn(batch, channels, size, size)
    t = torch.randint(0, 1000, (batch,))
    labels = torch.randint(0, unet.config.num_classes, (batch,)) if unet.config.num_classes else None
    return x.to(device), t.to(device), None if labels is None else labels.to(device)


def test_bf16_channels_last_forward_and_backward_on_cuda_match_fp32_on_the_cpu():
    unet = tiny_unet(num_classes=10, in_channels=3, image_size=32)
    expected = unet(*inputs(unet, device="cpu")).detach()
    gpu = unet.cuda().to(memory_format=torch.channels_last)
    x, t, labels = inputs(gpu)
    with torch.autocast("cuda", torch.bfloat16):
        eps = gpu(x.contiguous(memory_format=torch.channels_last), t, labels)
    assert eps.dtype == torch.bfloat16
    relative = (eps.float().cpu() - expected).norm() / expected.norm()
    assert relative < 3e-2, relative  # bf16 keeps 8 bits of mantissa
    eps.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu.parameters() if p.requires_grad)


def test_compiled_unet_matches_eager_on_cuda():
    unet = tiny_unet(num_classes=10, in_channels=3, image_size=32).cuda()
    args = inputs(unet)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(unet)(*args), unet(*args), atol=1e-3, rtol=1e-3)


def test_training_under_torchrun_uses_nccl_and_writes_a_checkpoint(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "-m", "model.train", "--dataset", "synthetic", "--image-size", "16", "--base-channels", "16",
               "--channel-mults", "1", "2", "--attention-resolutions", "8", "--batch-size", "16", "--steps", "4",
               "--log-every", "2", "--sample-every", "0", "--device", "cuda", "--bf16", "--channels-last",
               "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_the_server_samples_on_the_gpu(tmp_path):
    save_checkpoint(tmp_path / "digits.safetensors", server_unet(1, 10, seed=0), NoiseSchedule.from_name("linear"), "t")
    settings = Settings(_env_file=None, checkpoint_dir=tmp_path, device="cuda", web_dir=None)
    with TestClient(create_app(settings)) as client:
        assert [model["device"] for model in client.get("/models").json()] == ["cuda"]
        request = {"sampler": "ddpm", "steps": 20, "n": 4, "seed": 7, "label": 3}
        first, again = (client.post("/sample", json=request).json() for _ in range(2))
        assert first["images"] == again["images"]  # a seed fixes the images on the GPU too
        with client.websocket_connect("/ws/sample") as ws:
            ws.send_json({**request, "every": 5})
            while (message := ws.receive_json())["type"] in ("start", "frame"):
                pass
        assert message["type"] == "done" and message["images"] == first["images"]
