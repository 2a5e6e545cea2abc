import itertools
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from conftest import tiny_unet
from model.samplers import (
    SAMPLERS,
    SOLVER_SPACINGS,
    Param,
    Sampler,
    ddim_step,
    ddim_steps,
    ddim_timesteps,
    ddpm_step,
    ddpm_steps,
    denoise,
    dpm_solver_pp_steps,
    get_sampler,
    guided_eps,
    initial_noise,
    make_generator,
    register,
    sample,
    sampling_run,
    solver_timesteps,
    threshold_x0,
    unipc_steps,
)
from model.schedule import NoiseSchedule, linear_betas

SCHEDULE = NoiseSchedule.from_name("linear", 1000)


@pytest.fixture(autouse=True)
def same_noise_whatever_ran_before():
    """Every test draws its x_T from the same seed, so that a tolerance holds in any selection and order."""
    torch.manual_seed(0)


X0 = torch.linspace(-1.3, 1.3, 36).reshape(1, 1, 6, 6)  # a little outside [-1, 1], so that thresholding acts
# Our thresholdings as diffusers' schedulers spell them: DDPMScheduler and DDIMScheduler have clip_sample;
# the solvers only dynamic thresholding, whose s clamped to [1, ∞) is Imagen's and to [1, 1] plain clipping.
DDPM_DDIM_THRESHOLDING = {
    "none": {"clip_sample": False},
    "clip": {"clip_sample": True},
    "dynamic": {"clip_sample": False, "thresholding": True, "sample_max_value": float("inf")},
}
SOLVER_THRESHOLDING = {
    "none": {},
    "clip": {"thresholding": True, "sample_max_value": 1.0},
    "dynamic": {"thresholding": True, "sample_max_value": float("inf")},
}


