import os
from pathlib import Path

import pytest
import torch

from model.unet import UNet, UNetConfig

REPO = Path(__file__).resolve().parents[1]


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
