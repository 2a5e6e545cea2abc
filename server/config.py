"""GET /config: what a client needs to build its controls, so that none of it is written twice: the
server's limits, its defaults, every sampler of the table with its parameters, and every request field
with its rules (server.schemas.RULES)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from model.samplers import SAMPLERS
from server.jobs import ServerState, get_state
from server.schemas import MAX_SEED, RULES, Limits, Load, Scope, ServerConfig, StreamRequest, bounds

router = APIRouter()


@router.get("/config", response_model=ServerConfig, tags=["config"], summary="Limits, defaults and samplers")
async def server_config(state: Annotated[ServerState, Depends(get_state)]) -> ServerConfig:
    settings = state.settings
    sampler = SAMPLERS[settings.default_sampler]
    scope = Scope(settings, tuple(state.registry.models.values()))
    return ServerConfig(
        limits={name: MAX_SEED if name == "max_seed" else getattr(settings, name) for name in Limits.model_fields},
        defaults={
            "model": state.registry.default,
            "sampler": sampler.name,
            "steps": settings.default_steps or sampler.default_steps,
            "n": bounds(scope)["n"]["default"],
            "guidance": settings.default_guidance,
        },
        samplers=[entry.info() for entry in SAMPLERS.values()],
        load={name: getattr(state.loop, name) for name in Load.model_fields},
        request=request_rules(scope),
    )


def request_rules(scope: Scope) -> dict:
    """Each field as the request's schema types it, with the rules' limits and defaults (the loosest of
    the models), and by model and sampler the bounds of the fields whose rules depend on them."""
    schema = StreamRequest.model_json_schema()
    properties = schema["$defs"]["StreamRequest"]["properties"]  # a recursive model is a $ref
    loosest, fields = bounds(scope), []
    for name, prop in properties.items():
        typed = next(branch for branch in prop.get("anyOf", [prop]) if branch.get("type") != "null")
        rule, most = RULES[name], loosest[name]["maximum"]
        fields.append(
            {
                "name": name,
                "title": rule.title,
                "type": typed.get("type", "object"),
                "nullable": typed is not prop,
                "default": loosest[name]["default"],
                "minimum": typed.get("minimum"),
                "exclusive_minimum": typed.get("exclusiveMinimum"),
                "maximum": typed.get("maximum") if most is None else most,
                "needs": rule.needs and rule.needs[0],
                "start": rule.start,
                "description": prop.get("description", ""),
            }
        )
    ruled = [name for name, rule in RULES.items() if rule.maximum or rule.default]
    models = {
        model.name: {
            sampler: {name: bounds(Scope(scope.settings, (model,), entry))[name] for name in ruled}
            for sampler, entry in SAMPLERS.items()
        }
        for model in scope.models
    }
    return {"fields": fields, "models": models}
