import math

import pytest
import torch
from diffusers import DDPMScheduler

from model.schedule import NoiseSchedule


def test_linear_betas_are_ddpm_values():
    s = NoiseSchedule.from_name("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.betas[1:] - s.betas[:-1], torch.full((999,), (0.02 - 1e-4) / 999), atol=1e-9)


def test_derived_terms_match_closed_forms():
    s = NoiseSchedule.from_name("linear", 1000)
    b = s.betas.double()
    abar = torch.cumprod(1 - b, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    assert torch.allclose(s.alphas_cumprod.double(), abar, rtol=1e-5)
    assert torch.allclose(s.alphas_cumprod_prev.double(), abar_prev, rtol=1e-5)
    assert torch.allclose(s.sqrt_alphas_cumprod.double(), abar.sqrt(), rtol=1e-5)
    assert torch.allclose(s.sqrt_one_minus_alphas_cumprod.double(), (1 - abar).sqrt(), rtol=1e-5)
    post_var = b * (1 - abar_prev) / (1 - abar)
    assert s.posterior_variance[0].item() == 0
    assert torch.allclose(s.posterior_variance.double(), post_var, rtol=1e-5)
    assert s.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(post_var[1].item()), rel=1e-5)
    assert torch.isfinite(s.posterior_log_variance_clipped).all()
    assert torch.allclose(s.posterior_mean_coef1.double(), b * abar_prev.sqrt() / (1 - abar), rtol=1e-5)
    assert torch.allclose(s.posterior_mean_coef2.double(), (1 - abar_prev) * (1 - b).sqrt() / (1 - abar), rtol=1e-5)
    # ᾱ at the end of DDPM's linear schedule is about 4e-5: x_T is almost pure noise
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)


def test_cosine_schedule_follows_its_formula():
    s = NoiseSchedule.from_name("cosine", 1000)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    # ᾱ follows the cosine until β hits its 0.999 cap at the very last step
    assert torch.allclose(s.alphas_cumprod[:-1].double(), f[:-1], rtol=1e-4, atol=1e-7)
    assert s.betas.max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("name, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_and_alphas_cumprod_match_diffusers(name, diffusers_name):
    ours = NoiseSchedule.from_name(name, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    assert torch.allclose(ours.betas, ref.betas.float(), atol=1e-7)
    assert torch.allclose(ours.alphas_cumprod, ref.alphas_cumprod.float(), rtol=1e-5, atol=1e-8)


def test_q_sample_and_predict_x0_invert_each_other():
    s = NoiseSchedule.from_name("linear")
    x0, noise = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    x_t = s.q_sample(x0, t, noise)
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    assert torch.allclose(x_t, expected, atol=1e-6)
    assert torch.allclose(s.predict_x0(x_t, t, noise), x0, atol=1e-3)


def test_q_sample_has_the_marginal_moments():
    s = NoiseSchedule.from_name("linear")
    x0 = torch.full((20000, 1), 0.5)
    t = torch.full((20000,), 300)
    x_t = s.q_sample(x0, t, torch.randn_like(x0))
    abar = s.alphas_cumprod[300].item()
    assert x_t.mean().item() == pytest.approx(0.5 * math.sqrt(abar), abs=0.02)
    assert x_t.var().item() == pytest.approx(1 - abar, abs=0.02)


def test_loss_is_the_noise_prediction_error():
    s = NoiseSchedule.from_name("linear")
    x0 = torch.randn(64, 1, 16, 16)
    zero = s.loss(lambda x, t, y: torch.zeros_like(x), x0)
    assert zero.item() == pytest.approx(1.0, abs=0.03)  # E||ε||² per pixel = 1

    def oracle(x_t, t, y):  # knows x0, so recovers ε exactly
        return (x_t - s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1) * x0) / s.sqrt_one_minus_alphas_cumprod[t].view(
            -1, 1, 1, 1
        )

    assert s.loss(oracle, x0).item() < 1e-6


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_the_loss_weights_each_timestep_as_min_snr_gamma_says(prediction, gamma):
    """A network that predicts zeros costs the target's size, weighted per t by min(SNR, γ)/SNR for ε and
    min(SNR, γ)/(SNR + 1) for v (Hang et al. 2023, eq. 9-10), from the same draws of t and ε."""
    s = NoiseSchedule.from_name("linear")
    x0 = torch.rand(256, 3, 4, 4) * 2 - 1
    torch.manual_seed(1)
    t = torch.randint(0, 1000, (256,))
    noise = torch.randn_like(x0)
    target = noise if prediction == "epsilon" else s.v(x0, t, noise)
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    weight = torch.ones(256) if gamma is None else snr.clamp(max=gamma) / (snr if prediction == "epsilon" else snr + 1)
    expected = (weight * target.pow(2).mean(dim=(1, 2, 3))).mean()
    torch.manual_seed(1)
    got = s.loss(lambda x, t, y: torch.zeros_like(x), x0, None, prediction, gamma)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    if gamma is not None:  # the weights are at most 1 and fall to γ/SNR where the image is nearly clean
        assert weight.max() <= 1 and weight[t < 20].max() < 0.05


def test_a_v_network_that_knows_x0_has_no_loss():
    s = NoiseSchedule.from_name("linear")
    x0 = torch.randn(32, 1, 8, 8)

    def oracle(x_t, t, y):  # v = √ᾱ ε - √(1-ᾱ) x0, with ε recovered from x_t and x0
        eps = (x_t - s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1) * x0) / s.sqrt_one_minus_alphas_cumprod[t].view(
            -1, 1, 1, 1
        )
        return s.v(x0, t, eps)

    assert s.loss(oracle, x0, prediction="v", min_snr_gamma=5.0).item() < 1e-6


def test_respace_keeps_alphas_cumprod_at_the_chosen_steps():
    s = NoiseSchedule.from_name("linear")
    chosen = list(range(9, 1000, 10))
    r = s.respace(chosen)
    assert r.num_timesteps == 100
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod[chosen], rtol=1e-5)


def test_bad_betas_and_names_are_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule.from_name("quadratic")
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(torch.tensor([0.1, 1.5]))
