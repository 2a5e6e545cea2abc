"""The REST routes: health, the models, one-shot sampling and the metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from server import images
from server.errors import CLIENT_CLOSED_REQUEST
from server.jobs import ServerState, client_address, get_state
from server.loop import Finished
from server.metrics import CONTENT_TYPE
from server.parsing import parse_request, require_json
from server.schemas import Error, ModelInfo, Ready, SampleRequest, SampleResponse, ScheduleInfo, Status
from server.validation import resolve

router = APIRouter()

State = Annotated[ServerState, Depends(get_state)]


@router.get("/healthz", response_model=Status, tags=["health"], summary="The process is up")
async def healthz():
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": Error, "description": "No model could be loaded"}},
    tags=["health"],
    summary="Models are loaded and the sampling loop runs",
)
async def readyz(state: State):
    if not state.registry.models:
        return JSONResponse({"detail": "no model could be loaded (the server's log says why)"}, status_code=503)
    return {"status": "ready", "models": sorted(state.registry.models)}


@router.get("/models", response_model=list[ModelInfo], tags=["models"], summary="The models being served")
async def list_models(state: State):
    return [model.info() for model in state.registry.models.values()]


@router.get(
    "/models/{name}/schedule",
    response_model=ScheduleInfo,
    responses={404: {"model": Error}},
    tags=["models"],
    summary="A model's noise schedule ᾱ_t, to show the forward process q(x_t | x_0)",
)
async def model_schedule(name: str, state: State):
    model = state.registry.models.get(name)
    if model is None:
        raise HTTPException(404, f"unknown model {name!r}")
    schedule = model.schedule
    return {
        "name": name,
        "schedule": schedule.name,
        "timesteps": schedule.num_timesteps,
        "alphas_cumprod": schedule.alphas_cumprod.tolist(),
    }


@router.post(
    "/sample",
    response_model=SampleResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SampleRequest"}}},
        }
    },
    responses={
        200: {"content": {"image/png": {}}, "description": "JSON, or the grid as a PNG with `Accept: image/png`"},
        422: {"model": Error, "description": "Invalid request"},
        429: {"model": Error, "description": "This client already has max_jobs_per_client runs going or waiting"},
        503: {
            "model": Error,
            "description": "The queue is full, or the server is shutting down: retry after Retry-After seconds",
        },
        504: {
            "model": Error,
            "description": "No sampling place came free, or sampling took longer, within the request timeout",
        },
    },
    tags=["sampling"],
    summary="Sample n images",
)
async def sample(request: Request, state: State):
    """Runs DDPM or DDIM and answers with every image and their grid, as base64 PNGs; the same seed
    and parameters give the same images. A request that finds the sampling batch full waits its
    turn in the server's queue (at most the request timeout). With `Accept: image/png` the answer is the grid itself,
    with its seed in the `X-Seed` header."""
    require_json(request.headers.get("content-type"))
    body = parse_request(SampleRequest, await request.body(), state.settings, ("body",))
    spec = resolve(body, state.registry, state.settings, ("body",))

    with state.jobs.client():
        event = await state.jobs.run_to_end(spec, client_address(request), lambda: _wait_for_disconnect(request))
    if not isinstance(event, Finished):  # the client left, and its job was cancelled
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    if "image/png" in request.headers.get("accept", ""):
        grid = await state.encode(images.grid_png, event.images)
        headers = {"X-Seed": str(spec.plan.seed), "X-Elapsed-Ms": f"{event.elapsed_ms:.1f}"}
        return Response(grid, media_type="image/png", headers=headers)
    grid, pngs = await state.encode(images.grid_and_images_b64, event.images)
    return SampleResponse(images=pngs, grid=grid, elapsed_ms=event.elapsed_ms, **spec.echo(SampleResponse.model_fields))


@router.get("/metrics", response_class=PlainTextResponse, tags=["health"], summary="Prometheus metrics")
async def metrics(state: State):
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


async def _wait_for_disconnect(request: Request) -> None:
    # the body has been read, so the next message the server receives is the disconnect
    while (await request.receive())["type"] != "http.disconnect":
        pass
