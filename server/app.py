"""The FastAPI app: create_app(settings) wires the routes (server.api, .config, .ws), the answers to
failures (server.errors), the API's documentation (server.openapi), the middleware (server.middleware),
the browser UI, and the lifespan that loads the models and runs the sampling loop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from server import api, config, errors, middleware, openapi, ws
from server.jobs import ServerState
from server.metrics import Metrics
from server.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(**openapi.DOCUMENT, lifespan=lambda app: serving(app, settings, metrics))
    # set by the server on SIGTERM or Ctrl-C (server.__main__), which may come while the models load
    app.state.stopping = threading.Event()
    routers = (api.router, config.router, ws.router)
    for router in routers:
        app.include_router(router)
    openapi.add_docs(app, settings)
    errors.add_handlers(app, lambda kind: metrics.errors.labels(kind=kind).inc())
    middleware.add_middleware(app, settings, metrics, *routers)
    add_ui(app, settings)  # last: a mount at / would otherwise shadow the API routes
    return app


@asynccontextmanager
async def serving(app: FastAPI, settings: Settings, metrics: Metrics) -> AsyncIterator[None]:
    """The app's lifespan: the models loaded and the sampling loop running from before the first request to the end."""
    app.state.server = state = ServerState.start(settings, metrics, app.state.stopping.is_set)
    try:
        yield
    finally:
        state.stop()


def add_ui(app: FastAPI, settings: Settings) -> None:
    """The browser UI at /, from web_dir; without one, / leads to the API's documentation."""
    if settings.web_dir is not None and settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
        return

    @app.get("/", include_in_schema=False)
    async def no_ui():
        return RedirectResponse("/docs")
