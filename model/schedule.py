"""The noise schedule of DDPM (Ho et al. 2020): β_t and everything derived from it, as tensors.

Timesteps are 0-based: t = 0 is the least noisy step (β_0 = 1e-4 for the linear schedule) and
t = T - 1 the noisiest. Every term is computed once in float64 and stored in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How a model's own scheduler samples, where its files say (a diffusers scheduler config does;
    this project's checkpoints leave every choice to the tool that samples)."""

    clip: bool | None = None  # clip the predicted x0 each step; None: unstated (the server clips, evaluation does not)
    clip_range: float = 1.0  # x0 is clipped to [-clip_range, clip_range]
    spacing: str = "leading"  # the DDIM timestep spacing (model.samplers.DDIM_SPACINGS)
    steps_offset: int = 0  # added to each DDIM timestep of the leading spacing (diffusers' steps_offset)
    variance: str = "fixed_large"  # DDPM's σ²_t, "fixed_large" (β_t) or "fixed_small" (β̃_t)


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's schedule, scaled so that T=1000 gives exactly the paper's 1e-4 … 0.02."""
    scale = 1000 / timesteps
    return torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021): ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}  # name → β_t for T timesteps


class NoiseSchedule:
    """β_t and the quantities of q(x_t | x_0) and q(x_{t-1} | x_t, x_0) derived from it, plus how the
    model's own scheduler samples (`sampling`)."""

    def __init__(self, betas: torch.Tensor, name: str = "custom", sampling: SamplingConfig | None = None):
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-d tensor with every value in (0, 1)")
        self.name = name
        self.sampling = sampling or SamplingConfig()
        self.num_timesteps = len(betas)
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        terms = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            # β̃_0 = 0: take β̃_1 so that the log stays finite (as the DDPM code does)
            "posterior_log_variance_clipped": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
        }
        for key, value in terms.items():
            setattr(self, key, value.to(torch.float32))

    @classmethod
    def from_name(cls, name: str, timesteps: int = 1000) -> NoiseSchedule:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of {tuple(SCHEDULES)}")
        return cls(SCHEDULES[name](timesteps), name)

    @property
    def config(self) -> dict:
        return {"name": self.name, "timesteps": self.num_timesteps}

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> NoiseSchedule:
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(device))
        return self

    def respace(self, timesteps: list[int]) -> NoiseSchedule:
        """The schedule over a subsequence of timesteps (Improved DDPM, Appendix B): ᾱ is kept at the
        chosen steps and β'_i = 1 - ᾱ_{τ_i} / ᾱ_{τ_{i-1}}, so ancestral sampling over S < T steps is the
        same Markov chain, only with larger jumps."""
        chosen = sorted(timesteps)
        abar = self.alphas_cumprod.double().cpu()[chosen]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return NoiseSchedule(1 - abar / abar_prev, f"{self.name}-respaced", self.sampling).to(self.device)

    # --- the forward process and the quantities the samplers and the loss need ---

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε  (DDPM eq. 4)."""
        return _at(self.sqrt_alphas_cumprod, t, x0) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t, the inverse of q_sample."""
        return (x_t - _at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _at(self.sqrt_alphas_cumprod, t, x_t)

    def v(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε - √(1-ᾱ_t) x_0, the velocity target of progressive distillation (Salimans & Ho 2022)."""
        return _at(self.sqrt_alphas_cumprod, t, x0) * noise - _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v: finite at every t, where x_0 from ε divides by √ᾱ_t → 0."""
        return _at(self.sqrt_alphas_cumprod, t, x_t) * x_t - _at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """ε = √(1-ᾱ_t) x_t + √ᾱ_t v."""
        return _at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + _at(self.sqrt_alphas_cumprod, t, x_t) * v

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """μ̃_t(x_t, x_0), the mean of q(x_{t-1} | x_t, x_0)  (DDPM eq. 7)."""
        return _at(self.posterior_mean_coef1, t, x_t) * x0 + _at(self.posterior_mean_coef2, t, x_t) * x_t

    def loss(
        self,
        model,
        x0: torch.Tensor,
        labels: torch.Tensor | None = None,
        prediction: str = "epsilon",
        min_snr_gamma: float | None = None,
    ) -> torch.Tensor:
        """L_simple = E_{t, ε} ||ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)||² with t uniform (DDPM eq. 14);
        prediction "v" regresses `v` instead. min_snr_gamma weights each t by min(SNR_t, γ) over the
        target's own weight (SNR_t for ε, SNR_t + 1 for v), as in Min-SNR-γ (Hang et al. 2023): in units
        of the x_0 error, the easy low-noise steps no longer dominate the gradient."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        target = noise if prediction == "epsilon" else self.v(x0, t, noise)
        error = (model(self.q_sample(x0, t, noise), t, labels) - target).pow(2).flatten(1).mean(1)
        if min_snr_gamma is None:
            return error.mean()
        snr = self.alphas_cumprod[t] / (1 - self.alphas_cumprod[t])  # the signal-to-noise ratio ᾱ_t / (1 - ᾱ_t)
        weight = snr.clamp(max=min_snr_gamma) / (snr if prediction == "epsilon" else snr + 1)
        return (weight * error).mean()


def _at(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """values[t], shaped to broadcast over a batch like `like` (one t per sample, or one for all)."""
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(t, device=values.device)
    out = values[t.to(values.device).long()].to(like.device, like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1))) if out.ndim else out
