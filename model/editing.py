"""Playing with a sampling run: SDEdit from an image, inpainting, branching off a run part way, and a
row of images between two seeds' noise. Each is a short function over the step generators of
model.samplers, so that whatever drives a run (a plain loop, the server's batching loop) drives
these unchanged: they ask for ε exactly as a plain run does. `Plan` resolves a run's settings once
into all of them: what the server validates, counts and runs.

- `start`: SDEdit (Meng et al. 2022, "SDEdit: guided image synthesis and editing with stochastic
  differential equations"), its steps counted as diffusers' img2img counts them.
- `inpaint`: replace-known-region inpainting (RePaint, Lugmayr et al. 2022, without its resampling
  jumps; the "replacement" method of Song et al. 2021's score SDE paper).
- `branch`: the first steps of one run (replayed, never uploaded), then another's settings; with the
  same settings the run itself goes on (its generator, solver history and noise), so an unchanged
  branch is the original run.
- `slerp`: n starting noises along the great circle between two (Shoemake 1985; as in the DDIM
  paper's interpolation, Song et al. 2021, §5.3).

A step's `x_t` is its run's state: `inpaint` edits it in place, and the run goes on from the edit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from model.samplers import Sampler, Step, StepGenerator, initial_noise, make_generator
from model.schedule import NoiseSchedule


def kept_steps(steps: int, strength: float) -> int:
    """The steps an SDEdit run of strength s in (0, 1] takes: ceil(steps·s), at least 1 (the product
    rounded to 9 digits first, so that 10 × 0.3 is 3 steps, not 4)."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return max(1, min(steps, math.ceil(round(steps * strength, 9))))


def sdedit_timesteps(grid: list[int], strength: float) -> list[int]:
    """The timesteps an SDEdit run of strength s takes of its sampler's `grid`: the last ceil(steps·s)."""
    return grid[len(grid) - kept_steps(len(grid), strength) :]


def continuation_timesteps(grid: list[int], t: int) -> list[int]:
    """The timesteps a branch with other settings takes from timestep t: t, then the grid below it."""
    return [t, *(s for s in grid if s < t)]


