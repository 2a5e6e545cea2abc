"""model.editing: SDEdit's start, replace-known-region inpainting, branches and slerp, with closed-form
checks (an ε-oracle for one known image, against which every sampler lands on that image)."""

from __future__ import annotations

import math

import pytest
import torch

from model import editing
from model.samplers import SAMPLERS, make_generator, sample
from model.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.from_name("linear", 100)
SHAPE = (2, 1, 4, 4)


def x_T(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=make_generator(seed))


def image() -> torch.Tensor:
    return torch.linspace(-0.9, 0.9, 16).view(1, 4, 4)


def oracle(x0: torch.Tensor):
    """The exact ε when the data is the one image x0: ε = (x_t − √ᾱ_t x0) / √(1 − ᾱ_t)."""

    def eps(x, t):
        abar = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    return eps


def smooth_eps(x, t):
    """A made-up ε that depends on x and t, for runs that need not land anywhere."""
    return 0.5 * torch.tanh(x) + 0.001 * t.view(-1, 1, 1, 1)


def run(name: str, x: torch.Tensor, steps: int, seed: int = 1, **params):
    sampler = SAMPLERS[name]
    return sampler.make(SCHEDULE, x, steps, make_generator(seed), **sampler.resolve(params))


@pytest.mark.parametrize(("steps", "strength", "kept"), [(10, 1, 10), (10, 0.3, 3), (10, 0.25, 3), (7, 0.01, 1)])
def test_kept_steps_is_the_ceiling_of_steps_times_strength(steps, strength, kept):
    assert editing.kept_steps(steps, strength) == kept


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_strength_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="strength"):
        editing.kept_steps(10, bad)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_strength_one_is_the_plain_run_and_leaves_x_T_alone(name):
    noise = x_T()
    before = noise.clone()
    sampler = SAMPLERS[name]
    params = sampler.resolve({})
    plain = sample(run(name, noise.clone(), 6), smooth_eps)
    edited = sample(editing.start(sampler, SCHEDULE, noise, 6, make_generator(1), params, image(), 1.0), smooth_eps)
    assert torch.equal(plain, edited)
    assert torch.equal(noise, before)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sdedit_starts_from_the_image_noised_to_the_first_kept_timestep(name):
    sampler, noise, x0 = SAMPLERS[name], x_T(), image()
    params = sampler.resolve({})
    grid = sampler.timesteps(SCHEDULE, 10, params)
    first = next(editing.start(sampler, SCHEDULE, noise, 10, make_generator(1), params, x0, 0.3))
    t = grid[-3]
    abar = SCHEDULE.alphas_cumprod[t]
    assert (first.index, first.total, first.t) == (0, 3, t)
    torch.testing.assert_close(first.x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)


@pytest.mark.parametrize(
    ("name", "params"), [("ddim", {}), ("dpm-solver++", {}), ("unipc", {}), ("ddim", {"eta": 1.0})]
)
@pytest.mark.parametrize("strength", [0.2, 0.7])
def test_sdedit_with_the_exact_eps_returns_the_image(name, params, strength):
    """With the ε of a one-image data set, the ODE samplers (and DDIM's posterior, whatever η) land on it."""
    sampler, x0 = SAMPLERS[name], image()
    params = sampler.resolve(params)
    out = sample(editing.start(sampler, SCHEDULE, x_T(), 10, make_generator(1), params, x0, strength), oracle(x0))
    torch.testing.assert_close(out, x0.expand(SHAPE), atol=1e-4, rtol=0)


def test_small_strength_stays_closer_to_the_image():
    sampler, x0 = SAMPLERS["ddim"], image()
    params = sampler.resolve({})

    def distance(strength):
        out = sample(editing.start(sampler, SCHEDULE, x_T(), 10, None, params, x0, strength), smooth_eps)
        return (out - x0).abs().mean()

    assert distance(0.1) < distance(0.5) < distance(1.0)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_inpainting_keeps_the_known_region_noised_at_every_step_and_exact_at_the_end(name):
    noise, x0 = x_T(), image()
    keep = torch.zeros(1, 4, 4, dtype=torch.bool)
    keep[:, :, :2] = True
    steps = editing.inpaint(run(name, noise.clone(), 5), SCHEDULE, x0, keep, noise)
    step = next(steps)
    while True:
        expected = editing.noised(SCHEDULE, x0, noise, step.t)
        assert torch.equal(step.x_t[..., :2], expected[..., :2])
        if step.done:
            break
        step = steps.send(smooth_eps(step.x_t, torch.full((2,), step.t)))
    assert torch.equal(step.x_t[..., :2], x0.expand(SHAPE)[..., :2])
    assert not torch.equal(step.x_t[..., 2:], x0.expand(SHAPE)[..., 2:])


