"""The API's documentation: the OpenAPI schema with the limits of the settings and the loaded models
(`add_docs`), and /docs and /redoc with their files from a Python package, so that they work offline."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import partial
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from model.samplers import SAMPLERS
from server.parsing import IMAGE_FIELDS
from server.registry import ModelRegistry
from server.schemas import SampleRequest, Scope, StreamRequest, bounds
from server.settings import Settings

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

# what the app says of itself; its docs pages are ours (add_docs), not FastAPI's, which load from a CDN
DOCUMENT = dict(
    title="DDPM/DDIM sampling server", version="0.1.0", description=DESCRIPTION, docs_url=None, redoc_url=None
)
# what the schema of a sampler's parameter takes from its info(), in this order
PARAM_KEYWORDS = ("type", "default", "minimum", "maximum", "enum", "description")
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI and ReDoc, as files
# Swagger UI and ReDoc style their elements inline and ReDoc searches in a blob: worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def add_docs(app: FastAPI, settings: Settings) -> None:
    """app.openapi: api_schema, kept once the models are loaded; /docs (Swagger UI) and /redoc (ReDoc) with
    their files from fastapi-offline, at relative URLs so that they work under a proxy's path prefix too."""

    def openapi() -> dict:
        state = getattr(app.state, "server", None)
        if state is None:  # the models are not loaded yet: not the final schema
            return api_schema(app, settings, None)
        if app.openapi_schema is None:
            app.openapi_schema = api_schema(app, settings, state.registry)
        return app.openapi_schema

    app.openapi = openapi
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    pages = {
        "/docs": get_swagger_ui_html(
            openapi_url="openapi.json",
            title=f"{app.title}: Swagger UI",
            swagger_js_url="docs-assets/swagger-ui-bundle.js",
            swagger_css_url="docs-assets/swagger-ui.css",
            swagger_favicon_url="docs-assets/favicon.png",
        ),
        "/redoc": get_redoc_html(
            openapi_url="openapi.json",
            title=f"{app.title}: ReDoc",
            redoc_js_url="docs-assets/redoc.standalone.js",
            redoc_favicon_url="docs-assets/favicon.png",
            with_google_fonts=False,
        ),
    }
    for path, page in pages.items():
        app.add_api_route(path, partial(_docs_page, page.body), include_in_schema=False)


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
    components["SampleRequest"] = by_sampler(_request_schema(SampleRequest, settings, registry))
    # a branch's "from" is a request as the WebSocket takes it (every and preview_size allowed, and ignored)
    components["StreamRequest"] = by_sampler(_request_schema(StreamRequest, settings, registry))
    branch = StreamRequest.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"]["Branch"]
    branch["properties"]["from"] = {**branch["properties"]["from"], "$ref": "#/components/schemas/StreamRequest"}
    components["Branch"] = branch
    if registry and registry.models:
        path = schema["paths"]["/models/{name}/schedule"]["get"]
        next(p for p in path["parameters"] if p["name"] == "name")["schema"]["enum"] = sorted(registry.models)
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
    for name, limit in bounds(Scope(settings, tuple(models)), request_model).items():  # RULES'
        for branch in fields[name].get("anyOf", [fields[name]]):  # an optional field's: its non-null one
            if limit["maximum"] is not None and branch.get("type") != "null":
                branch["maximum"] = limit["maximum"]
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
            info["enum"] = info["choices"]  # JSON Schema's name for them
            params[param.name] = {key: info[key] for key in PARAM_KEYWORDS if info[key] is not None}
        properties = {**fields, "sampler": {"const": sampler.name, "description": sampler.description}, **params}
        variants.append(
            {"type": "object", "properties": properties, "required": ["sampler"], "additionalProperties": False}
        )
    return {"title": request.get("title", "SampleRequest"), "description": request.get("description", ""),
            "anyOf": variants}  # fmt: skip
