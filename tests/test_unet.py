import pytest
import torch

from conftest import tiny_unet
from model.unet import PRESETS, UNet, UNetConfig, build_unet, timestep_embedding


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_has_the_input_shape(channels, size, num_classes):
    model = tiny_unet(num_classes=num_classes, in_channels=channels, image_size=size)
    x = torch.randn(2, channels, size, size)
    labels = torch.tensor([1, num_classes]) if num_classes else None
    with torch.inference_mode():
        assert model(x, torch.tensor([0, 999]), labels).shape == x.shape


def test_the_output_depends_on_t():
    model = tiny_unet()
    x = torch.randn(1, 1, 28, 28).repeat(2, 1, 1, 1)
    with torch.inference_mode():
        out = model(x, torch.tensor([5, 900]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_the_ddpm_cifar10_configuration_has_35_7m_parameters():
    model = build_unet("ddpm-cifar10", in_channels=3, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(35.7e6, rel=0.002)


def test_presets_build_for_their_sizes():
    for name, size in [("tiny", 28), ("small", 28), ("ddpm-64", 64)]:
        assert isinstance(build_unet(name, image_size=size), UNet)


def test_a_fresh_model_predicts_zero_noise():
    """Zero-initialised output layers: every block starts as the identity and ε_θ starts at 0."""
    model = build_unet("tiny", num_classes=10)
    with torch.inference_mode():
        assert model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([0, 10])).abs().max() == 0


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 1]), 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert emb[1, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())


def test_config_round_trips_and_rejects_bad_values():
    cfg = UNetConfig(**PRESETS["tiny"], num_classes=10)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown UNet config keys"):
        UNetConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="cannot be halved"):
        UNetConfig(image_size=28, channel_mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown model preset"):
        build_unet("huge")


def test_an_unconditional_model_refuses_labels():
    with pytest.raises(ValueError, match="unconditional"):
        tiny_unet()(torch.randn(1, 1, 28, 28), torch.tensor([1]), torch.tensor([0]))