def drive(steps, eps_fn=smooth_eps):
    """Every step of a run, as (index, total, t, x_t copy)."""
    seen, step = [], next(steps)
    while True:
        seen.append((step.index, step.total, step.t, step.x_t.clone()))
        if step.done:
            return seen
        step = steps.send(eps_fn(step.x_t, torch.full((step.x_t.shape[0],), step.t)))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_branch_that_goes_on_is_the_original_run(name):
    original = drive(run(name, x_T(), 8, eta=0.5) if name == "ddim" else run(name, x_T(), 8))
    again = run(name, x_T(), 8, eta=0.5) if name == "ddim" else run(name, x_T(), 8)
    branched = drive(editing.branch(again, 3, None))
    assert [s[:3] for s in branched] == [s[:3] for s in original]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(original, branched, strict=True))


def test_a_branch_to_the_same_ddim_grid_is_the_original_run():
    """DDIM (η = 0) continued by a fresh run on the rest of its grid is the run itself."""
    sampler = SAMPLERS["ddim"]
    params = sampler.resolve({})
    original = drive(run("ddim", x_T(), 8))
    then = editing.continuation(sampler, SCHEDULE, 8, None, params)
    branched = drive(editing.branch(run("ddim", x_T(), 8), 3, then))
    assert [s[:3] for s in branched] == [s[:3] for s in original]
    torch.testing.assert_close(branched[-1][3], original[-1][3])


def test_a_branch_with_other_settings_takes_the_new_grid_below_the_branch_point():
    ddim = SAMPLERS["ddim"]
    original = drive(run("ddim", x_T(), 10))
    t_k = original[4][2]
    then = editing.continuation(SAMPLERS["unipc"], SCHEDULE, 20, None, SAMPLERS["unipc"].resolve({}))
    branched = drive(editing.branch(run("ddim", x_T(), 10), 4, then))
    grid = SAMPLERS["unipc"].timesteps(SCHEDULE, 20, {})
    expected = [t_k, *(t for t in grid if t < t_k), -1]
    assert [s[2] for s in branched[4:]] == expected
    assert [s[0] for s in branched] == list(range(len(branched)))
    assert {s[1] for s in branched[4:]} == {4 + len(expected) - 1}
    assert torch.equal(branched[4][3], original[4][3])  # the replay reaches the original's x_{t_k}
    assert ddim.name == "ddim"


def test_a_branch_at_the_last_step_is_the_final_image():
    original = drive(run("ddim", x_T(), 5))
    then = editing.continuation(SAMPLERS["ddpm"], SCHEDULE, 50, make_generator(0), SAMPLERS["ddpm"].resolve({}))
    branched = drive(editing.branch(run("ddim", x_T(), 5), 5, then))
    assert branched[-1][:3] == (5, 5, -1) and torch.equal(branched[-1][3], original[-1][3])


def test_slerp_ends_exactly_at_both_points_and_follows_the_great_circle():
    a, b = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    row = editing.slerp(a, b, 5)
    assert row.shape == (5, 3, 8, 8) and torch.equal(row[0], a[0]) and torch.equal(row[-1], b[0])
    e1, e2 = torch.zeros(1, 2), torch.zeros(1, 2)
    e1[0, 0], e2[0, 1] = 2.0, 2.0  # orthogonal, same norm: the midpoint is (e1 + e2)/√2, of the same norm
    torch.testing.assert_close(editing.slerp(e1, e2, 3)[1], torch.tensor([math.sqrt(2), math.sqrt(2)]))
    with pytest.raises(ValueError):
        editing.slerp(a, b, 1)
