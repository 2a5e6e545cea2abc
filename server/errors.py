"""Every way a request can fail, at the bottom of server/ (it imports none of it): FAILURES, each kind's
REST status and WebSocket close code; `Refused(kind, detail)`, which stops a request, from a bad field to a
shutdown; `InvalidRequest`, a request's wrong fields in pydantic's error shape (a client handles any 422
alike, whichever check refused it); `safe_errors`, JSON-ready without ever raising; the REST answers (add_handlers)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

# WebSocket close codes (RFC 6455)
NORMAL, GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR, TRY_AGAIN_LATER = 1000, 1001, 1008, 1011, 1013
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer
RETRY_AFTER_S = 2  # when the loop has no estimate of its own (server.loop.SamplingLoop.retry_after_s)
MAX_DIGITS = 40  # in a request (server.parsing) or an echo; the largest a field takes, a seed < 2^53, has 16
ECHO_CHARS = 120  # an echoed string is cut to this
ECHO_ITEMS = 8  # an echoed list or object is cut to this many items, and to ECHO_DEPTH levels
ECHO_DEPTH = 2


@dataclass(frozen=True)
class Failure:
    status: int  # the REST answer
    close_code: int  # the WebSocket's close code, after {"type": "error", "detail"}
    retry_after: bool = False  # REST: with a Retry-After header


FAILURES: dict[str, Failure] = {
    "invalid": Failure(422, POLICY_VIOLATION),  # a bad request, or an unexpected message while sampling
    "busy": Failure(503, TRY_AGAIN_LATER, retry_after=True),  # the batch and the queue are full
    "client_limit": Failure(429, POLICY_VIOLATION),  # this client already has max_jobs_per_client jobs
    "shutdown": Failure(503, GOING_AWAY, retry_after=True),  # the server is stopping
    "timeout": Failure(504, INTERNAL_ERROR),  # the job ran over request_timeout_s
    "error": Failure(500, INTERNAL_ERROR),  # sampling failed (out of memory, most likely), or a server bug
}


class InvalidRequest(ValueError):
    def __init__(self, errors: list[dict], loc: tuple = ()):  # loc: where the request sits in what was sent
        errors = [{**e, "loc": [*loc, *e["loc"]]} for e in errors]
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


class Refused(Exception):
    """A request that ends without its images: `kind` is a key of FAILURES."""

    def __init__(self, kind: str, detail: str | list[dict], retry_after_s: float | None = None):
        super().__init__(detail if isinstance(detail, str) else f"{len(detail)} invalid fields")
        self.kind = kind
        self.detail = detail
        self.retry_after_s = retry_after_s  # Retry-After, where the failure has one (default RETRY_AFTER_S)

    @classmethod
    def of(cls, exc: BaseException) -> Refused:
        """Any exception as a Refused: InvalidRequest is "invalid", an unexpected one "error"."""
        if isinstance(exc, Refused):
            return exc
        if isinstance(exc, InvalidRequest):
            return cls("invalid", safe_errors(exc.errors))
        return cls("error", "internal error (the server's log has the details)")

    @property
    def failure(self) -> Failure:
        return FAILURES[self.kind]

    def body(self) -> dict:
        """{"detail": …} that always encodes: REST answers it, the WebSocket adds "type": "error"."""
        return {"detail": safe_text(self.detail) if isinstance(self.detail, str) else safe_errors(self.detail)}

    def response(self) -> JSONResponse:
        retry_after = max(1, math.ceil(self.retry_after_s or RETRY_AFTER_S))
        headers = {"Retry-After": str(retry_after)} if self.failure.retry_after else None
        return JSONResponse(self.body(), status_code=self.failure.status, headers=headers)


def add_handlers(app: FastAPI, count: Callable[[str], None]) -> None:
    """The REST answers to failures: a Refused with its status, a request pydantic or the server's
    checks refuse as "invalid", and a client gone before its answer as 499 (which it does not hear:
    for the metrics). `count(kind)` is called for each Refused."""

    async def refused(request: Request, exc: Refused):
        count(exc.kind)
        return exc.response()

    async def invalid(request: Request, exc: InvalidRequest | RequestValidationError):
        errors = exc.errors if isinstance(exc, InvalidRequest) else exc.errors()
        return await refused(request, Refused("invalid", errors))

    async def client_left(request: Request, exc: ClientDisconnect):
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(ClientDisconnect, client_left)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(RequestValidationError, invalid)


def error(kind: str, message: str, loc: tuple = ()) -> dict:
    return {"type": kind, "loc": list(loc), "msg": message}


def safe_errors(errors) -> list[dict]:
    """Errors as JSON-ready dicts that always encode; a malformed error list becomes one generic error."""
    try:
        return [_safe_error(item) for item in list(errors)[:64]]
    except Exception:  # the answer to bad input must not fail on how the input is bad
        return [error("invalid", "invalid request")]


def _safe_error(item) -> dict:
    item = item if isinstance(item, dict) else {"msg": item}
    safe = {
        "type": _text(item.get("type", "invalid")),
        "loc": [entry if isinstance(entry, int) else _text(entry) for entry in list(item.get("loc", ()))[:8]],
        "msg": _text(item.get("msg", "")),
    }
    if "input" in item:
        safe["input"] = _echo(item["input"], ECHO_DEPTH)
    return safe


def _echo(value, depth: int):
    """A bounded copy of `value` that json.dumps(allow_nan=False) and UTF-8 can always encode."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**MAX_DIGITS else f"<a number of more than {MAX_DIGITS} digits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _text(value)
    if depth > 0 and isinstance(value, dict):
        return {_text(key): _echo(item, depth - 1) for key, item in list(value.items())[:ECHO_ITEMS]}
    if depth > 0 and isinstance(value, list | tuple):
        return [_echo(item, depth - 1) for item in list(value)[:ECHO_ITEMS]]
    return _text(f"<{type(value).__name__}>")


def _text(value) -> str:
    text = value if isinstance(value, str) else str(value)
    return safe_text(text[:ECHO_CHARS] + "…" if len(text) > ECHO_CHARS else text)


def safe_text(text: str) -> str:
    """`text` with anything UTF-8 cannot encode (lone surrogates) written as a backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