def fake_eps(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for ε_θ: the true noise of x_t for a fixed image, plus an error that
    depends on x and t, so that x stays in the range of images as it does with a trained model."""
    abar = SCHEDULE.alphas_cumprod[torch.as_tensor(t).long()].reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (x - abar.sqrt() * X0.to(x.dtype)) / (1 - abar).sqrt() + 0.1 * torch.sin(3 * x + abar)


# --- timestep lists (the off-by-one bugs live here) -------------------------------------------


def test_ddim_leading_timesteps_for_50_steps():
    ts = ddim_timesteps(1000, 50, "leading")
    assert ts == list(range(980, -1, -20))
    assert (ts[0], ts[-1], len(ts)) == (980, 0, 50)


def test_ddim_trailing_timesteps_for_50_steps():
    ts = ddim_timesteps(1000, 50, "trailing")
    assert ts == list(range(999, 0, -20))
    assert (ts[0], ts[-1]) == (999, 19)


def test_ddim_quadratic_timesteps_follow_the_ddim_code():
    ts = ddim_timesteps(1000, 10, "quadratic")
    expected = sorted((int(s) for s in np.linspace(0, np.sqrt(800), 10) ** 2), reverse=True)
    assert ts == expected
    assert (ts[0], ts[-1]) == (800, 0)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "quadratic"])
@pytest.mark.parametrize("steps", [1, 7, 10, 20, 50, 100, 333])
def test_timesteps_are_distinct_descending_and_in_range(spacing, steps):
    ts = ddim_timesteps(1000, steps, spacing)
    assert len(ts) == steps
    assert all(a > b for a, b in itertools.pairwise(ts))
    assert ts[-1] >= 0 and ts[0] <= 999


def test_full_length_lists_visit_every_timestep():
    assert ddim_timesteps(1000, 1000, "leading") == list(range(999, -1, -1))
    assert ddim_timesteps(1000, 1000, "trailing") == list(range(999, -1, -1))


@pytest.mark.parametrize("bad", [0, -1, 1001])
def test_step_counts_out_of_range_are_rejected(bad):
    with pytest.raises(ValueError, match="steps must be"):
        ddim_timesteps(1000, bad)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_timesteps_match_diffusers(spacing, steps):
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert ddim_timesteps(1000, steps, spacing) == ref.timesteps.tolist()


# --- single steps against diffusers -----------------------------------------------------------


def float64_ddpm_reference(**config) -> DDPMScheduler:
    """diffusers' DDPMScheduler with its schedule in float64. In float32 it derives β_t back as
    1 - ᾱ_t/ᾱ_{t-1}, which loses ~1e-3 of relative precision at small t; in float64 the comparison
    checks the formulas, not that rounding."""
    ref = DDPMScheduler(num_train_timesteps=1000, **config)
    ref.betas = linear_betas(1000)
    ref.alphas = 1 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    ref.set_timesteps(1000)
    return ref


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_posterior_variance_matches_diffusers(variance):
    ref = float64_ddpm_reference(variance_type=variance)
    ours = SCHEDULE.posterior_variance if variance == "fixed_small" else SCHEDULE.betas
    theirs = torch.stack([ref._get_variance(t) for t in range(1000)]).float()
    assert torch.allclose(ours[1:], theirs[1:], rtol=1e-5, atol=1e-10)  # t = 0 adds no noise in either


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("thresholding", ["none", "clip", "dynamic"])
def test_ddpm_every_step_matches_diffusers(variance, thresholding):
    ref = float64_ddpm_reference(variance_type=variance, **DDPM_DDIM_THRESHOLDING[thresholding])
    x = torch.randn(4, 1, 6, 6)
    for t in range(999, -1, -1):
        eps = fake_eps(x, t)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64).float()
        step = ref.step(eps.double(), t, x.double(), generator=torch.Generator().manual_seed(t))
        expected = step.prev_sample.float()
        ours, _ = ddpm_step(SCHEDULE, x, eps, t, variance, noise, thresholding)
        assert torch.allclose(ours, expected, atol=1e-5), f"t={t}"
        x = expected


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("thresholding", ["none", "clip", "dynamic"])
def test_ddim_every_step_matches_diffusers(spacing, steps, eta, thresholding):
    """Thresholded, as the server samples, against DDIMScheduler(clip_sample=True) (or its dynamic
    thresholding) stepping with use_clipped_model_output=True: ε is recomputed from the clipped x0."""
    ref = DDIMScheduler(
        num_train_timesteps=1000,
        timestep_spacing=spacing,
        set_alpha_to_one=True,
        **DDPM_DDIM_THRESHOLDING[thresholding],
    )
    ref.set_timesteps(steps)
    timesteps = ddim_timesteps(1000, steps, spacing)
    x = torch.randn(4, 1, 6, 6)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < steps else -1
        eps = fake_eps(x, t)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        expected = ref.step(
            eps, t, x, eta=eta, use_clipped_model_output=True, generator=torch.Generator().manual_seed(i)
        ).prev_sample
        ours, _ = ddim_step(SCHEDULE, x, eps, t, t_prev, eta, noise, thresholding)
        assert torch.allclose(ours, expected, atol=1e-5), f"step {i}, t={t}"
        x = expected


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_generator_matches_a_diffusers_loop(eta):
    """The whole generator, its own noise draws included, against diffusers' loop with the same generator."""
    ref = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(20)
    x_T = torch.randn(2, 1, 6, 6)
    g_ref = torch.Generator().manual_seed(7)
    x = x_T
    expected = []
    for t in ref.timesteps:
        x = ref.step(fake_eps(x, t), t, x, eta=eta, generator=g_ref).prev_sample
        expected.append(x)
    steps = ddim_steps(SCHEDULE, x_T, ddim_timesteps(1000, 20), eta, make_generator(7))
    got = [s.x_t for s in denoise(steps, fake_eps)]
    assert len(got) == 20
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# --- the multistep solvers against diffusers ----------------------------------------------------


def float64_solver_reference(scheduler_class, steps: int, spacing: str, **config):
    """diffusers' solver with its schedule in float64. set_timesteps stores its σ in float32; they are
    computed again here in float64, as set_timesteps computes them (its own Karras conversion included)."""
    ref = scheduler_class(
        num_train_timesteps=1000,
        timestep_spacing="linspace" if spacing == "karras" else spacing,
        use_karras_sigmas=spacing == "karras",
        **config,
    )
    abar = torch.cumprod(1 - linear_betas(1000), 0)
    ref.alphas_cumprod = abar
    ref.set_timesteps(steps)
    sigmas = ((1 - abar) / abar).sqrt().numpy()
    if spacing == "karras":
        sigmas = ref._convert_to_karras(in_sigmas=np.flip(sigmas).copy(), num_inference_steps=steps)
    else:
        sigmas = sigmas[ref.timesteps.numpy()]
    ref.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]))
    return ref


def diffusers_run(ref, x_T: torch.Tensor) -> list[torch.Tensor]:
    """x after every step of diffusers' loop, in float64."""
    x, out = x_T.double(), []
    for t in ref.timesteps:
        x = ref.step(fake_eps(x, t), t, x).prev_sample
        out.append(x)
    return out


