"""DDPM and DDIM sampling, written as step functions and as step generators.

A step generator is a coroutine that owns one sampling run: it yields a `Step` that holds the
current x_t and its timestep t, the caller computes ε_θ(x_t, t) however it likes and `send`s it
back, and the generator answers with the next `Step`. The same code thereby serves a plain loop
(`sample`), a stream of frames (`denoise`), and a server that advances many runs with one batched
forward. Each run draws its noise from its own `torch.Generator`, so a seed fixes its images
whatever else is computed beside it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model.schedule import NoiseSchedule, _at

SPACINGS = ("leading", "trailing", "quadratic")
VARIANCES = ("fixed_large", "fixed_small")

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Step:
    """The state of a sampling run after `index` of its `total` denoising steps.

    `x_t` is the current sample and `t` its timestep, the one ε is asked for next; once the run is
    done `x_t` is the final image and `t` is -1. `x0` is the prediction of x_0 made by the last
    step (None before the first).
    """

    index: int
    total: int
    t: int
    x_t: torch.Tensor
    x0: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.index == self.total


StepGenerator = Generator[Step, torch.Tensor, None]


# --- timestep lists -------------------------------------------------------------------------


def ddim_timesteps(num_timesteps: int, steps: int, spacing: str = "leading", offset: int = 0) -> list[int]:
    """The S timesteps a DDIM run visits, noisiest first.

    leading:   0, c, 2c, …, (S-1)c with c = T // S, as in the DDIM paper's code (T=1000, S=50: 980 … 0);
               `offset` is added to each (diffusers' steps_offset), at most up to T - 1
    trailing:  round(T - i·T/S) - 1, so that the run starts at the noisiest step (999 … 19)
    quadratic: ⌊(i · √(0.8 T) / (S-1))²⌋, the spacing of DDIM's CIFAR-10 table, repeats made distinct
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    if spacing == "leading":
        seq = np.minimum(np.arange(steps) * (num_timesteps // steps) + offset, num_timesteps - 1)
    elif spacing == "trailing":
        seq = np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(int) - 1
    elif spacing == "quadratic":
        seq = (np.linspace(0, np.sqrt(num_timesteps * 0.8), steps) ** 2).astype(int)
        # the first few squares round to the same step (0, 0, 1, 2, …): nudge repeats up so that S
        # steps stay S distinct timesteps, where the DDIM code would take a no-op step
        seq = np.maximum.accumulate(seq - np.arange(steps)) + np.arange(steps)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    return sorted((int(t) for t in seq), reverse=True)


# --- one step of each sampler ---------------------------------------------------------------


def ddim_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t → x_{t_prev} by DDIM (Song et al. 2020, eq. 12); t_prev = -1 means ᾱ = 1. Returns (x_prev, x0).

    With clip_x0 the predicted x0 is clipped (to the schedule's clip range, [-1, 1] unless its model
    says otherwise) and ε re-derived from it, as diffusers does with use_clipped_model_output=True."""
    abar_t = schedule.alphas_cumprod[t]
    abar_prev = schedule.alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones_like(abar_t)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_x0:
        x0 = x0.clamp(-schedule.sampling.clip_range, schedule.sampling.clip_range)
        eps = (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).sqrt() * eps
    if eta > 0:
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    variance: str = "fixed_large",
    noise: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t → x_{t-1} by ancestral sampling (DDPM Algorithm 2). Returns (x_prev, x0).

    σ²_t = β_t ("fixed_large") or β̃_t ("fixed_small"); no noise is added at t = 0. With clip_x0 the
    mean goes through the clipped x0 (to the schedule's clip range) and the posterior mean μ̃_t(x_t, x_0).
    """
    x0 = schedule.predict_x0(x_t, t, eps)
    if clip_x0:
        x0 = x0.clamp(-schedule.sampling.clip_range, schedule.sampling.clip_range)
        mean = schedule.posterior_mean(x0, x_t, t)
    else:
        mean = (x_t - _at(schedule.betas, t, x_t) / _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _at(
            schedule.alphas, t, x_t
        ).sqrt()
    if t == 0:
        return mean, x0
    if variance == "fixed_large":
        var = schedule.betas[t]
    elif variance == "fixed_small":
        var = schedule.posterior_variance[t]
    else:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    return mean + var.sqrt() * noise, x0


# --- step generators ------------------------------------------------------------------------


def ddim_steps(
    schedule: NoiseSchedule,
    x: torch.Tensor,
    timesteps: list[int],
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
) -> StepGenerator:
    """DDIM from x (at timesteps[0]) down to x_0, visiting `timesteps` (descending)."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    total = len(timesteps)
    eps = yield Step(0, total, timesteps[0], x)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < total else -1
        noise = _randn_like(x, generator) if eta > 0 else None
        x, x0 = ddim_step(schedule, x, eps, t, t_prev, eta, noise, clip_x0)
        eps = yield Step(i + 1, total, t_prev, x, x0)


def ddpm_steps(
    schedule: NoiseSchedule,
    x: torch.Tensor,
    steps: int | None = None,
    variance: str = "fixed_large",
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
) -> StepGenerator:
    """Ancestral sampling from x_{T-1} down to x_0 over all T steps, or over `steps` evenly spaced
    ones of the respaced schedule (`NoiseSchedule.respace`)."""
    timesteps = ddim_timesteps(schedule.num_timesteps, steps or schedule.num_timesteps, "trailing")
    if len(timesteps) < schedule.num_timesteps:
        schedule = schedule.respace(timesteps)
    total = len(timesteps)
    eps = yield Step(0, total, timesteps[0], x)
    for i in range(total):
        k = total - 1 - i  # the index of timesteps[i] in the (respaced) schedule
        noise = _randn_like(x, generator) if k > 0 else None
        x, x0 = ddpm_step(schedule, x, eps, k, variance, noise, clip_x0)
        eps = yield Step(i + 1, total, timesteps[i + 1] if i + 1 < total else -1, x, x0)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# --- driving a run --------------------------------------------------------------------------


def denoise(steps: StepGenerator, eps_fn: EpsFn) -> Iterator[Step]:
    """Drive a step generator with eps_fn(x_t, t) and yield every step after the first update."""
    step = next(steps)
    while not step.done:
        t = torch.full((step.x_t.shape[0],), step.t, device=step.x_t.device, dtype=torch.long)
        step = steps.send(eps_fn(step.x_t, t))
        yield step


def sample(steps: StepGenerator, eps_fn: EpsFn) -> torch.Tensor:
    """Run a step generator to the end and return x_0."""
    return deque(denoise(steps, eps_fn), maxlen=1)[0].x_t  # keep only the last step in memory


# --- the noise predictor with classifier-free guidance ---------------------------------------


def guided_eps(
    model: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None = None,
    guidance: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """ε with classifier-free guidance (Ho & Salimans 2022): ε_u + w (ε_c - ε_u), per sample.

    `labels` holds a class per sample, or `model.null_label` for the unconditional prediction. w = 1
    is the plain conditional ε and w = 0 the unconditional one. The rows that need both halves are
    doubled into one batched forward. A model whose `null_label` is None has no unconditional
    class: it takes its labels as they are, unguided.
    """
    if labels is None or model.null_label is None:
        return model(x, t, labels)
    w = torch.as_tensor(guidance, dtype=x.dtype, device=x.device).expand(x.shape[0])
    if getattr(model.config, "guidance_input", False):  # a guidance-distilled student (Meng et al. 2023): w is an input
        return model(x, t, labels, w)
    both = (labels != model.null_label) & (w != 1)
    null = torch.full_like(labels[both], model.null_label)
    out = model(torch.cat([x, x[both]]), torch.cat([t, t[both]]), torch.cat([labels, null]))
    eps, eps_uncond = out[: x.shape[0]], out[x.shape[0] :]
    w_both = w[both].view(-1, *([1] * (x.ndim - 1)))
    eps[both] = eps_uncond + w_both * (eps[both] - eps_uncond)
    return eps


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def initial_noise(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """x_T ~ N(0, I), drawn from the run's own generator."""
    return torch.randn(shape, generator=generator, device=device)
