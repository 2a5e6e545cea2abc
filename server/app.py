"""The FastAPI app: create_app(settings) wires the routes, the middleware, the browser UI, the API's
documentation (served from a Python package, so that it works offline) and the lifespan that loads
the models and runs the sampling loop.

The middleware, from the outside in: ProxyHeadersMiddleware (uvicorn's), when trusted_proxies are
set, takes the client's address from their X-Forwarded-For; RequestMetrics counts every answer under its route;
SecurityHeaders adds nosniff, no framing and a Content-Security-Policy to each; HostCheck refuses a
Host header this server does not answer to (DNS rebinding); CORS, when configured; MethodCheck
answers OPTIONS and wrong methods on the API's routes (the UI's mount at / would otherwise); and
BodyLimit refuses bodies over request_bytes (max_body_bytes and room for images) before they are read.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from model.samplers import SAMPLERS
from server import api, config, schemas, ws
from server.jobs import POLICY_VIOLATION, JobBridge, Refused
from server.loop import SamplingLoop
from server.metrics import Metrics
from server.parsing import IMAGE_FIELDS, error
from server.registry import ModelRegistry, resolve_device
from server.schemas import SampleRequest, StreamRequest
from server.settings import Settings
from server.state import ServerState
from server.validation import InvalidRequest

log = logging.getLogger(__name__)

DESCRIPTION = """
Samples images from DDPM/DDIM checkpoints. Every request, REST or WebSocket, becomes a job in one
sampling loop per device, which advances all running jobs with one batched UNet forward per step.

**WebSocket `/ws/sample`** streams the denoising as it happens. Send one JSON message with the
fields of `POST /sample` plus `"every": k` (stream every k-th step; the last one always is) and
optionally `"preview_size"`. The server answers with JSON text messages: while the run waits for a
place in the batch, `{"type": "queued", "position", "eta_s"}` (runs ahead of it, and about how many
seconds until it starts), at once and whenever the position changes; then `{"type": "start", "total",
"seed", "model", "sampler", "steps", "params", "n", "every", "image_size", "channels", "preview_size",
"label", "guidance", "at_step"}`, then for each streamed step `{"type": "frame", "step", "total", "t", "x_t",
"x0"}` (base64 PNG grids of the samples and of the predicted x_0, each image at most `preview_size`
pixels a side), then `{"type": "done", "grid", "images", "seed", "model", "sampler", "steps",
"elapsed_ms"}` (full size) and a normal close (1000). Send `{"type": "cancel"}` at any time to stop:
the answer is `{"type": "cancelled", "step"}` and a normal close. An invalid request is answered with
`{"type": "error", "kind", "detail"}` and close code 1008; a full queue with kind "busy" and 1013; a
client that already has its most runs with kind "client_limit" and 1008; a server shutting down with
kind "shutdown" and 1001. Frames may be skipped for a client that reads more slowly
than the images are made. See docs/api.md.

