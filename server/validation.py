"""From a well-formed request to a JobSpec: the checks that depend on the server's limits, on the
chosen model and on the chosen sampler's parameters (the sampler table), and the defaults. Errors have
the shape of pydantic's ({type, loc, msg, input}), so a client handles a 422 the same way whichever
check refused it."""

from __future__ import annotations

import secrets
from dataclasses import replace

import numpy as np
import torch

from model import editing
from model.samplers import SAMPLERS, Sampler
from server import images
from server.errors import InvalidRequest
from server.loop import BranchSpec, JobSpec
from server.registry import LoadedModel, ModelRegistry
from server.schemas import SampleRequest, StreamRequest
from server.settings import Settings


def default_sampler(model: LoadedModel, settings: Settings) -> str:
    """The sampler of a request that names none: its model's, else the server's."""
    return model.default_sampler or settings.default_sampler


def default_steps(sampler: Sampler, model: LoadedModel, settings: Settings) -> int:
    """The steps of a request that gives none: those its model or the server pairs with this sampler
    when it is their default, else the sampler's own (all T for DDPM)."""
    if sampler.name == model.default_sampler and model.default_steps:
        return model.default_steps
    if sampler.name == settings.default_sampler and settings.default_steps and not model.default_sampler:
        return settings.default_steps
    return sampler.steps_for(model.schedule.num_timesteps)


def resolve(request: SampleRequest, registry: ModelRegistry, settings: Settings) -> JobSpec:
    """The job a valid request asks for, or InvalidRequest listing everything wrong with it."""
    origin = None
    if request.branch is not None:  # the original run first: the branch starts from it
        try:
            origin = resolve(request.branch.origin, registry, settings)
        except InvalidRequest as e:
            raise InvalidRequest([{**error, "loc": ["branch", "from", *error["loc"]]} for error in e.errors]) from None
        if request.model is None:
            request = request.model_copy(update={"model": origin.model.name})
    model = registry.get(request.model)
    if model is None:
        loaded = ", ".join(sorted(registry.models)) or "none"
        raise InvalidRequest([_error("model", "unknown_model", f"unknown model; loaded: {loaded}", request.model)])

    errors = []
    name = request.sampler or default_sampler(model, settings)
    sampler = SAMPLERS.get(name)
    params, steps = {}, request.steps or 1
    if sampler is None:
        errors.append(
            _error("sampler", "unknown_sampler", f"unknown sampler; choose one of {', '.join(SAMPLERS)}", name)
        )
        errors += [_error(key, "extra_forbidden", "Extra inputs are not permitted", v) for key, v in _extra(request)]
    elif model.own_sampling and (
        sampler.name != model.default_sampler or request.steps not in (None, model.default_steps)
    ):
        message = f"{model.name} is distilled for {model.default_sampler} with {model.default_steps} steps only"
        if sampler.name != model.default_sampler:
            errors.append(_error("sampler", "distilled_model", message, name))
        else:
            errors.append(_error("steps", "distilled_model", message, request.steps))
    else:
        params, param_errors = _params(sampler, request, model)
        errors += param_errors
        timesteps = model.schedule.num_timesteps
        max_steps = min(sampler.max_steps(timesteps), settings.max_steps)
        steps = request.steps or min(default_steps(sampler, model, settings), max_steps)
        if steps > max_steps:
            limits = f"{sampler.name} on a model of T = {timesteps} takes {sampler.max_steps(timesteps)}"
            limits += f", the server allows {settings.max_steps}"
            errors.append(_error("steps", "less_than_equal", f"at most {max_steps} steps ({limits})", steps))
    n = request.n if "n" in request.model_fields_set else min(request.n, settings.max_n)  # the default fits
    if n > settings.max_n:
        errors.append(_error("n", "less_than_equal", f"at most {settings.max_n} images per request", n))
    label = request.label
    if label is not None and not model.num_classes:
        errors.append(
            _error("label", "unconditional_model", f"{model.name} is unconditional: label must be null", label)
        )
    elif label is not None and label >= model.num_classes:
        errors.append(_error("label", "less_than", f"{model.name} has classes 0 … {model.num_classes - 1}", label))
    guidance = settings.default_guidance if request.guidance is None else request.guidance
    if guidance > settings.max_guidance:
        errors.append(_error("guidance", "less_than_equal", f"at most {settings.max_guidance:g}", guidance))
    if model.num_classes and not model.guidance:  # no unconditional class: labels, but no guidance
        if request.guidance not in (None, 1):
            message = f"{model.name} has no unconditional class: classifier-free guidance must be null or 1"
            errors.append(_error("guidance", "no_guidance", message, request.guidance))
        guidance = 1.0
    preview_size = getattr(request, "preview_size", None) or settings.preview_size
    if preview_size > settings.preview_size:
        message = f"at most {settings.preview_size} (the server's preview_size)"
        errors.append(_error("preview_size", "less_than_equal", message, preview_size))
    if errors:
        raise InvalidRequest(errors)

    spec = JobSpec(
        model=model,
        sampler=sampler.name,
        steps=steps,
        n=n,
        seed=secrets.randbelow(2**32) if request.seed is None else request.seed,
        params=params,
        label=request.label,
        guidance=guidance if request.label is not None else None,
        every=request.every if isinstance(request, StreamRequest) else 0,
        preview_size=preview_size,
    )
    if origin is not None:
        return _branch(request, spec, origin)
    return _editing(request, spec, sampler, settings)