def assert_runs_agree(ours: list[torch.Tensor], theirs: list[torch.Tensor], atol: float = 1e-5) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        err = (a.double() - b).abs().max().item()
        assert err < atol, f"step {i + 1}: {err:.1e}"


@pytest.mark.parametrize("spacing", SOLVER_SPACINGS)
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_solver_timesteps_match_diffusers(spacing, steps):
    for scheduler_class in (DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        ref = float64_solver_reference(scheduler_class, steps, spacing)
        timesteps, sigmas = solver_timesteps(SCHEDULE, steps, spacing)
        assert timesteps == ref.timesteps.tolist()
        np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=1e-6)


@pytest.mark.parametrize("spacing", SOLVER_SPACINGS)
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("thresholding", ["none", "clip", "dynamic"])
def test_dpm_solver_pp_every_step_matches_diffusers(spacing, steps, thresholding):
    """DPM-Solver++(2M): DPMSolverMultistepScheduler's defaults (dpmsolver++, order 2, midpoint, lower
    order at the final step, which lands on σ = 0)."""
    ref = float64_solver_reference(DPMSolverMultistepScheduler, steps, spacing, **SOLVER_THRESHOLDING[thresholding])
    x_T = torch.randn(4, 1, 6, 6)
    ours = dpm_solver_pp_steps(x_T, *solver_timesteps(SCHEDULE, steps, spacing), 2, thresholding)
    assert_runs_agree([s.x_t for s in denoise(ours, fake_eps)], diffusers_run(ref, x_T))


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("spacing", SOLVER_SPACINGS)
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("thresholding", ["none", "clip", "dynamic"])
def test_unipc_every_step_matches_diffusers(order, spacing, steps, thresholding):
    """UniPC: UniPCMultistepScheduler's defaults (bh2, data prediction, the corrector at every step but
    the last, lower order at the final steps)."""
    ref = float64_solver_reference(
        UniPCMultistepScheduler, steps, spacing, solver_order=order, **SOLVER_THRESHOLDING[thresholding]
    )
    # On Karras' uneven steps the predictor-corrector extrapolates from predictions that lie close
    # together in λ and amplifies float32 rounding (order 2: ~1e-5, order 3: ~4e-5): compared in float64.
    dtype = torch.float64 if spacing == "karras" else torch.float32
    x_T = torch.randn(4, 1, 6, 6)
    ours = unipc_steps(x_T.to(dtype), *solver_timesteps(SCHEDULE, steps, spacing), order, thresholding)
    assert_runs_agree([s.x_t for s in denoise(ours, fake_eps)], diffusers_run(ref, x_T))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_first_order_dpm_solver_pp_is_ddim(spacing):
    """Lu et al.: DPM-Solver++ of order 1 is DDIM (η = 0), step for step, on the same timesteps."""
    timesteps, sigmas = solver_timesteps(SCHEDULE, 10, spacing)
    x_T = torch.randn(2, 1, 6, 6)
    dpm = [s.x_t for s in denoise(dpm_solver_pp_steps(x_T, timesteps, sigmas, 1, "clip"), fake_eps)]
    ddim = [s.x_t for s in denoise(ddim_steps(SCHEDULE, x_T, timesteps, 0.0, None, "clip"), fake_eps)]
    assert_runs_agree(dpm, [x.double() for x in ddim])


def test_thresholding_clips_or_rescales_each_image():
    x0 = torch.stack([torch.linspace(-3, 3, 1000), torch.linspace(-0.5, 0.5, 1000)]).view(2, 1, 10, 100)
    assert threshold_x0(x0, "clip").abs().max() == 1
    dynamic = threshold_x0(x0, "dynamic")
    # the first image: |x0| above its 99.5th percentile (≈2.99) is clamped, then all of it divided by it;
    # the second lies inside [-1, 1], where s = 1 leaves it alone
    s = x0[0].abs().flatten().quantile(0.995)
    torch.testing.assert_close(dynamic[0], x0[0].clamp(-s, s) / s)
    torch.testing.assert_close(dynamic[1], x0[1])
    assert torch.equal(threshold_x0(x0, "none"), x0)
    with pytest.raises(ValueError, match="thresholding"):
        threshold_x0(x0, "soft")


# --- the sampler table ------------------------------------------------------------------------------


