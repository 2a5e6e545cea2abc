"""python -m model.fetch: offline it stops at once with one line saying what to do; online (here a
stand-in for the hub's two calls) it fetches configs and safetensors only, into place at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import huggingface_hub
import pytest

from conftest import REPO
from model import fetch as fetch_module
from model.fetch import FetchError, fetch


def run_fetch(tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    return subprocess.run(
        [sys.executable, "-m", "model.fetch", "google/ddpm-cifar10-32", "--to", str(tmp_path / "checkpoints")],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        # the hub unreachable: refused at the first try, not after huggingface_hub's retries
        ({"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}, "Connection refused"),
    ],
)
def test_offline_it_fails_at_once_with_one_line_saying_what_to_do(tmp_path, env, says):
    result = run_fetch(tmp_path, **env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach") and says in lines[0]
    assert "on a machine that is online, run `python -m model.fetch google/ddpm-cifar10-32" in lines[0]
    assert not (tmp_path / "checkpoints").exists()


class FakeHub:
    """The two calls fetch makes: list the repo's files, and download the chosen ones."""

    def __init__(self, files: list[str]):
        self.files = files
        self.downloaded: list[str] = []

    def list_repo_files(self, repo, revision=None):
        return list(self.files)

    def get_repo_discussions(self, repo, **filters):
        class PullRequest:
            num, title = 14, "Adding `safetensors` variant of this model"

        return [PullRequest()]

    def snapshot_download(self, repo, revision=None, allow_patterns=(), local_dir=None):
        for name in allow_patterns:
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (local_dir / name).write_text("{}")
            self.downloaded.append(name)
        return str(local_dir)


@pytest.fixture
def hub(monkeypatch):
    def use(files: list[str]) -> FakeHub:
        fake = FakeHub(files)
        monkeypatch.setattr(huggingface_hub, "HfApi", lambda: fake)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(fetch_module, "reachable", lambda *args: None)
        return fake

    return use


def test_fetches_the_configs_and_safetensors_weights_only(hub, tmp_path):
    fake = hub([
        ".gitattributes", "README.md", "config.json", "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.safetensors", "model_index.json", "modeling_ddpm.py", "scheduler_config.json",
        "images/generated_image_0.png",
    ])  # fmt: skip
    folder = fetch("google/ddpm-cifar10-32", tmp_path)
    assert folder == tmp_path / "ddpm-cifar10-32"
    assert sorted(fake.downloaded) == [
        "config.json", "diffusion_pytorch_model.safetensors", "model_index.json", "scheduler_config.json"
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddpm-cifar10-32"]  # no partial folder left behind
    with pytest.raises(FetchError, match="exists already"):
        fetch("google/ddpm-cifar10-32", tmp_path)


def test_a_pipeline_layout_is_fetched_with_its_subfolders(hub, tmp_path):
    fake = hub([
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors", "scheduler/scheduler_config.json",
    ])  # fmt: skip
    fetch("someone/ddpm-anime-faces-64", tmp_path)
    assert sorted(fake.downloaded) == [
        "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip


def test_pickle_weights_are_refused_with_the_pull_requests_that_convert_them(hub, tmp_path):
    hub(["config.json", "diffusion_pytorch_model.bin", "scheduler_config.json", "model_index.json"])
    with pytest.raises(FetchError, match="safetensors only") as error:
        fetch("google/ddpm-ema-church-256", tmp_path)
    assert "--revision refs/pr/14" in str(error.value)
    assert not any(tmp_path.iterdir())