def noised(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """x0 noised to timestep t, √ᾱ_t x0 + √(1-ᾱ_t) ε (DDPM eq. 4); t = -1 is x0 itself."""
    if t < 0:
        return x0.expand_as(noise).clone()
    abar = schedule.alphas_cumprod[t]
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def start(
    sampler: Sampler,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    steps: int,
    generator: torch.Generator | None,
    params: dict,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
) -> StepGenerator:
    """The run of `sampler` from x_T (not modified), or, with `init` (an image (C, H, W) in [-1, 1]) and
    strength < 1, SDEdit's: from `init` noised with x_T to the first of the timesteps it takes."""
    if init is None or strength >= 1:
        return sampler.make(schedule, x_T.clone(), steps, generator, **params)
    tail = sdedit_timesteps(sampler.timesteps(schedule, steps, params), strength)
    x = noised(schedule, init, x_T, tail[0])
    return sampler.make(schedule, x, steps, generator, timesteps=tail, **params)


def inpaint(
    run: StepGenerator, schedule: NoiseSchedule, known: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor
) -> StepGenerator:
    """`run` with the region where `keep` is true (broadcast over the batch and channels) replaced,
    after every step and at the start, by `known` noised to the step's t with `noise` (the run's x_T);
    the final image holds `known` there exactly."""
    step = next(run)
    while True:
        step.x_t.copy_(torch.where(keep, noised(schedule, known, noise, step.t), step.x_t))
        eps = yield step
        if step.done:
            return
        step = run.send(eps)


def continuation(
    sampler: Sampler, schedule: NoiseSchedule, steps: int, generator: torch.Generator | None, params: dict
) -> Callable[[Step], StepGenerator]:
    """What a branch with other settings runs from the step it branches at: `sampler` over its grid
    for `steps`, cut to the timesteps below the step's t, from the step's x_t at its t."""

    def run(step: Step) -> StepGenerator:
        timesteps = continuation_timesteps(sampler.timesteps(schedule, steps, params), step.t)
        return sampler.make(schedule, step.x_t, steps, generator, timesteps=timesteps, **params)

    return run


def branch(origin: StepGenerator, at_step: int, then: Callable[[Step], StepGenerator] | None) -> StepGenerator:
    """`origin`'s first `at_step` steps, then `then(step)`'s run from the state they reach (None: the
    origin itself goes on). The steps are numbered on from at_step: the continuation's i-th step is
    at_step + i of at_step + its steps. A branch at the origin's last step is its final image."""
    step = next(origin)
    while step.index < at_step and not step.done:
        eps = yield step
        step = origin.send(eps)
    if then is None or step.done:
        run, offset = origin, 0
    else:
        run, offset = then(step), at_step
    inner = step if run is origin else next(run)
    while True:
        out = inner if offset == 0 else Step(offset + inner.index, offset + inner.total, inner.t, inner.x_t, inner.x0)
        if out.x0 is None:
            out.x0 = step.x0
        eps = yield out
        if out.done:
            return
        inner = run.send(eps)


def slerp(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """n points from a to b (each of shape (1, …)) along the great circle between them, evenly in
    angle: a row (n, …) whose first is a and last is b exactly. Computed in float64."""
    if n < 2:
        raise ValueError(f"an interpolation needs at least 2 points, got {n}")
    a64, b64 = a.double(), b.double()
    theta = float(torch.arccos((torch.dot(a64.flatten(), b64.flatten()) / (a64.norm() * b64.norm())).clamp(-1, 1)))
    w = torch.linspace(0, 1, n, dtype=torch.float64).view(n, *[1] * (a.dim() - 1))
    if math.sin(theta) < 1e-6:  # (anti)parallel: the straight line
        row = ((1 - w) * a64 + w * b64).to(a.dtype)
    else:
        row = ((torch.sin((1 - w) * theta) * a64 + torch.sin(w * theta) * b64) / math.sin(theta)).to(a.dtype)
    row[0], row[-1] = a[0], b[0]
    return row


@dataclass(frozen=True, eq=False)
class Plan:
    """A run, resolved once: its sampler with every parameter's value (Sampler.resolve), its start and,
    for a branch, the run it replays. Its `timesteps` say how long it is before it runs; `begin` makes
    its step generator."""

    sampler: Sampler
    schedule: NoiseSchedule
    steps: int
    params: dict
    n: int
    seed: int
    init_image: torch.Tensor | None = None  # (C, H, W) in [-1, 1]: SDEdit's start and inpainting's known image
    strength: float = 1.0
    mask: torch.Tensor | None = None  # (1, H, W), True where the image is repainted
    interpolate_to: int | None = None  # the images are a row from seed's x_T to this seed's
    temperature: float = 1.0  # x_T is scaled by it: below 1, smoother and more typical images
    branch: tuple[Plan, int] | None = None  # (origin, at_step): replay origin to at_step, then go on as this plan

    @cached_property
    def timesteps(self) -> list[int]:
        """The timesteps the run visits, its x_T's first and -1 (the final image) last: one more than its steps."""
        if self.sampler.grid is None:  # a sampler registered without one: its steps, plainly
            return [0] * self.steps + [-1]
        grid = self.sampler.timesteps(self.schedule, self.steps, self.params)
        if self.branch is None:
            return [*sdedit_timesteps(grid, self.strength), -1]
        origin, at_step = self.branch
        if self.same_run(origin) or origin.timesteps[at_step] < 0:
            return origin.timesteps
        return [*origin.timesteps[:at_step], *continuation_timesteps(grid, origin.timesteps[at_step]), -1]

    @property
    def steps_taken(self) -> int:
        """The steps the run takes, replayed ones included."""
        return len(self.timesteps) - 1

    def same_run(self, other: Plan) -> bool:
        return (self.sampler.name, self.steps, self.params) == (other.sampler.name, other.steps, other.params)

    def begin(self, device: torch.device, image_shape: tuple) -> tuple[StepGenerator, torch.Generator]:
        """The run's step generator from x_T drawn from the seed(s), and the generator it draws from."""
        root = self  # the run a chain of branches starts from: it holds the start
        while root.branch is not None:
            root = root.branch[0]
        generator = make_generator(root.seed, device)
        if root.interpolate_to is None:
            x = initial_noise((root.n, *image_shape), generator, device)
        else:  # each end is its seed's own 1-image x_T
            x = initial_noise((1, *image_shape), generator, device)
            end = initial_noise((1, *image_shape), make_generator(root.interpolate_to, device), device)
            x = slerp(x, end, root.n)
        x = x * root.temperature
        run = self._run(x, generator, device)
        if root.mask is not None:
            known, keep = (t.to(device) for t in (root.init_image, ~root.mask))
            run = inpaint(run, self.schedule, known, keep, x)
        return run, generator

    def _run(self, x: torch.Tensor, generator: torch.Generator, device: torch.device) -> StepGenerator:
        """The step generator from the root's x_T: SDEdit's start, and each branch's replay."""
        if self.branch is None:
            init = None if self.init_image is None else self.init_image.to(device)
            return start(self.sampler, self.schedule, x, self.steps, generator, self.params, init, self.strength)
        origin, at_step = self.branch
        then = None
        if not self.same_run(origin):
            then = continuation(self.sampler, self.schedule, self.steps, generator, self.params)
        return branch(origin._run(x, generator, device), at_step, then)
