"""GET /config: what a client needs to build its controls, so that none of it is written twice: the
server's limits, its defaults, and every sampler of the table with its parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from model.samplers import SAMPLERS
from server.jobs import ServerState, get_state
from server.schemas import MAX_SEED, SampleRequest, ServerConfig

router = APIRouter()


@router.get("/config", response_model=ServerConfig, tags=["config"], summary="Limits, defaults and samplers")
async def server_config(state: Annotated[ServerState, Depends(get_state)]) -> ServerConfig:
    settings = state.settings
    sampler = SAMPLERS[settings.default_sampler]
    return ServerConfig(
        limits={
            "max_n": settings.max_n,
            "max_steps": settings.max_steps,
            "max_guidance": settings.max_guidance,
            "max_seed": MAX_SEED,
            "max_jobs": settings.max_jobs,
            "max_queue": settings.max_queue,
            "max_jobs_per_client": settings.max_jobs_per_client,
            "max_init_image_bytes": settings.max_init_image_bytes,
        },
        defaults={
            "model": state.registry.default,
            "sampler": sampler.name,
            "steps": settings.default_steps or sampler.default_steps,
            "n": min(SampleRequest.model_fields["n"].default, settings.max_n),
            "guidance": settings.default_guidance,
        },
        samplers=[entry.info() for entry in SAMPLERS.values()],
        load={
            "iteration_s": state.loop.iteration_s,
            "active_jobs": state.loop.active_jobs,
            "queued_jobs": state.loop.queued_jobs,
        },
    )
