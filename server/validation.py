"""From a well-formed request to a JobSpec and its plan (model.editing.Plan): the checks that depend on
the server's limits, on the chosen model and on the chosen sampler's parameters (the sampler table),
and the defaults. The limits and defaults of the fields are their rules' (server.schemas.RULES); the
rest is what ties fields together. Errors have pydantic's shape (server.errors.InvalidRequest)."""

from __future__ import annotations

import secrets
from dataclasses import fields

import numpy as np
import torch

from model import editing
from model.samplers import SAMPLERS, Sampler
from server import images
from server.errors import InvalidRequest
from server.loop import JobSpec
from server.registry import LoadedModel, ModelRegistry
from server.schemas import RULES, START_FIELDS, SampleRequest, Scope
from server.settings import Settings


def resolve(request: SampleRequest, registry: ModelRegistry, settings: Settings, loc: tuple = ()) -> JobSpec:
    """The job a valid request asks for, or InvalidRequest listing everything wrong with it (each error's
    `loc` starting with `loc`, where the request sits in what the client sent)."""
    origin = None
    if request.branch is not None:  # the original run first: the branch starts from it
        origin = resolve(request.branch.origin, registry, settings, (*loc, "branch", "from"))
        if request.model is None:
            request = request.model_copy(update={"model": origin.model.name})
    model = registry.get(request.model)
    if model is None:
        loaded = ", ".join(sorted(registry.models)) or "none"
        _raise([_error("model", "unknown_model", f"unknown model; loaded: {loaded}", request.model)], loc)
    sampler, params, errors = _sampler(request, model, settings)
    values, field_errors = _fields(request, Scope(settings, (model,), sampler))
    _raise(errors + field_errors + _conditioning(request, model, values), loc)
    if origin is None:
        _raise(_start(request, model, sampler, params, values, settings), loc)
    else:
        _raise(_branch(request, origin, (sampler.name, values["steps"], params)), loc)
        values |= {name: getattr(origin.plan, name) for name in START_FIELDS if hasattr(origin.plan, name)}
    if values["seed"] is None:
        values["seed"] = secrets.randbelow(2**32)
    branch = None if origin is None else (origin.plan, request.branch.at_step)
    plan = editing.Plan(sampler, model.schedule, params=params, branch=branch, **_settings(editing.Plan, values))
    return JobSpec(model, plan, origin=origin, **_settings(JobSpec, values))


def _settings(cls, values: dict) -> dict:
    """The values `cls` (a dataclass) takes by the request's names, but its model, sampler and branch."""
    own = ("model", "sampler", "branch")  # a model, a Sampler and a branch where the request has names
    return {f.name: values[f.name] for f in fields(cls) if f.name in values and f.name not in own}


def _raise(errors: list[dict], loc: tuple) -> None:
    if errors:
        raise InvalidRequest(errors, loc)


def _sampler(request: SampleRequest, model: LoadedModel, settings: Settings) -> tuple[Sampler | None, dict, list]:
    """The request's sampler (None if it cannot have it), its parameters and the errors."""
    name = request.sampler or model.default_sampler or settings.default_sampler
    sampler = SAMPLERS.get(name)
    if sampler is None:
        message = f"unknown sampler; choose one of {', '.join(SAMPLERS)}"
        extra = (request.model_extra or {}).items()  # the fields beyond the schema's: the sampler's parameters
        errors = [_error(key, "extra_forbidden", "Extra inputs are not permitted", v) for key, v in extra]
        return None, {}, [_error("sampler", "unknown_sampler", message, name), *errors]
    other_sampler = sampler.name != model.default_sampler
    if model.own_sampling and (other_sampler or request.steps not in (None, model.default_steps)):
        message = f"{model.name} is distilled for {model.default_sampler} with {model.default_steps} steps only"
        field, value = ("sampler", name) if other_sampler else ("steps", request.steps)
        return None, {}, [_error(field, "distilled_model", message, value)]
    return sampler, *_params(sampler, request, model)


def _fields(request: SampleRequest, scope: Scope) -> tuple[dict, list[dict]]:
    """Every field's value, with its rule's default (at most its maximum) where it was not given, and
    the errors of those over their rule's maximum or without the field they need."""
    values, errors = {}, []
    for name, info in type(request).model_fields.items():
        rule, value = RULES[name], getattr(request, name)
        most = None if rule.maximum is None else rule.maximum(scope)
        if rule.default is not None and (value is None or name not in request.model_fields_set):
            value = rule.default(scope, value)
            value = value if most is None or value is None else min(value, most)
        if value is not None and most is not None and value > most:
            errors.append(_error(name, "less_than_equal", rule.over.format(most=most, s=scope), value))
        if rule.needs and value != info.default and getattr(request, rule.needs[0]) is None:
            other = "" if info.default is None else f" other than {info.default:g}"
            message = f"{name}{other} needs {rule.needs[0]} ({rule.needs[1]})"
            errors.append(_error(name, f"missing_{rule.needs[0]}", message, value))
        values[name] = value
    return values, errors


