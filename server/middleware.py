"""The middleware, from the outside in: uvicorn's ProxyHeadersMiddleware, when trusted_proxies are set,
takes the client's address from their X-Forwarded-For; RequestMetrics counts every answer under its route;
AddHeaders adds SECURITY_HEADERS; HostCheck refuses a Host header this server does not answer to (DNS
rebinding); CORS, when configured; MethodCheck answers OPTIONS and wrong methods on the API's routes (the
UI's mount at / would otherwise); and BodyLimit refuses bodies over request_bytes before they are read."""

from __future__ import annotations

import ipaddress
import re

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from server.errors import POLICY_VIOLATION, Refused, error
from server.metrics import Metrics
from server.settings import Settings

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # others count as "other"

# The page at / loads its scripts, styles and icon from this server and draws PNGs from data: and
# blob: URLs; it talks to the API on the same origin ('self' covers ws: and wss: to it).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": PAGE_CSP,
}


def add_middleware(app: FastAPI, settings: Settings, metrics: Metrics, *routers: APIRouter) -> None:
    """All of it, in the order of the module docstring (the last added is the outermost). RequestMetrics
    and MethodCheck match requests against the API's routes before routing: the routers' own, since
    FastAPI includes a router as one route of its own, and the app's (the docs)."""
    routes = [route for router in routers for route in router.routes]
    routes += [route for route in app.routes if isinstance(route, Route)]
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
    app.add_middleware(AddHeaders, headers=SECURITY_HEADERS)
    app.add_middleware(RequestMetrics, routes=routes, metrics=metrics)
    if settings.trusted_proxies:  # the client's address as the proxy saw it, for the per-client limit and the logs
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)


def trusted_hosts(settings: Settings) -> list[str]:
    """The Host names to answer: the setting; else, when bound to loopback, the loopback names
    (a page on another site reaching 127.0.0.1 through DNS rebinding sends its own name); else any."""
    if settings.allowed_hosts:
        return [pattern.lower() for pattern in settings.allowed_hosts]
    address = _ip_address(settings.host.strip("[]"))
    loopback = settings.host == "localhost" or (address is not None and address.is_loopback)
    return LOOPBACK_NAMES if loopback else ["*"]


# RFC 9110's Host: a name or an IPv4 address, or an IPv6 address in brackets, then an optional port
HOST = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::\d{1,5})?")


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8000" → "::1", "a.example:80" → "a.example";
    "" for anything else ("localhost:80@evil.example", "[::1]evil.example"), which no pattern matches."""
    header = header.strip().lower()
    found = HOST.fullmatch(header)
    if found:
        return found["ipv6"] or found["name"]
    address = _ip_address(header)  # a bare IPv6 address, as some clients send it
    return header if address is not None and address.version == 6 else ""


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_allowed(header: str | None, allowed: list[str]) -> bool:
    if "*" in allowed:
        return True
    name = host_name(header or "")
    matches = (name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])) for pattern in allowed)
    return bool(name) and any(matches)


class Middleware:
    """An ASGI middleware: `handle` takes the scopes of the types in `scopes`, the others pass through.
    The keyword arguments of app.add_middleware become its attributes (each subclass declares its own)."""

    scopes: tuple[str, ...] = ("http",)

    def __init__(self, app: ASGIApp, **options):
        self.app = app
        vars(self).update(options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in self.scopes:
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class HostCheck(Middleware):
    """Refuses a Host that is not an allowed name: 400 over HTTP, a refused handshake (403) for a WebSocket."""

    scopes = ("http", "websocket")
    allowed: list[str]  # lower case (trusted_hosts)
    metrics: Metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if host_allowed(Headers(scope=scope).get("host"), self.allowed):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            self.metrics.ws_sessions.labels(outcome="forbidden").inc()
            await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": ""})
        else:
            await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)


class AddHeaders(Middleware):
    """`headers` on every answer that has not set its own (the docs pages set their CSP): at the messages
    of `at`, which start an HTTP answer or a WebSocket's refused handshake (or, where asked, its accept)."""

    scopes = ("http", "websocket")
    headers: dict[str, str]
    at: tuple[str, ...] = ("http.response.start", "websocket.http.response.start")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] in self.at:
                message.setdefault("headers", [])  # optional in a websocket.accept
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
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


class MethodCheck(Middleware):
    """OPTIONS on an API route answers 204 with the route's methods in Allow, and any other wrong
    method 405 with them (without this, the UI's mount at / answers for it, with its own)."""

    routes: list[BaseRoute]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route, match = api_route(self.routes, scope)
        if match != Match.PARTIAL or not isinstance(route, Route):
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted({*(route.methods or ()), "OPTIONS"}))
        if scope["method"] == "OPTIONS":
            response = Response(status_code=204, headers={"Allow": allow})
        else:
            response = JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow})
        await response(scope, receive, send)


class BodyLimit(Middleware):
    """Refuses request bodies larger than `max_bytes` with 422, the API's answer to bad input,
    before they are read into memory: by Content-Length, or while a chunked body streams in."""

    max_bytes: int
    metrics: Metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
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


class RequestMetrics(Middleware):
    """Counts HTTP requests by method, route template (not the raw path: bounded label values) and
    status; the route is found here, so that answers given before routing count under it too."""

    routes: list[BaseRoute]
    metrics: Metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
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