# --- SDEdit, inpainting, interpolation and branches (model.editing) ---------------------------------


def _editing(request: SampleRequest, spec: JobSpec, sampler: Sampler, settings: Settings) -> JobSpec:
    """`spec` with the request's init_image, strength, mask and interpolate_to, checked."""
    errors, model = [], spec.model
    image = mask = None
    if request.init_image is not None:
        image, error = _image(request.init_image, "init_image", model, model.image_shape[0], settings)
        errors += error
        if sampler.grid is None and request.strength != 1:
            message = f"strength other than 1 needs a sampler with a timestep grid; {sampler.name} has none"
            errors.append(_error("strength", "unsupported", message, request.strength))
    elif request.strength != 1:
        message = "strength other than 1 needs init_image (the image to start from)"
        errors.append(_error("strength", "missing_init_image", message, request.strength))
    if request.mask is not None:
        if request.init_image is None:
            message = "mask needs init_image (the image whose unmasked pixels are kept)"
            errors.append(_error("mask", "missing_init_image", message, request.mask))
        else:
            grey, error = _image(request.mask, "mask", model, 1, settings)
            errors += error
            mask = None if grey is None else torch.from_numpy(np.rint(grey * 255) >= 128)  # True: repainted
    if request.interpolate_to is not None:
        if spec.n < 2:
            message = "interpolate_to needs n of at least 2 (a row from seed to interpolate_to)"
            errors.append(_error("n", "interpolation_too_short", message, spec.n))
        if sampler.stochastic(spec.params):
            why = "eta > 0 draws fresh noise" if sampler.name == "ddim" else "it draws fresh noise at every step"
            message = (
                f"interpolate_to needs a deterministic sampler, and {sampler.name} is not ({why}): "
                "choose ddim with eta 0, dpm-solver++ or unipc"
            )
            errors.append(_error("interpolate_to", "stochastic_sampler", message, request.interpolate_to))
        if model.num_classes and not model.guidance and request.label is None:
            message = f"interpolate_to on {model.name} needs a label (it draws a class per image without one)"
            errors.append(_error("interpolate_to", "needs_label", message, request.interpolate_to))
    if errors:
        raise InvalidRequest(errors)
    init = None if image is None else torch.from_numpy(image * 2 - 1)
    strength = request.strength if image is not None else 1.0
    spec = replace(spec, init_image=init, strength=strength, mask=mask, interpolate_to=request.interpolate_to)
    return replace(spec, total=steps_taken(spec))


BRANCH_INHERITS = ("model", "n", "seed", "init_image", "strength", "mask", "interpolate_to")


