import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from model.unet import UNet, UNetConfig

REPO = Path(__file__).resolve().parents[1]

# pytest-xdist runs a worker per core (pyproject.toml): one torch thread each, or their OpenMP threads
# oversubscribe the cores and spin (a tiny training step measured 8x slower)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def tiny_unet(num_classes: int = 0, in_channels: int = 1, image_size: int = 28, seed: int = 0) -> UNet:
    """A UNet small enough for the CPU tests, with random (non-zero) weights everywhere."""
    torch.manual_seed(seed)
    config = UNetConfig(
        in_channels=in_channels,
        image_size=image_size,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(image_size // 2,),
        dropout=0.0,
        num_classes=num_classes,
    )
    model = UNet(config)
    with torch.no_grad():  # the zero-initialised output layers would make every ε zero
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return model.eval()


def server_unet(channels: int, num_classes: int, seed: int) -> UNet:
    """The server tests' model: 8×8 images, so that a sampling run takes milliseconds."""
    torch.manual_seed(seed)
    config = UNetConfig(
        in_channels=channels,
        image_size=8,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_classes=num_classes,
        dropout=0.0,
    )
    unet = UNet(config)
    with torch.no_grad():  # the output layers start at zero: make ε depend on the input
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that hold slow or browser tests first: xdist hands a worker a file at a time (--dist loadfile),
    so the long ones start early and the short ones fill the gaps at the end. Stable: a file's tests keep
    their order."""
    long = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("browser")}
    items.sort(key=lambda item: item.path not in long)


@pytest.fixture
def data_root() -> Path:
    """The real MNIST/Fashion-MNIST files: $DATA_ROOT, else ../shared/data beside the repo."""
    root = Path(os.environ.get("DATA_ROOT", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST files under {root} (set DATA_ROOT to a folder holding MNIST/raw/)")
    return root


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state, so none is flaky."""
    torch.manual_seed(0)


class LiveServer:
    """`python -m server` under uvicorn on a free loopback port, with the settings of an env file;
    its output lines are collected in `lines`."""

    START_TIMEOUT_S = 120  # importing torch and loading models on a busy 2-core machine

    def __init__(self, checkpoints: Path, env_file: Path):
        env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
        # `python -m server` as a terminal starts it: with Ctrl-C's default handler, even when this test run
        # was started in the background (a shell starts those with SIGINT ignored, and children inherit that)
        start = (
            "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "runpy.run_module('server', run_name='__main__')"
        )
        command = [sys.executable, "-c", start, "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
                   "--threads", "1", "--checkpoints", str(checkpoints), "--env-file", str(env_file)]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()
        deadline, self.url = time.monotonic() + self.START_TIMEOUT_S, None
        while self.url is None and time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.05)
            announced = re.search(r"^Open (http://127\.0\.0\.1:(\d+)) in your browser$", self.output, re.MULTILINE)
            self.url, self.port = (announced.group(1), int(announced.group(2))) if announced else (None, None)
        if self.url is None:
            self.process.kill()
            pytest.fail("the server did not announce its address:\n" + self.output)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws") + "/ws/sample"

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.process.kill()
            self._reader.join(timeout=5)


def live_server_env(folder: Path, **settings) -> Path:
    """An env file of DDPM_* settings in `folder`."""
    env_file = folder / "server.env"
    env_file.write_text("".join(f"DDPM_{key.upper()}={value}\n" for key, value in settings.items()))
    return env_file