The bounds in this schema are the server's settings and the loosest over its models; each model's
own (its T, its classes) are in `GET /models`.
"""

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI and ReDoc, as files
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # others count as "other"

# The page at / loads its scripts, styles and icon from this server and draws PNGs from data: and
# blob: URLs; it talks to the API on the same origin ('self' covers ws: and wss: to it).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI and ReDoc style their elements inline and ReDoc searches in a blob: worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": PAGE_CSP,
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    # set by the server on SIGTERM or Ctrl-C (server.__main__), which may come while the models load
    stopping = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = resolve_device(settings.device)

        def prepare() -> ModelRegistry:
            # on the thread that samples, like all parallel torch work (server.loop says why): even
            # set_num_threads starts a team of OpenMP threads for the thread that calls it
            if settings.torch_threads:
                # process-wide; with every core busy elsewhere, threads that wait on each other make each op slower
                torch.set_num_threads(settings.torch_threads)
            return ModelRegistry.load(settings.checkpoint_dir, device, settings.default_model, stopping.is_set)

        loop = SamplingLoop(device, settings.max_jobs, metrics, settings.max_queue)
        registry = loop.start(prepare)
        metrics.models.set(len(registry.models))
        encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="png")
        jobs = JobBridge(loop, metrics, settings.request_timeout_s, settings.max_jobs_per_client)
        app.state.server = ServerState(settings, registry, loop, jobs, metrics, encoder)
        served = ", ".join(registry.models) or "no models"
        log.info(
            "serving %s on %s (default %s), at most %d jobs at once and %d waiting, %d PyTorch CPU threads",
            served,
            device,
            registry.default,
            settings.max_jobs,
            settings.max_queue,
            torch.get_num_threads(),
        )
        try:
            yield
        finally:
            jobs.draining.set()
            loop.stop()
            encoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="DDPM/DDIM sampling server",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.stopping = stopping
    app.include_router(api.router)
    app.include_router(config.router)
    app.include_router(ws.router)
    add_docs(app)

    def openapi() -> dict:
        state = getattr(app.state, "server", None)
        if app.openapi_schema is None or state is None:
            schema = api_schema(app, settings, state.registry if state else None)
            if state is None:
                return schema  # the models are not loaded yet: not the final schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    async def refused(request: Request, exc: Refused):
        metrics.errors.labels(kind=exc.kind).inc()
        return exc.response()

    async def invalid(request: Request, exc: InvalidRequest | RequestValidationError):
        errors = exc.errors if isinstance(exc, InvalidRequest) else exc.errors()
        return await refused(request, Refused("invalid", errors))

    async def client_left(request: Request, exc: ClientDisconnect):
        return Response(status_code=api.CLIENT_CLOSED_REQUEST)  # for the metrics: the client hears nothing

    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(ClientDisconnect, client_left)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(RequestValidationError, invalid)
    # the API's routes, to match requests against before routing (the included routers' own, since
    # FastAPI includes a router as one route of its own)
    routes = [*api.router.routes, *ws.router.routes, *(route for route in app.routes if isinstance(route, Route))]
    app.add_middleware(BodyLimit, max_bytes=settings.request_bytes, metrics=metrics)
    app.add_middleware(MethodCheck, routes=routes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Seed", "X-Elapsed-Ms"],
        )
    app.add_middleware(HostCheck, allowed=trusted_hosts(settings), metrics=metrics)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, routes=routes, metrics=metrics)
    if settings.trusted_proxies:  # the client's address as the proxy saw it, for the per-client limit and the logs
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)

    # The UI last: a mount at / would otherwise shadow the API routes.
    if settings.web_dir is not None and settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    else:

        @app.get("/", include_in_schema=False)
        async def no_ui():
            return RedirectResponse("/docs")

    return app


# --- the API's documentation ----------------------------------------------------------------------


def add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc) with their files from the fastapi-offline package, so
    that they need no network; relative URLs, so that they work under a proxy's path prefix too."""
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    swagger = get_swagger_ui_html(
        openapi_url="openapi.json",
        title=f"{app.title}: Swagger UI",
        swagger_js_url="docs-assets/swagger-ui-bundle.js",
        swagger_css_url="docs-assets/swagger-ui.css",
        swagger_favicon_url="docs-assets/favicon.png",
    ).body
    redoc = get_redoc_html(
        openapi_url="openapi.json",
        title=f"{app.title}: ReDoc",
        redoc_js_url="docs-assets/redoc.standalone.js",
        redoc_favicon_url="docs-assets/favicon.png",
        with_google_fonts=False,
    ).body

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui():
        return _docs_page(swagger)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page():
        return _docs_page(redoc)


def _docs_page(html: bytes) -> HTMLResponse:
    """The page with a CSP that allows its own inline script (by hash) and nothing else inline."""
    hashes = [hashlib.sha256(script).digest() for script in re.findall(rb"<script>(.*?)</script>", html, re.DOTALL)]
    scripts = " ".join(f"'sha256-{base64.b64encode(digest).decode()}'" for digest in hashes)
    return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_CSP.format(scripts=scripts)})


def api_schema(app: FastAPI, settings: Settings, registry: ModelRegistry | None) -> dict:
    """The OpenAPI schema with the limits that come from the settings and the loaded models: what
    the schema accepts, the server accepts (for a server of one model, exactly)."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    models = list(registry.models.values()) if registry else []
    request = _request_schema(SampleRequest, settings, registry)
    components["SampleRequest"] = by_sampler(request)
    # a branch's "from" is a request as the WebSocket takes it (every and preview_size allowed, and ignored)
    components["StreamRequest"] = by_sampler(_request_schema(StreamRequest, settings, registry))
    branch = StreamRequest.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"]["Branch"]
    branch["properties"]["from"] = {**branch["properties"]["from"], "$ref": "#/components/schemas/StreamRequest"}
    components["Branch"] = branch
    if models:
        names = sorted(registry.models)
        path = schema["paths"]["/models/{name}/schedule"]["get"]
        next(p for p in path["parameters"] if p["name"] == "name")["schema"]["enum"] = names
    return schema


def _request_schema(request_model: type[SampleRequest], settings: Settings, registry: ModelRegistry | None) -> dict:
    """A request's JSON schema with the bounds of the settings and the loaded models."""
    request = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = request.pop("$defs", {})  # Branch and the stream request: components of their own (api_schema)
    request = request if "properties" in request else defs[request_model.__name__]  # a recursive model is a $ref
    fields = request["properties"]
    models = list(registry.models.values()) if registry else []
    for name in IMAGE_FIELDS:  # base64 PNGs; their size, format and pixels are checked by the server
        fields[name]["anyOf"][0].update(contentEncoding="base64", contentMediaType="image/png")
    for name, limit in schemas.bounds(
        schemas.Scope(settings, tuple(models)), request_model
    ).items():  # the rules' (schemas.RULES)
        if limit["maximum"] is not None:
            _bound(fields[name], maximum=limit["maximum"])
        if fields[name].get("default") is not None:  # a fixed default the limit may cut (n: 16, at most max_n)
            fields[name]["default"] = limit["default"]
    if models and not any(m.num_classes for m in models):
        fields["label"]["anyOf"] = [{"type": "null"}]
    if models:
        fields["model"]["anyOf"] = [{"type": "string", "enum": sorted(registry.models)}, {"type": "null"}]
    return request