def _branch(request: SampleRequest, spec: JobSpec, origin: JobSpec) -> JobSpec:
    """`spec` continuing `origin` at request.branch.at_step: its start is origin's."""
    errors, sent = [], request.branch.origin
    while sent.branch is not None:  # the request that holds the start
        sent = sent.branch.origin
    start = {**sent.model_dump(include=set(BRANCH_INHERITS)), "model": origin.model.name, "n": origin.n}
    start["seed"] = origin.seed
    for field in BRANCH_INHERITS:
        if field in request.model_fields_set and getattr(request, field) != start[field]:
            message = f"a branch starts from branch.from's {field}: leave {field} out, or send the same"
            errors.append(_error(field, "branch_start", message, getattr(request, field)))
    if sent.seed is None:
        message = "branch.from needs its seed (the original run's, as its start message reported it)"
        errors.append({**_error("seed", "missing_seed", message, None), "loc": ["branch", "from", "seed"]})
    at_step, total = request.branch.at_step, steps_taken(origin)
    if at_step > total:
        message = f"the original run takes {total} steps: at_step must be 0 … {total}"
        errors.append({**_error("at_step", "less_than_equal", message, at_step), "loc": ["branch", "at_step"]})
    if SAMPLERS[spec.sampler].grid is None and not spec.same_run(origin):
        message = f"{spec.sampler} has no timestep grid: a branch may only continue it unchanged"
        errors.append(_error("sampler", "unsupported", message, spec.sampler))
    if errors:
        raise InvalidRequest(errors)
    spec = replace(
        spec,
        n=origin.n,
        seed=origin.seed,
        init_image=origin.init_image,
        strength=origin.strength,
        mask=origin.mask,
        interpolate_to=origin.interpolate_to,
        branch=BranchSpec(origin, at_step),
    )
    return replace(spec, total=steps_taken(spec))


def run_timesteps(spec: JobSpec) -> list[int]:
    """The timesteps a run visits, its x_T's first and -1 (the final image) last: one more than its
    steps. As model.editing.start and .branch take them."""
    sampler = SAMPLERS[spec.sampler]
    if sampler.grid is None:  # a sampler registered without one: its steps, plainly
        return [0] * spec.steps + [-1]
    grid = sampler.timesteps(spec.model.schedule, spec.steps, sampler.resolve(spec.params))
    if spec.branch is None:
        return [*editing.sdedit_timesteps(grid, spec.strength), -1]
    before, at_step = run_timesteps(spec.branch.origin), spec.branch.at_step
    if spec.same_run(spec.branch.origin) or before[at_step] < 0:
        return before
    return [*before[:at_step], *editing.continuation_timesteps(grid, before[at_step]), -1]


def steps_taken(spec: JobSpec) -> int:
    return len(run_timesteps(spec)) - 1


def _image(text: str, field: str, model: LoadedModel, channels: int, settings: Settings):
    """The request's PNG as (channels, H, W) in [0, 1], and the errors."""
    try:
        size = model.image_shape[-1]
        return images.decode_image(text, settings.max_init_image_bytes, size, channels, model.name), []
    except ValueError as e:
        return None, [_error(field, "invalid_image", f"{field} {e}", text)]


def _extra(request: SampleRequest) -> list[tuple[str, object]]:
    """The request's fields beyond the schema's: the sampler's parameters, it is to be hoped."""
    return list((request.model_extra or {}).items())


def _params(sampler: Sampler, request: SampleRequest, model: LoadedModel) -> tuple[dict, list[dict]]:
    """Every parameter of the sampler (the request's, checked, and the defaults: the model's own, else
    the table's), and the errors."""
    values, errors = {p.name: p.default for p in sampler.params}, []
    values.update(model.param_defaults.get(sampler.name, {}))
    for key, value in _extra(request):
        param = sampler.param(key)
        fixed = model.param_defaults.get(sampler.name, {}) if model.own_sampling else {}
        if key in fixed and value != fixed[key]:
            message = f"{model.name} is distilled for {key} = {fixed[key]!r} only"
            errors.append(_error(key, "distilled_model", message, value))
            continue
        if param is None:
            takes = ", ".join(p.name for p in sampler.params) or "none"
            message = f"Extra inputs are not permitted: {sampler.name} has no parameter {key} (its parameters: {takes})"
            errors.append(_error(key, "extra_forbidden", message, value))
            continue
        try:
            values[key] = param.check(value)
        except ValueError as e:
            errors.append(_error(key, "invalid_parameter", str(e), value))
    return values, errors


def _error(field: str, kind: str, message: str, value) -> dict:
    return {"type": kind, "loc": [field], "msg": message, "input": value}
