"""The samplers, written as step functions and step generators, and THE SAMPLER TABLE.

A step generator is a coroutine that owns one sampling run: it yields a `Step` that holds the
current x_t and its timestep t, the caller computes ε_θ(x_t, t) however it likes and `send`s it
back, and the generator answers with the next `Step`. The same code thereby serves a plain loop
(`sample`), a stream of frames (`denoise`), and a server that advances many runs with one batched
forward. A multistep solver keeps its history inside its generator, so none of them needs more from
the caller than ε. Each run draws its noise from its own `torch.Generator`, so a seed fixes its
images whatever else is computed beside it.

`SAMPLERS` names every sampler with its parameters (type, default, range or choices, meaning), its
default step count and the factory of its step generator. The server's requests and GET /config, the
web page, the evaluation and picture CLIs and the benchmarks all read it: adding a sampler is one
`register(Sampler(...))` (and its tests)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from model.schedule import NoiseSchedule, _at

DDIM_SPACINGS = ("leading", "trailing", "quadratic")
SOLVER_SPACINGS = ("linspace", "leading", "trailing", "karras")
VARIANCES = ("fixed_large", "fixed_small")
THRESHOLDINGS = ("clip", "dynamic", "none")
DYNAMIC_THRESHOLD_QUANTILE = 0.995  # Imagen's (and diffusers' default) percentile of |x0|

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Step:
    """The state of a sampling run after `index` of its `total` denoising steps: `x_t` is the current
    sample and `t` its timestep, the one ε is asked for next (once the run is done, the final image and
    -1); `x0` is the prediction of x_0 made by the last step (None before the first)."""

    index: int
    total: int
    t: int
    x_t: torch.Tensor
    x0: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.index == self.total


StepGenerator = Generator[Step, torch.Tensor, None]


def threshold_x0(x0: torch.Tensor, how: str, clip_range: float = 1.0) -> torch.Tensor:
    """clip: x0 clamped to [-1, 1] (DDPM's code; Imagen's "static thresholding"), or to ±clip_range.
    dynamic: Imagen's dynamic thresholding (Saharia et al. 2022): s = the 99.5th percentile of |x0| of
    each image, at least 1; x0 is clamped to [-s, s] and divided by s, so saturated pixels move inwards.
    none: x0 as the model predicts it."""
    if how == "clip":
        return x0.clamp(-clip_range, clip_range)
    if how == "dynamic":
        s = x0.flatten(1).abs().float().quantile(DYNAMIC_THRESHOLD_QUANTILE, dim=1).clamp(min=1).to(x0.dtype)
        s = s.view(-1, *([1] * (x0.ndim - 1)))
        return x0.clamp(-s, s) / s
    if how == "none":
        return x0
    raise ValueError(f"unknown thresholding {how!r}; choose one of {THRESHOLDINGS}")


def ddim_timesteps(num_timesteps: int, steps: int, spacing: str = "leading", offset: int = 0) -> list[int]:
    """The S timesteps a DDIM run visits, noisiest first; the last step goes from the last of them to ᾱ = 1.

    leading:   0, c, 2c, …, (S-1)c with c = T // S, as in the DDIM paper's code (T=1000, S=50: 980 … 0);
               `offset` is added to each (diffusers' steps_offset), at most up to T - 1
    trailing:  round(T - i·T/S) - 1, so that the run starts at the noisiest step (999 … 19)
    quadratic: ⌊(i · √(0.8 T) / (S-1))²⌋, the spacing of DDIM's CIFAR-10 table, repeats made distinct"""
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
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {DDIM_SPACINGS}")
    return sorted((int(t) for t in seq), reverse=True)


def solver_timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "linspace") -> tuple[list[int], list[float]]:
    """The S timesteps at which a multistep solver asks for ε, noisiest first, and the noise level
    σ_i = √((1-ᾱ)/ᾱ) at each, plus a final σ = 0: the clean image the last step lands on. As
    diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler define them (Table 2 of Lin
    et al. 2023, "Common diffusion noise schedules and sample steps are flawed"):
    linspace:  round(linspace(0, T-1, S+1)), the last dropped (999 … 100 for S=10)
    leading:   i · T // (S+1) for i = S … 1 (909 … 90); unlike DDIM's "leading", never t = 0
    trailing:  round(T - i·T/S) - 1, as DDIM's (999 … 99)
    karras:    σ spaced as in Karras et al. 2022 (ρ = 7) between the schedule's largest and smallest σ,
               each asked for at its nearest timestep (by log σ) while the solver steps with σ itself"""
    T = schedule.num_timesteps
    limit = T if spacing == "trailing" else T - 1
    if not 1 <= steps <= limit:
        raise ValueError(f"steps must be between 1 and {limit} with {spacing} spacing, got {steps}")
    # σ = √(1-ᾱ)/√ᾱ from the two square roots, each accurate in float32 (1 - ᾱ itself is not, near t = 0)
    sigmas = (schedule.sqrt_one_minus_alphas_cumprod.double() / schedule.sqrt_alphas_cumprod.double()).cpu().numpy()
    if spacing == "linspace":
        timesteps = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        timesteps = (np.arange(steps + 1) * (T // (steps + 1)))[::-1][:-1]
    elif spacing == "trailing":
        timesteps = np.arange(T, 0, -T / steps).round() - 1
    elif spacing == "karras":
        rho = 7.0
        ramp = np.linspace(0, 1, steps)
        karras = (sigmas[-1] ** (1 / rho) + ramp * (sigmas[0] ** (1 / rho) - sigmas[-1] ** (1 / rho))) ** rho
        timesteps = np.interp(np.log(karras), np.log(sigmas), np.arange(T)).round()
        return [int(t) for t in timesteps], [*karras.tolist(), 0.0]
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SOLVER_SPACINGS}")
    timesteps = [int(t) for t in timesteps]
    return timesteps, [*sigmas[timesteps].tolist(), 0.0]


def ddim_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    thresholding: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t → x_{t_prev} by DDIM (Song et al. 2020, eq. 12); t_prev = -1 means ᾱ = 1. Returns (x_prev, x0).
    A thresholded x0 is followed by the ε it implies (diffusers' use_clipped_model_output)."""
    abar_t = schedule.alphas_cumprod[t]
    abar_prev = schedule.alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones_like(abar_t)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if thresholding != "none":
        x0 = threshold_x0(x0, thresholding, schedule.sampling.clip_range)
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
    thresholding: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t → x_{t-1} by ancestral sampling (DDPM Algorithm 2). Returns (x_prev, x0). σ²_t = β_t
    ("fixed_large") or β̃_t ("fixed_small"); no noise is added at t = 0. A thresholded x0 makes the mean
    the posterior mean μ̃_t(x_t, x_0) through it."""
    x0 = schedule.predict_x0(x_t, t, eps)
    if thresholding != "none":
        x0 = threshold_x0(x0, thresholding, schedule.sampling.clip_range)
        mean = schedule.posterior_mean(x0, x_t, t)
    else:
        eps_coef = _at(schedule.betas, t, x_t) / _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
        mean = (x_t - eps_coef * eps) / _at(schedule.alphas, t, x_t).sqrt()
    if t == 0:
        return mean, x0
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    var = schedule.betas[t] if variance == "fixed_large" else schedule.posterior_variance[t]
    return mean + var.sqrt() * noise, x0


# --- step generators ------------------------------------------------------------------------


def ddim_steps(
    schedule: NoiseSchedule,
    x: torch.Tensor,
    timesteps: list[int],
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    thresholding: str = "none",
) -> StepGenerator:
    """DDIM from x (at timesteps[0]) down to x_0, visiting `timesteps` (descending)."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    total = len(timesteps)
    eps = yield Step(0, total, timesteps[0], x)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < total else -1
        noise = _randn_like(x, generator) if eta > 0 else None
        x, x0 = ddim_step(schedule, x, eps, t, t_prev, eta, noise, thresholding)
        eps = yield Step(i + 1, total, t_prev, x, x0)


def ddpm_steps(
    schedule: NoiseSchedule,
    x: torch.Tensor,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    variance: str = "fixed_large",
    thresholding: str = "none",
    timesteps: list[int] | None = None,
) -> StepGenerator:
    """Ancestral sampling from x_{T-1} down to x_0 over all T steps, or over `steps` evenly spaced
    ones of the respaced schedule (`NoiseSchedule.respace`); or from x at timesteps[0] over the given
    `timesteps` (descending), the chain respaced to them."""
    if timesteps is None:
        timesteps = ddim_timesteps(schedule.num_timesteps, steps or schedule.num_timesteps, "trailing")
    if len(timesteps) < schedule.num_timesteps:
        schedule = schedule.respace(timesteps)
    total = len(timesteps)
    eps = yield Step(0, total, timesteps[0], x)
    for i in range(total):
        k = total - 1 - i  # the index of timesteps[i] in the (respaced) schedule
        noise = _randn_like(x, generator) if k > 0 else None
        x, x0 = ddpm_step(schedule, x, eps, k, variance, noise, thresholding)
        eps = yield Step(i + 1, total, timesteps[i + 1] if i + 1 < total else -1, x, x0)


# --- the multistep solvers, in log-SNR time --------------------------------------------------
#
# Both integrate the probability-flow ODE of the same ε-model with its data prediction
# x0_θ = (x - σ ε_θ) / α, in λ = log(α/σ) (half the log-SNR), where its exact solution from s to t is
#   x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x0_θ(λ) dλ.
# They differ in how they extrapolate x0_θ over the step from the x0 of earlier steps. Here α, σ are the
# VP coefficients (α² + σ² = 1) and σ_i the VE noise level √((1-ᾱ)/ᾱ) = σ/α.


def _vp(sigmas: list[float]) -> tuple[list[float], list[float], list[float]]:
    """α, σ and λ = log(α/σ) at each VE noise level; σ_VE = 0 (the clean image) has λ = +∞."""
    alphas = [1 / math.sqrt(1 + s * s) for s in sigmas]
    vp_sigmas = [s * a for s, a in zip(sigmas, alphas, strict=True)]
    return alphas, vp_sigmas, [-math.log(s) if s > 0 else math.inf for s in sigmas]


def dpm_solver_pp_steps(
    x: torch.Tensor,
    timesteps: list[int],
    sigmas: list[float],
    order: int = 2,
    thresholding: str = "clip",
) -> StepGenerator:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): the multistep second-order solver
    in data prediction, one ε a step. With h_i = λ_{i+1} - λ_i and r = h_{i-1}/h_i,
      x_{i+1} = (σ_{i+1}/σ_i) x_i - α_{i+1} (e^{-h_i} - 1) D_i,   D_i = (1 + 1/2r) x0_i - (1/2r) x0_{i-1},
    first order (D_i = x0_i, which is DDIM) at the first step and at the last one, which lands on σ = 0.
    `sigmas` (from `solver_timesteps`) holds σ at each timestep and a final 0."""
    alpha, sigma, lam = _vp(sigmas)
    total = len(timesteps)
    x0_prev = None
    eps = yield Step(0, total, timesteps[0], x)
    for i in range(total):
        x0 = threshold_x0((x - sigma[i] * eps) / alpha[i], thresholding)
        h = lam[i + 1] - lam[i]
        if order == 1 or x0_prev is None or i == total - 1:
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * d
        x0_prev = x0
        eps = yield Step(i + 1, total, timesteps[i + 1] if i + 1 < total else -1, x, x0)


def unipc_steps(
    x: torch.Tensor,
    timesteps: list[int],
    sigmas: list[float],
    order: int = 2,
    thresholding: str = "clip",
) -> StepGenerator:
    """UniPC (Zhao et al. 2023) with B(h) = e^{-h} - 1 ("bh2"), in data prediction, one ε a step. Each
    step first corrects x_i with the ε just computed at it (UniC: the same update from x_{i-1}, with x0_i
    joining the earlier predictions at one order higher), then predicts x_{i+1} from x_i and the last p
    predictions (UniP-p). The order p rises from 1 as predictions accumulate and falls back near the end
    (p ≤ steps left), so the last step, which lands on σ = 0, is first order.
    `sigmas` (from `solver_timesteps`) holds σ at each timestep and a final 0."""
    vp = _vp(sigmas)
    alpha, sigma, _ = vp
    total = len(timesteps)
    x0s: list[torch.Tensor] = []  # the data predictions so far, oldest first
    x_prev, p_prev = None, 0  # the sample the last prediction started from, and its order
    eps = yield Step(0, total, timesteps[0], x)
    for i in range(total):
        x0 = threshold_x0((x - sigma[i] * eps) / alpha[i], thresholding)
        if x_prev is not None:
            x = _unipc_update(x_prev, x0s, i - 1, i, p_prev, vp, x0_new=x0)
        x0s = [*x0s, x0][-order:]
        p = min(order, i + 1, total - i)
        x_prev, p_prev = x, p
        x = _unipc_update(x, x0s, i, i + 1, p, vp)
        eps = yield Step(i + 1, total, timesteps[i + 1] if i + 1 < total else -1, x, x0)


def _unipc_update(
    x: torch.Tensor, x0s: list[torch.Tensor], s: int, t: int, p: int, vp: tuple, x0_new: torch.Tensor | None = None
) -> torch.Tensor:
    """One UniPC update from x at step s to step t with the predictions x0s (the last made at s) and `vp`
    (`_vp`): UniP-p when x0_new is None, else UniC-p, which also uses x0_new, the prediction made at t.

      x_t = (σ_t/σ_s) x - α_t (e^{-h} - 1) x0_s - α_t B(h) Σ_k ρ_k D_k,   D_k = (x0_{s-k} - x0_s) / r_k,
    with h = λ_t - λ_s, r_k = (λ_{s-k} - λ_s)/h (and r = 1, D = x0_new - x0_s, for the corrector's own
    term) and B(h) = e^{-h} - 1 (bh2). The weights ρ solve R ρ = b with R_jk = r_k^j (j = 0 … p-1) and
    b_j = j! (-h) φ_{j+1}(-h) / B(h) (j = 1 … p), φ the exponential integrators' functions."""
    alpha, sigma, lam = vp
    h = lam[t] - lam[s]
    hh = -h  # data prediction integrates in -λ
    h_phi_1 = math.expm1(hh)
    B_h = h_phi_1  # bh2
    x0 = x0s[-1]
    rks = [(lam[s - k] - lam[s]) / h for k in range(1, p)]
    ds = [(x0s[-1 - k] - x0) / r for k, r in zip(range(1, p), rks, strict=True)]
    base = (sigma[t] / sigma[s]) * x - alpha[t] * h_phi_1 * x0
    if x0_new is not None:  # the corrector: the new prediction is one more point, at r = 1
        rks, ds = [*rks, 1.0], [*ds, x0_new - x0]
    if not ds:
        return base
    if len(ds) == 1:
        rhos = [0.5]  # UniP-2 and UniC-1: the paper's (and diffusers') choice, where R ρ = b would give a 1×1 system
    else:
        rhos = np.linalg.solve(np.vander(rks, increasing=True).T, _unipc_b(hh, B_h, len(ds))).tolist()
    return base - alpha[t] * B_h * sum(rho * d for rho, d in zip(rhos, ds, strict=True))


def _unipc_b(hh: float, B_h: float, n: int) -> np.ndarray:
    """b_j = j! · hh φ_{j+1}(hh) / B(h) for j = 1 … n, by the recursion φ_1(z) = (e^z - 1)/z,
    φ_{k+1}(z) = (φ_k(z) - 1/k!)/z, carried as hh·φ_k(hh)."""
    b, h_phi_k, factorial = [], math.expm1(hh) / hh - 1, 1
    for j in range(1, n + 1):
        b.append(h_phi_k * factorial / B_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.array(b)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# --- THE SAMPLER TABLE -------------------------------------------------------------------------

PARAM_TYPES = {float: "number", int: "integer", bool: "boolean", str: "string"}  # their JSON names
ALLOWED = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string"}  # in error messages


@dataclass(frozen=True)
class Param:
    """One parameter of a sampler: its type (float, int, bool or str), default, allowed values and meaning."""

    name: str
    type: type
    default: object
    meaning: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None

    def check(self, value):
        """`value` as this parameter's type, or ValueError saying what is allowed. Strict: no strings
        for numbers, no booleans for numbers (an int is a fine float)."""
        kind = self.type
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok or (kind is float and not math.isfinite(value)):
            raise ValueError(f"{self.name} must be {ALLOWED[kind]}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}")
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if kind in (int, float) and not low <= value <= high:
            bounds = [f"at least {low:g}"] * (low > -math.inf) + [f"at most {high:g}"] * (high < math.inf)
            raise ValueError(f"{self.name} must be {' and '.join(bounds)}")
        return value

    def parse(self, text: str):
        """A command-line value, checked."""
        try:
            if self.type is bool:
                value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
            else:
                value = self.type(text)
        except (KeyError, ValueError):
            raise ValueError(f"{self.name} must be {ALLOWED[self.type]}, got {text!r}") from None
        return self.check(value)

    def info(self) -> dict:
        """What a client needs to build a control for it (GET /config)."""
        return {
            "name": self.name,
            "type": PARAM_TYPES[self.type],
            "default": self.default,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "choices": list(self.choices) if self.choices is not None else None,
            "description": self.meaning,
        }


@dataclass(frozen=True)
class Sampler:
    """One entry of the table. `make(schedule, x_T, steps, generator, **params)` returns the step
    generator of a run of `steps` steps from x_T; `generator` is the run's own, for samplers that draw
    noise. `default_steps` None means all T steps of the schedule; `max_steps(T)` the most it can take."""

    name: str
    title: str
    description: str
    make: Callable[..., StepGenerator]
    params: tuple[Param, ...] = ()
    default_steps: int | None = None
    evals_per_step: int = 1  # UNet evaluations (NFE) a step costs
    max_steps: Callable[[int], int] = field(default=lambda num_timesteps: num_timesteps)
    grid: Callable[..., list[int]] | None = None  # (schedule, steps, **params) → the timesteps a run visits
    # draws fresh noise after x_T: always (True), never (False), or when this parameter is above 0
    stochastic: bool | str = False

    def timesteps(self, schedule: NoiseSchedule, steps: int, params: dict) -> list[int]:
        """The timesteps a run of `steps` steps with these (resolved) parameters visits, noisiest first."""
        return self.grid(schedule, steps, **params)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def resolve(self, given: dict) -> dict:
        """Every parameter's value: the given ones checked, the others at their defaults."""
        values = {p.name: p.default for p in self.params}
        for name, value in given.items():
            p = self.param(name)
            if p is None:
                takes = ", ".join(q.name for q in self.params) or "none"
                raise ValueError(f"{self.name} has no parameter {name!r} (its parameters: {takes})")
            values[name] = p.check(value)
        return values

    def steps_for(self, num_timesteps: int) -> int:
        return self.default_steps or num_timesteps

    def draws_noise(self, params: dict) -> bool:
        """Whether a run with these (resolved) parameters draws noise after x_T: its images are then not
        a function of x_T alone (no interpolation between seeds)."""
        return self.stochastic if isinstance(self.stochastic, bool) else params[self.stochastic] > 0

    def info(self) -> dict:
        """What a client needs to offer it (GET /config): its fields but the functions, and its parameters'."""
        shown = ("name", "title", "description", "default_steps", "evals_per_step", "stochastic")
        return {**{key: getattr(self, key) for key in shown}, "params": [p.info() for p in self.params]}


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Add (or replace) a sampler in the table: everything that offers samplers offers it from then on."""
    for p in sampler.params:
        try:
            p.check(p.default)
        except ValueError as e:
            raise ValueError(f"{sampler.name}: the default of {p.name} is not allowed: {e}") from None
    SAMPLERS[sampler.name] = sampler
    return sampler


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampling_run(
    name: str,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    **params,
) -> StepGenerator:
    """The step generator of the named sampler over `steps` steps (its default if None) from x_T = x."""
    sampler = get_sampler(name)
    return sampler.make(
        schedule, x, steps or sampler.steps_for(schedule.num_timesteps), generator, **sampler.resolve(params)
    )


THRESHOLDING = Param(
    "thresholding",
    str,
    "clip",
    "how each step keeps the predicted x0 in [-1, 1]: clip it, Imagen's dynamic thresholding, or not at all",
    choices=THRESHOLDINGS,
)
SOLVER_SPACING = Param(
    "spacing", str, "trailing", "which timesteps: linspace, leading, trailing, or Karras σ", choices=SOLVER_SPACINGS
)


# Each factory makes the run of `steps` steps from x at the first timestep of its grid; given `timesteps`
# (descending, from model.editing: a part of a grid), it visits those instead, from x at timesteps[0].


def _ddpm_grid(schedule, steps, **params) -> list[int]:
    return ddim_timesteps(schedule.num_timesteps, steps, "trailing")


def _ddim_grid(schedule, steps, spacing="leading", **params) -> list[int]:
    offset = schedule.sampling.steps_offset if spacing == "leading" else 0  # a diffusers scheduler's
    return ddim_timesteps(schedule.num_timesteps, steps, spacing, offset)


def _ddim(
    schedule, x, steps, generator, eta=0.0, spacing="leading", thresholding="clip", timesteps=None
) -> StepGenerator:
    timesteps = _ddim_grid(schedule, steps, spacing) if timesteps is None else timesteps
    return ddim_steps(schedule, x, timesteps, eta, generator, thresholding)


def _solver_grid(schedule, steps, spacing="trailing", **params) -> list[int]:
    return solver_timesteps(schedule, steps, spacing)[0]


def _solver_sigmas(schedule, steps, spacing, timesteps) -> tuple[list[int], list[float]]:
    """The grid's timesteps and σs, or `timesteps` and theirs: a tail of the grid keeps the grid's σs
    (Karras σs are not the schedule's at their timesteps), another timestep takes the schedule's."""
    grid, sigmas = solver_timesteps(schedule, steps, spacing)
    if timesteps is None or timesteps == grid[len(grid) - len(timesteps) :]:
        return grid[len(grid) - len(timesteps or grid) :], sigmas[len(grid) - len(timesteps or grid) :]
    abar = schedule.alphas_cumprod.double().cpu()
    own = dict(zip(grid, sigmas, strict=False))
    return timesteps, [own.get(t, math.sqrt((1 - abar[t]) / abar[t])) for t in timesteps] + [0.0]


def _solver(
    name: str, title: str, description: str, solver_steps: Callable[..., StepGenerator], order_param: Param
) -> Sampler:
    """The table's entry of a multistep solver: its own order parameter, and the spacing, thresholding,
    steps and factory both share."""

    def make(schedule, x, steps, generator, order=2, spacing="trailing", thresholding="clip", timesteps=None):
        return solver_steps(x, *_solver_sigmas(schedule, steps, spacing, timesteps), order, thresholding)

    return Sampler(
        name,
        title,
        description,
        make,
        (order_param, SOLVER_SPACING, THRESHOLDING),
        default_steps=10,
        # every spacing but trailing needs T - 1 distinct timesteps above 0
        max_steps=lambda num_timesteps: num_timesteps - 1,
        grid=_solver_grid,
    )


register(
    Sampler(
        "ddpm",
        "DDPM",
        "Ancestral sampling (Ho et al. 2020): every step removes the predicted noise and adds fresh noise; "
        "the original walks all T steps, fewer steps walk a respaced chain.",
        ddpm_steps,
        (
            Param(
                "variance",
                str,
                "fixed_large",
                "the noise added a step: σ² = β (fixed_large) or β̃ (fixed_small)",
                choices=VARIANCES,
            ),
            THRESHOLDING,
        ),
        grid=_ddpm_grid,
        stochastic=True,
    )
)
register(
    Sampler(
        "ddim",
        "DDIM",
        "Denoising diffusion implicit models (Song et al. 2021): big deterministic jumps along a subset of "
        "the timesteps; 50 steps look close to DDPM's 1000.",
        _ddim,
        (
            Param(
                "eta", float, 0.0, "fresh noise a step: 0 deterministic, 1 as noisy as DDPM", minimum=0.0, maximum=1.0
            ),
            Param(
                "spacing",
                str,
                "leading",
                "which timesteps: leading (DDIM's code), trailing, or quadratic",
                choices=DDIM_SPACINGS,
            ),
            THRESHOLDING,
        ),
        default_steps=50,
        grid=_ddim_grid,
        stochastic="eta",
    )
)
register(
    _solver(
        "dpm-solver++",
        "DPM-Solver++(2M)",
        "A second-order multistep ODE solver (Lu et al. 2022) built for guided sampling: "
        "about DDIM-50's images in 10 steps.",
        dpm_solver_pp_steps,
        Param("order", int, 2, "1 is DDIM; 2 extrapolates from the last two predictions", choices=(1, 2)),
    )
)
register(
    _solver(
        "unipc",
        "UniPC",
        "A predictor-corrector multistep solver (Zhao et al. 2023) that corrects each step with the "
        "model's next prediction at no extra cost: good images in 5 to 10 steps.",
        unipc_steps,
        Param("order", int, 2, "how many past predictions each step extrapolates from", choices=(1, 2, 3)),
    )
)


# --- driving a run --------------------------------------------------------------------------


def denoise(steps: StepGenerator, eps_fn: EpsFn, include_start: bool = False) -> Iterator[Step]:
    """Drive a step generator with eps_fn(x_t, t) and yield every step after the first update (and,
    with include_start, the starting step before it: x_T, with no prediction yet)."""
    step = next(steps)
    if include_start:
        yield step
    while not step.done:
        t = torch.full((step.x_t.shape[0],), step.t, device=step.x_t.device, dtype=torch.long)
        step = steps.send(eps_fn(step.x_t, t))
        yield step


def sample(steps: StepGenerator, eps_fn: EpsFn) -> torch.Tensor:
    """Run a step generator to the end and return x_0."""
    return deque(denoise(steps, eps_fn), maxlen=1)[0].x_t  # keep only the last step in memory


def guided_eps(
    model: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None = None,
    guidance: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """ε with classifier-free guidance (Ho & Salimans 2022): ε_u + w (ε_c - ε_u), per sample. `labels`
    holds a class per sample, or `model.null_label` for the unconditional prediction. w = 1 is the plain
    conditional ε and w = 0 the unconditional one. The rows that need both halves are doubled into one
    batched forward; a guidance-distilled model takes w as an input instead, in one. A model whose
    `null_label` is None has no unconditional class: it takes its labels as they are, unguided."""
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
