"""Request JSON, parsed once for REST and the WebSocket alike: bytes or text → `parse_request` → a pydantic
request model, or InvalidRequest with every problem. Before `json.loads` sees the text, it must be UTF-8,
within the size limit and nested at most MAX_DEPTH deep (deeper JSON would exhaust the parser's recursion);
numbers are bounded, NaN and Infinity refused (they are not JSON), a number with an integral value is an
integer however it is written (4.0 and 4e0 are 4, as in JSON Schema; decided on the digits, not on the
nearest float), strings must be Unicode (a lone surrogate escape such as "\\ud800" is not, RFC 7493) and an
object's names unique (RFC 7493 too). What the server parses it can therefore always echo (server.errors).
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal

from pydantic import BaseModel, ValidationError

from server.errors import ECHO_CHARS, MAX_DIGITS, InvalidRequest, error, safe_text
from server.settings import Settings

MAX_DEPTH = 16  # a request is a flat object of scalars: anything deeper is not a request
MAX_EXACT_INTEGER = 2**53  # a float holds every integer up to here exactly

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
IMAGE_FIELDS = ("init_image", "mask")  # base64 PNGs: bounded on their own (max_init_image_bytes), not by max_bytes


def parse_request(model: type[BaseModel], data: bytes | str, settings: Settings, loc: tuple = ()) -> BaseModel:
    """`data` as an instance of `model`, or InvalidRequest whose errors' `loc` start with `loc`. The request
    may be up to settings.request_bytes long with the strings of its IMAGE_FIELDS (at any depth); without
    them, it must fit in max_body_bytes."""
    try:
        value = parse_json(data, settings.request_bytes)
        if _size(data) - _image_chars(value, MAX_DEPTH) > settings.max_body_bytes:
            message = f"the request is larger than {settings.max_body_bytes} bytes, besides its images"
            raise InvalidRequest([error("too_long", message)])
        return model.model_validate(value)
    except (InvalidRequest, ValidationError) as e:
        errors = e.errors if isinstance(e, InvalidRequest) else e.errors(include_url=False, include_context=False)
        raise InvalidRequest(errors, loc) from None


def _size(data: bytes | str) -> int:
    return len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))


def _image_chars(value, depth: int) -> int:
    """The characters of the strings under IMAGE_FIELDS keys in a parsed request, at any depth."""
    if not isinstance(value, dict) or depth < 0:
        return 0
    return sum(
        len(item) if key in IMAGE_FIELDS and isinstance(item, str) else _image_chars(item, depth - 1)
        for key, item in value.items()
    )


def parse_json(data: bytes | str, max_bytes: int) -> object:
    """Strict JSON: the checks of the module docstring, each refused with InvalidRequest."""
    if _size(data) > max_bytes:
        raise InvalidRequest([error("too_long", f"the request is larger than {max_bytes} bytes")])
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidRequest([error("json_invalid", f"the request is not UTF-8 (byte {e.start})")]) from None
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", data)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        raise InvalidRequest([error("json_invalid", f"JSON nested more than {MAX_DEPTH} levels deep")])
    try:
        value = json.loads(
            data, parse_int=_int, parse_float=_float, parse_constant=_no_constant, object_pairs_hook=_unique_keys
        )
    except json.JSONDecodeError as e:
        message = f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        raise InvalidRequest([error("json_invalid", message)]) from None
    except ValueError as e:  # raised by the hooks below; their messages are ours
        raise InvalidRequest([error("json_invalid", str(e))]) from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # every key and string, at any depth
    except UnicodeEncodeError:
        message = "a string holds a lone surrogate escape (\\ud800–\\udfff)"
        raise InvalidRequest([error("json_invalid", message)]) from None
    return value


def require_json(content_type: str | None) -> None:
    """A body must say it is JSON: a form or text/plain POST from another site would otherwise reach
    the sampler without the browser's CORS preflight."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise InvalidRequest([error("content_type", "send the request as JSON (Content-Type: application/json)")])


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number with more than {MAX_DIGITS} digits")
    return int(text)


def _float(text: str) -> float | int:
    """A number with a fraction or an exponent: the integer it equals if integral (4.0, 1e3), which an integer
    field takes and a float field turns back into a float; else a float (4.5), which integer fields refuse."""
    if len(text) > MAX_DIGITS + 10:
        raise ValueError(f"a number with more than {MAX_DIGITS} digits")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number too large for a float")
    exact = Decimal(text)  # as written: 4503599627370496.5 is no integer, though its nearest float is
    return int(exact) if exact == exact.to_integral_value() and abs(exact) <= MAX_EXACT_INTEGER else value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """An object whose names are unique (RFC 7493, I-JSON): of two values for one field, neither is taken."""
    value = dict(pairs)
    if len(value) != len(pairs):
        names = [name for name, _ in pairs]
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"the field {safe_text(duplicate[:ECHO_CHARS])!r} appears more than once")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")