def test_the_table_offers_the_four_samplers_with_their_defaults():
    assert list(SAMPLERS) == ["ddpm", "ddim", "dpm-solver++", "unipc"]
    assert [SAMPLERS[name].steps_for(1000) for name in SAMPLERS] == [1000, 50, 10, 10]
    info = json.loads(json.dumps([sampler.info() for sampler in SAMPLERS.values()]))  # what GET /config sends
    eta = next(p for p in info[1]["params"] if p["name"] == "eta")
    assert eta == {
        "name": "eta", "type": "number", "default": 0.0, "minimum": 0.0, "maximum": 1.0, "choices": None,
        "description": eta["description"],
    }  # fmt: skip
    for entry in info:
        assert entry["description"].endswith(".") and entry["evals_per_step"] == 1
        for p in entry["params"]:
            assert p["description"] and (p["choices"] is None or p["default"] in p["choices"])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_driven_by_a_perfect_eps_ends_at_x0(name):
    """With the true noise of a known x0 every sampler, at its default parameters, lands on that x0."""
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    x = sample(sampling_run(name, SCHEDULE, torch.randn_like(x0), 10, make_generator(0)), oracle_eps(x0))
    assert torch.allclose(x, x0, atol=1e-4), name


def test_parameters_are_checked_strictly():
    ddim = get_sampler("ddim")
    assert ddim.resolve({}) == {"eta": 0.0, "spacing": "leading", "thresholding": "clip"}
    assert ddim.resolve({"eta": 1}) == {"eta": 1.0, "spacing": "leading", "thresholding": "clip"}  # an int is a float
    for bad, message in [
        ({"eta": 1.5}, "eta must be at least 0 and at most 1"),
        ({"eta": True}, "eta must be a finite number"),
        ({"eta": "0.5"}, "eta must be a finite number"),
        ({"eta": float("nan")}, "eta must be a finite number"),
        ({"spacing": "karras"}, "spacing must be one of leading, trailing, quadratic"),
        ({"order": 2}, "ddim has no parameter 'order'"),
    ]:
        with pytest.raises(ValueError, match=message):
            ddim.resolve(bad)
    order = get_sampler("unipc").param("order")
    assert order.parse("3") == 3
    with pytest.raises(ValueError, match="order must be one of 1, 2, 3"):
        order.parse("4")
    with pytest.raises(ValueError, match="order must be an integer"):
        order.parse("two")
    assert Param("fast", bool, False, "a flag").parse("yes") is True
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        get_sampler("euler")


def test_registering_a_sampler_adds_it_to_the_table():
    extra = Sampler("ddim-trailing", "DDIM, trailing", "DDIM on trailing timesteps.",
                    lambda schedule, x, steps, generator: ddim_steps(
                        schedule, x, ddim_timesteps(schedule.num_timesteps, steps, "trailing")),
                    default_steps=7)  # fmt: skip
    try:
        register(extra)
        run = sampling_run("ddim-trailing", SCHEDULE, torch.randn(1, 1, 4, 4))
        assert next(run).total == 7
        with pytest.raises(ValueError, match="default"):
            register(Sampler("bad", "Bad", "A bad default.", extra.make, (Param("k", int, 0, "k", minimum=1),)))
    finally:
        SAMPLERS.pop("ddim-trailing", None)
        SAMPLERS.pop("bad", None)


# --- whole runs -------------------------------------------------------------------------------


def oracle_eps(x0: torch.Tensor):
    """The true noise of x_t given the known x0: a perfect noise predictor."""

    def eps(x_t, t):
        abar = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    return eps


def test_ddim_eta0_with_the_oracle_eps_ends_at_x0():
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    for spacing in ("leading", "trailing", "quadratic"):
        x = sample(ddim_steps(SCHEDULE, torch.randn_like(x0), ddim_timesteps(1000, 10, spacing)), oracle_eps(x0))
        assert torch.allclose(x, x0, atol=1e-4), spacing


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_with_the_oracle_eps_ends_at_x0(variance):
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    steps = ddpm_steps(SCHEDULE, torch.randn_like(x0), variance=variance, generator=make_generator(0))
    assert torch.allclose(sample(steps, oracle_eps(x0)), x0, atol=1e-4)


def test_respaced_ddpm_with_the_oracle_eps_ends_at_x0():
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    steps = ddpm_steps(SCHEDULE, torch.randn_like(x0), steps=25, generator=make_generator(0))
    assert torch.allclose(sample(steps, oracle_eps(x0)), x0, atol=1e-4)


