"""The FastAPI app: create_app(settings) wires the routes, the middleware, the browser UI and the
lifespan that loads the models and runs the sampling loop."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import api, config, ws
from server.loop import SamplingLoop
from server.metrics import Metrics
from server.registry import ModelRegistry, resolve_device
from server.settings import Settings
from server.state import ServerState

log = logging.getLogger(__name__)

DESCRIPTION = """
Samples images from DDPM/DDIM checkpoints. Every request, REST or WebSocket, becomes a job in one
sampling loop per device, which advances all running jobs with one batched UNet forward per step.

**WebSocket `/ws/sample`** streams the denoising as it happens. Send one JSON message with the
fields of `POST /sample` plus `"every": k` (stream every k-th step; the last one always is). The
server answers with JSON text messages: `{"type": "start", "total", "seed", "model", "sampler",
"steps", "params", "n", "every", "image_size", "channels", "label", "guidance"}`, then for each streamed
step `{"type": "frame", "step", "total", "t", "x_t", "x0"}` (base64 PNG grids of the samples and of
the predicted x_0), then `{"type": "done", "grid", "images", "seed", "model", "sampler", "steps",
"elapsed_ms"}` and a normal close (1000). Send `{"type": "cancel"}` at any time to stop: the answer
is `{"type": "cancelled", "step"}` and a normal close. An invalid request is answered with
`{"type": "error", "detail"}` and close code 1008; a full server with an error and 1013. Frames may
be skipped for a client that reads more slowly than the images are made. See docs/api.md.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = resolve_device(settings.device)
        if settings.torch_threads:
            # process-wide; with every core busy elsewhere, threads that wait on each other make each op slower
            torch.set_num_threads(settings.torch_threads)
        registry = ModelRegistry.load(settings.checkpoint_dir, device, settings.default_model)
        metrics.models.set(len(registry.models))
        loop = SamplingLoop(device, settings.max_jobs, metrics)
        loop.start()
        encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="png")
        app.state.server = ServerState(settings, registry, loop, metrics, encoder)
        served = ", ".join(registry.models) or "no models"
        log.info(
            "serving %s on %s (default %s), at most %d jobs at once, %d PyTorch CPU threads",
            served,
            device,
            registry.default,
            settings.max_jobs,
            torch.get_num_threads(),
        )
        try:
            yield
        finally:
            loop.stop()
            encoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="DDPM/DDIM sampling server", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(config.router)
    app.include_router(ws.router)

    async def invalid_request(request: Request, exc: RequestValidationError):
        metrics.errors.inc(kind="invalid")
        # FastAPI echoes each bad input; NaN or Infinity in it would make the answer invalid JSON
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestMetrics, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Seed", "X-Elapsed-Ms"],
        )

    # The UI last: a mount at / would otherwise shadow the API routes.
    if settings.web_dir is not None and settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    else:

        @app.get("/", include_in_schema=False)
        async def no_ui():
            return RedirectResponse("/docs")

    return app


def _finite(value):
    """`value` with every NaN or infinite float replaced by its name ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


class BodyLimit:
    """Refuses request bodies larger than `max_bytes` with 422, the API's answer to bad input,
    before they are read into memory: by Content-Length, or while a chunked body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics):
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than {self.max_bytes} bytes"
        detail = [{"type": "too_long", "loc": ["body"], "msg": message}]
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            self.metrics.errors.inc(kind="invalid")
            await JSONResponse({"detail": detail}, status_code=422)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                self.metrics.errors.inc(kind="invalid")
                raise HTTPException(422, detail)  # FastAPI answers an HTTPException raised while reading the body
            return message

        await self.app(scope, limited_receive, send)


class RequestMetrics:
    """Counts HTTP requests by method, route template (not the raw path: bounded label values) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            name = route.path if isinstance(route, Route) else "other"  # "other": the UI's files, or no route
            self.metrics.requests.inc(method=scope["method"], route=name, status=str(status))