def _conditioning(request: SampleRequest, model: LoadedModel, values: dict) -> list[dict]:
    """The errors of the label and guidance on this model; `values` gets the guidance it samples with."""
    errors = []
    if request.label is not None and not model.num_classes:
        message = f"{model.name} is unconditional: label must be null"
        errors.append(_error("label", "unconditional_model", message, request.label))
    if model.num_classes and not model.guidance:  # no unconditional class: labels, but no guidance
        if request.guidance not in (None, 1):
            message = f"{model.name} has no unconditional class: classifier-free guidance must be null or 1"
            errors.append(_error("guidance", "no_guidance", message, request.guidance))
        values["guidance"] = 1.0
    if request.label is None:
        values["guidance"] = None
    return errors


# --- SDEdit, inpainting, interpolation and branches (model.editing) ---------------------------------


def _start(request, model: LoadedModel, sampler: Sampler, params: dict, values: dict, settings: Settings) -> list:
    """The errors of the request's init_image, strength, mask and interpolate_to; `values` gets the images."""
    errors, values["init_image"], values["mask"] = [], None, None
    if request.init_image is not None:
        image, errors = _image(request.init_image, "init_image", model, model.image_shape[0], settings)
        values["init_image"] = None if image is None else torch.from_numpy(image * 2 - 1)
        if sampler.grid is None and request.strength != 1:
            message = f"strength other than 1 needs a sampler with a timestep grid; {sampler.name} has none"
            errors.append(_error("strength", "unsupported", message, request.strength))
        if request.mask is not None:
            grey, error = _image(request.mask, "mask", model, 1, settings)
            errors += error
            values["mask"] = None if grey is None else torch.from_numpy(np.rint(grey * 255) >= 128)  # True: repainted
    if request.interpolate_to is not None:
        if values["n"] < 2:
            message = "interpolate_to needs n of at least 2 (a row from seed to interpolate_to)"
            errors.append(_error("n", "interpolation_too_short", message, values["n"]))
        if sampler.draws_noise(params):
            noisy = sampler.stochastic  # the table's rule: always (True), or above 0 this parameter
            why = "it draws fresh noise at every step" if noisy is True else f"{noisy} > 0 draws fresh noise"
            message = f"interpolate_to needs a deterministic sampler, and {sampler.name} is not ({why}): choose "
            message += _deterministic_choices()
            errors.append(_error("interpolate_to", "stochastic_sampler", message, request.interpolate_to))
        if model.num_classes and not model.guidance and request.label is None:
            message = f"interpolate_to on {model.name} needs a label (it draws a class per image without one)"
            errors.append(_error("interpolate_to", "needs_label", message, request.interpolate_to))
    return errors


def _deterministic_choices() -> str:
    """'ddim with eta 0, dpm-solver++ or unipc': the table's samplers that can run without fresh noise."""
    names = [
        s.name if s.stochastic is False else f"{s.name} with {s.stochastic} 0"
        for s in SAMPLERS.values()
        if s.stochastic is not True
    ]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _branch(request: SampleRequest, origin: JobSpec, run: tuple) -> list[dict]:
    """The errors of a branch of `origin` that goes on with `run` (its sampler's name, steps and parameters)."""
    errors, sent = [], request.branch.origin
    while sent.branch is not None:  # the request that holds the start
        sent = sent.branch.origin
    start = {**sent.model_dump(include=set(START_FIELDS)), "model": origin.model.name, "n": origin.plan.n}
    start["seed"] = origin.plan.seed
    for field in START_FIELDS:
        if field in request.model_fields_set and getattr(request, field) != start[field]:
            message = f"a branch starts from branch.from's {field}: leave {field} out, or send the same"
            errors.append(_error(field, "branch_start", message, getattr(request, field)))
    if sent.seed is None:
        message = "branch.from needs its seed (the original run's, as its start message reported it)"
        errors.append({**_error("seed", "missing_seed", message, None), "loc": ["branch", "from", "seed"]})
    at_step, total = request.branch.at_step, origin.plan.steps_taken
    if at_step > total:
        message = f"the original run takes {total} steps: at_step must be 0 … {total}"
        errors.append({**_error("at_step", "less_than_equal", message, at_step), "loc": ["branch", "at_step"]})
    if SAMPLERS[run[0]].grid is None and run != (origin.plan.sampler.name, origin.plan.steps, origin.plan.params):
        message = f"{run[0]} has no timestep grid: a branch may only continue it unchanged"
        errors.append(_error("sampler", "unsupported", message, run[0]))
    return errors


def _image(text: str, field: str, model: LoadedModel, channels: int, settings: Settings):
    """The request's PNG as (channels, H, W) in [0, 1], and the errors."""
    try:
        size = model.image_shape[-1]
        return images.decode_image(text, settings.max_init_image_bytes, size, channels, model.name), []
    except ValueError as e:
        return None, [_error(field, "invalid_image", f"{field} {e}", text)]


def _params(sampler: Sampler, request: SampleRequest, model: LoadedModel) -> tuple[dict, list[dict]]:
    """Every parameter of the sampler (the request's, checked, and the defaults: the model's own, else
    the table's), and the errors."""
    own = model.param_defaults.get(sampler.name, {})
    values, errors = {p.name: p.default for p in sampler.params} | own, []
    fixed = own if model.own_sampling else {}  # a distilled model's own take no other value
    for key, value in (request.model_extra or {}).items():
        param = sampler.param(key)
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