def test_steps_report_index_timestep_and_prediction():
    x0 = torch.zeros(1, 1, 4, 4)
    ts = ddim_timesteps(1000, 5)
    gen = ddim_steps(SCHEDULE, torch.randn(1, 1, 4, 4), ts)
    first = next(gen)
    assert (first.index, first.total, first.t, first.x0) == (0, 5, ts[0], None)
    steps = list(denoise(ddim_steps(SCHEDULE, torch.randn(1, 1, 4, 4), ts), oracle_eps(x0)))
    assert [s.index for s in steps] == [1, 2, 3, 4, 5]
    assert [s.t for s in steps] == [*ts[1:], -1]
    assert steps[-1].done and not steps[-2].done
    assert all(torch.allclose(s.x0, x0, atol=1e-4) for s in steps)  # the oracle predicts x0 exactly
    ddpm = list(denoise(ddpm_steps(SCHEDULE, torch.randn(1, 1, 4, 4), steps=4), oracle_eps(x0)))
    assert [s.t for s in ddpm] == [749, 499, 249, -1]  # trailing: 999, 749, 499, 249


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = tiny_unet(num_classes=10)

    def run(seed, eta):
        g = make_generator(seed)
        x = initial_noise((2, 1, 28, 28), g)
        labels = torch.tensor([3, 10])
        with torch.inference_mode():
            return sample(
                ddim_steps(SCHEDULE, x, ddim_timesteps(1000, 5), eta, g),
                lambda x, t: guided_eps(model, x, t, labels, 2.0),
            )

    assert torch.equal(run(1, 1.0), run(1, 1.0))
    assert torch.equal(run(1, 0.0), run(1, 0.0))
    assert not torch.allclose(run(1, 1.0), run(2, 1.0))


def test_guidance_blends_the_conditional_and_unconditional_eps():
    model = tiny_unet(num_classes=10)
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([10, 200, 500, 900])
    labels = torch.tensor([0, 3, 7, 9])
    null = torch.full_like(labels, model.null_label)
    with torch.inference_mode():
        cond, uncond = model(x, t, labels), model(x, t, null)
        assert not torch.allclose(cond, uncond, atol=1e-4)  # the label matters
        assert torch.allclose(guided_eps(model, x, t, labels, 0.0), uncond, atol=1e-5)
        assert torch.allclose(guided_eps(model, x, t, labels, 1.0), cond, atol=1e-5)
        assert torch.allclose(guided_eps(model, x, t, labels, 3.0), uncond + 3 * (cond - uncond), atol=1e-4)
        # per-sample guidance, and the null label needs no second half
        mixed = guided_eps(model, x, t, torch.tensor([0, 3, 10, 9]), torch.tensor([0.0, 1.0, 5.0, 3.0]))
        assert torch.allclose(mixed[0], uncond[0], atol=1e-5)
        assert torch.allclose(mixed[1], cond[1], atol=1e-5)
        assert torch.allclose(mixed[2], uncond[2], atol=1e-5)
        assert torch.allclose(mixed[3], uncond[3] + 3 * (cond[3] - uncond[3]), atol=1e-4)


def test_guidance_runs_one_batched_forward():
    model = tiny_unet(num_classes=10)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.inference_mode():
        guided_eps(model, torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3]), torch.tensor([1, 2, 10]), 2.0)
    assert calls == [5]  # 3 conditional/unconditional rows + the 2 unconditional halves


def test_bad_sampler_arguments_are_rejected():
    with pytest.raises(ValueError, match="eta"):
        next(ddim_steps(SCHEDULE, torch.randn(1, 1, 4, 4), [10, 0], eta=1.5))
    with pytest.raises(ValueError, match="variance"):
        ddpm_step(SCHEDULE, torch.zeros(1), torch.zeros(1), 5, "learned", torch.zeros(1))


def test_a_sampler_says_when_its_run_draws_fresh_noise():
    """Interpolating between seeds needs images that are a function of x_T alone: the table says which
    samplers draw noise after it (DDPM always, DDIM when eta > 0), as data GET /config publishes."""
    ddpm, ddim, solver = SAMPLERS["ddpm"], SAMPLERS["ddim"], SAMPLERS["dpm-solver++"]
    assert ddpm.draws_noise(ddpm.resolve({})) and ddpm.info()["stochastic"] is True
    assert not ddim.draws_noise(ddim.resolve({})) and ddim.draws_noise(ddim.resolve({"eta": 0.2}))
    assert ddim.info()["stochastic"] == "eta"
    assert not solver.draws_noise(solver.resolve({})) and solver.info()["stochastic"] is False
