"""From a well-formed request to a JobSpec: the checks that depend on the server's limits, on the
chosen model and on the chosen sampler's parameters (the sampler table), and the defaults. Errors have
the shape of pydantic's ({type, loc, msg, input}), so a client handles a 422 the same way whichever
check refused it."""

from __future__ import annotations

import secrets

from model.samplers import SAMPLERS, Sampler
from server.loop import JobSpec
from server.registry import LoadedModel, ModelRegistry
from server.schemas import SampleRequest, StreamRequest
from server.settings import Settings


class InvalidRequest(ValueError):
    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


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

    return JobSpec(
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