def by_sampler(request: dict) -> dict:
    """The request schema as one variant per sampler of the table, each with that sampler's own
    parameters and nothing else (a variant without "sampler" takes none): a request the schema allows
    is one the server accepts."""
    fields = {k: v for k, v in request["properties"].items() if k != "sampler"}
    variants = [
        {"type": "object", "properties": {**fields, "sampler": {"type": "null"}}, "additionalProperties": False}
    ]
    for sampler in SAMPLERS.values():
        params = {}
        for param in sampler.params:
            info = param.info()
            params[param.name] = {
                k: v
                for k, v in {"type": info["type"], "default": info["default"], "minimum": info["minimum"],
                             "maximum": info["maximum"], "enum": info["choices"],
                             "description": info["description"]}.items()
                if v is not None
            }  # fmt: skip
        properties = {**fields, "sampler": {"const": sampler.name, "description": sampler.description}, **params}
        variants.append(
            {"type": "object", "properties": properties, "required": ["sampler"], "additionalProperties": False}
        )
    return {"title": request.get("title", "SampleRequest"), "description": request.get("description", ""),
            "anyOf": variants}  # fmt: skip


def _bound(field: dict, **limits) -> None:
    """Set `limits` on a field's schema, or on its non-null branch (an optional field's anyOf)."""
    for branch in field.get("anyOf", [field]):
        if branch.get("type") != "null":
            branch.update(limits)


# --- middleware -----------------------------------------------------------------------------------


def trusted_hosts(settings: Settings) -> list[str]:
    """The Host names to answer: the setting; else, when bound to loopback, the loopback names
    (a page on another site reaching 127.0.0.1 through DNS rebinding sends its own name); else any."""
    if settings.allowed_hosts:
        return settings.allowed_hosts
    return LOOPBACK_NAMES if _is_loopback(settings.host) else ["*"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# RFC 9110's Host: a name or an IPv4 address, or an IPv6 address in brackets, then an optional port
HOST = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::\d{1,5})?")


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8000" → "::1", "a.example:80" → "a.example";
    "" for anything else ("localhost:80@evil.example", "[::1]evil.example"), which no pattern matches."""
    header = header.strip().lower()
    found = HOST.fullmatch(header)
    if found:
        return found["ipv6"] or found["name"]
    return header if _is_ipv6(header) else ""  # a bare IPv6 address, as some clients send it


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def host_allowed(header: str | None, allowed: list[str]) -> bool:
    if "*" in allowed:
        return True
    name = host_name(header or "")
    matches = (name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])) for pattern in allowed)
    return bool(name) and any(matches)


class HostCheck:
    """Refuses requests whose Host is not an allowed name: 400 over HTTP, a refused handshake (403)
    for a WebSocket."""

    def __init__(self, app: ASGIApp, allowed: list[str], metrics: Metrics):
        self.app = app
        self.allowed = [pattern.lower() for pattern in allowed]
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or host_allowed(Headers(scope=scope).get("host"), self.allowed):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            self.metrics.ws_sessions.labels(outcome="forbidden").inc()
            await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": ""})
        else:
            await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)


class SecurityHeaders:
    """nosniff, no framing, no referrer and a Content-Security-Policy on every answer that has not
    set its own (the docs pages do)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def api_route(routes: list[BaseRoute], scope: Scope) -> tuple[Route | None, Match]:
    """The API route whose path matches the request (FULL: its method too; PARTIAL: another method)."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route, match
        if match == Match.PARTIAL and partial is None:
            partial = route
    return partial, (Match.PARTIAL if partial else Match.NONE)


class MethodCheck:
    """OPTIONS on an API route answers 204 with the route's methods in Allow, and any other wrong
    method 405 with them (without this, the UI's mount at / answers for it, with its own)."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route, match = api_route(self.routes, scope) if scope["type"] == "http" else (None, Match.NONE)
        if match != Match.PARTIAL or not isinstance(route, Route):
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted({*(route.methods or ()), "OPTIONS"}))
        if scope["method"] == "OPTIONS":
            response = Response(status_code=204, headers={"Allow": allow})
        else:
            response = JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow})
        await response(scope, receive, send)


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
        too_long = Refused("invalid", [error("too_long", f"the request body is larger than {self.max_bytes} bytes")])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            self.metrics.errors.labels(kind="invalid").inc()
            await too_long.response()(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_long  # answered by the app's handler for Refused, like any other
            return message

        await self.app(scope, limited_receive, send)


class RequestMetrics:
    """Counts HTTP requests by method, route template (not the raw path: bounded label values) and
    status; the route is found here, so that answers given before routing count under it too."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute], metrics: Metrics):
        self.app = app
        self.routes = routes
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
            route, _ = api_route(self.routes, scope)
            name = route.path if isinstance(route, Route) else "other"  # "other": the UI's files, or no route
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.requests.labels(method=method, route=name, status=str(status)).inc()
