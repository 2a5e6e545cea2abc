"""From a well-formed request to a JobSpec: the checks that depend on the server's limits and on
the chosen model, and the defaults. Errors have the shape of pydantic's ({type, loc, msg, input}),
so a client handles a 422 the same way whichever check refused it."""

from __future__ import annotations

import secrets

from server.loop import JobSpec
from server.registry import ModelRegistry
from server.schemas import SampleRequest, StreamRequest
from server.settings import Settings

DDIM_DEFAULT_STEPS = 50


class InvalidRequest(ValueError):
    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def resolve(request: SampleRequest, registry: ModelRegistry, settings: Settings) -> JobSpec:
    """The job a valid request asks for, or InvalidRequest listing everything wrong with it."""
    model = registry.get(request.model)
    if model is None:
        loaded = ", ".join(sorted(registry.models)) or "none"
        raise InvalidRequest([_error("model", "unknown_model", f"unknown model; loaded: {loaded}", request.model)])

    errors = []
    timesteps = model.schedule.num_timesteps
    max_steps = min(timesteps, settings.max_steps)
    steps = request.steps or min(DDIM_DEFAULT_STEPS if request.sampler == "ddim" else timesteps, max_steps)
    if steps > max_steps:
        limits = f"the model has T = {timesteps}, the server allows {settings.max_steps}"
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
        sampler=request.sampler,
        steps=steps,
        n=n,
        seed=secrets.randbelow(2**32) if request.seed is None else request.seed,
        eta=request.eta if request.sampler == "ddim" else None,
        label=request.label,
        guidance=guidance if request.label is not None else None,
        every=request.every if isinstance(request, StreamRequest) else 0,
        preview_size=preview_size,
    )


def _error(field: str, kind: str, message: str, value) -> dict:
    return {"type": kind, "loc": [field], "msg": message, "input": value}
