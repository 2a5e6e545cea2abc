"""WS /ws/sample: one sampling run per connection, every (k-th) x_t streamed as it is computed.

The client sends one request message; the server answers start, frames, and done (or cancelled,
or error) and closes. While the job runs, a listener task reads the client's messages (cancel, or
the socket closing) and a sender task drains the connection's Outbox, encoding PNGs in the
encoder pool. A slow client only loses frames of its own: the Outbox keeps the newest, and a send
that takes longer than ws_send_timeout_s drops the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocketDisconnect

from server import images
from server.loop import Cancelled, Event, Failed, Finished, Frame, Job, JobSpec, LoopFull
from server.schemas import (
    CancelledMessage,
    DoneMessage,
    ErrorMessage,
    FrameMessage,
    StartMessage,
    StreamRequest,
)
from server.state import ServerState, get_state
from server.validation import InvalidRequest, resolve

log = logging.getLogger(__name__)

router = APIRouter()

REQUEST_WAIT_S = 30.0  # a connection that sends no request within this is closed

# close codes (RFC 6455)
NORMAL, GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR, TRY_AGAIN_LATER = 1000, 1001, 1008, 1011, 1013
FAILURE_CLOSE_CODE = {"timeout": INTERNAL_ERROR, "error": INTERNAL_ERROR, "shutdown": GOING_AWAY}


class Outbox:
    """A connection's outbound queue. Frames are droppable: when `frame_slots` unsent frames wait,
    a newer one replaces the oldest. Every other message, and the last frame, is always sent."""

    def __init__(self, frame_slots: int = 1, on_drop: Callable[[], None] = lambda: None):
        self.frame_slots = frame_slots
        self.on_drop = on_drop
        self._items: deque = deque()
        self._ready = asyncio.Event()

    def put(self, item) -> None:
        if _droppable(item):
            waiting = [queued for queued in self._items if _droppable(queued)]
            if len(waiting) >= self.frame_slots:
                self._items.remove(waiting[0])
                self.on_drop()
        self._items.append(item)
        self._ready.set()

    async def get(self):
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


def _droppable(item) -> bool:
    return isinstance(item, Frame) and item.step < item.total


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """CORS does not apply to WebSockets, so a page on any site could open one to this server with
    the visitor's network position; the handshake's Origin is checked instead. No Origin means no
    browser (a script or curl), which could send any Origin anyway."""
    if origin is None or "*" in allowed or origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()  # same origin


@router.websocket("/ws/sample")
async def ws_sample(websocket: WebSocket):
    state = get_state(websocket)
    if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"), state.settings.cors_origins):
        state.metrics.ws_sessions.inc(outcome="forbidden")
        await websocket.close(POLICY_VIOLATION)  # before accept(): the handshake is refused with 403
        return
    await websocket.accept()
    outcome = await _session(websocket, state)
    state.metrics.ws_sessions.inc(outcome=outcome)


async def _session(websocket: WebSocket, state: ServerState) -> str:
    """Run one streamed job; returns the outcome for the metrics."""
    try:
        spec = resolve(await _read_request(websocket, state), state.registry, state.settings)
    except WebSocketDisconnect:
        return "disconnected"
    except InvalidRequest as e:
        state.metrics.errors.inc(kind="invalid")
        await _close_with_error(websocket, e.errors, POLICY_VIOLATION, state)
        return "invalid"

    outbox = Outbox(state.settings.ws_frame_buffer, on_drop=state.metrics.frames_dropped.inc)
    event_loop = asyncio.get_running_loop()
    job = Job(spec, lambda event: event_loop.call_soon_threadsafe(outbox.put, event), state.settings.request_timeout_s)
    try:
        state.loop.submit(job)
    except LoopFull as e:
        state.metrics.errors.inc(kind="busy")
        await _close_with_error(websocket, str(e), TRY_AGAIN_LATER, state)
        return "busy"
    outbox.put(_start_message(spec))

    sender = asyncio.create_task(_send(websocket, outbox, spec, state))
    listener = asyncio.create_task(_listen(websocket, job, outbox))
    for task in (sender, listener):
        task.add_done_callback(_quietly)
    try:
        await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Not awaited: a handler being cancelled must not wait for anything (anyio, which runs
        # it, would cancel it again and take that for a cancellation from outside).
        job.cancel()  # a no-op once it has ended; frees its place within one step otherwise
        for task in (sender, listener):
            task.cancel()  # a no-op on the one that is done
    if not sender.done():  # the listener saw the socket close first
        return "disconnected"
    if sender.exception() is not None:  # the client left, or did not read in time
        log.info("dropping a WebSocket client: %r", sender.exception())
        await _close(websocket, INTERNAL_ERROR, state)
        return "slow_client" if isinstance(sender.exception(), TimeoutError) else "disconnected"
    outcome, code = sender.result()
    await _close(websocket, code, state)
    return outcome


async def _read_request(websocket: WebSocket, state: ServerState) -> StreamRequest:
    try:
        message = await asyncio.wait_for(websocket.receive(), REQUEST_WAIT_S)
    except TimeoutError:
        raise InvalidRequest([_error("timeout", f"no request within {REQUEST_WAIT_S:g} s")]) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", NORMAL))
    text = message.get("text")
    if text is None:
        raise InvalidRequest([_error("json_invalid", "send the request as one JSON text message")])
    if len(text) > state.settings.max_body_bytes:
        raise InvalidRequest([_error("too_long", f"the request is larger than {state.settings.max_body_bytes} bytes")])
    try:
        return StreamRequest.model_validate(json.loads(text))
    except json.JSONDecodeError as e:
        raise InvalidRequest([_error("json_invalid", f"invalid JSON: {e}")]) from e
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False)
        raise InvalidRequest([{**error, "loc": list(error["loc"])} for error in errors]) from e


async def _listen(websocket: WebSocket, job: Job, outbox: Outbox) -> None:
    """Read the client's messages until the socket closes: {"type": "cancel"} cancels the job (the
    loop confirms with a Cancelled event); anything else is an error that also ends the job."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            is_cancel = json.loads(message.get("text") or "null") == {"type": "cancel"}
        except json.JSONDecodeError:
            is_cancel = False
        job.cancel()
        if not is_cancel:
            outbox.put(ErrorMessage(detail='while sampling, the only message accepted is {"type": "cancel"}'))


async def _send(websocket: WebSocket, outbox: Outbox, spec: JobSpec, state: ServerState) -> tuple[str, int]:
    """Send the outbox's messages until the job's last one; returns (outcome, close code)."""
    while True:
        item = await outbox.get()
        message = await _render(item, spec, state)
        await asyncio.wait_for(websocket.send_text(message.model_dump_json()), state.settings.ws_send_timeout_s)
        if isinstance(message, DoneMessage):
            return "done", NORMAL
        if isinstance(message, CancelledMessage):
            return "cancelled", NORMAL
        if isinstance(item, Failed):
            state.metrics.errors.inc(kind=item.kind)
            return item.kind, FAILURE_CLOSE_CODE[item.kind]
        if isinstance(message, ErrorMessage):
            state.metrics.errors.inc(kind="invalid")
            return "invalid", POLICY_VIOLATION


async def _render(item: Event | BaseModel, spec: JobSpec, state: ServerState) -> BaseModel:
    if isinstance(item, Frame):
        x_t, x0 = await state.encode(_encode_frame, item)
        return FrameMessage(step=item.step, total=item.total, t=item.t, x_t=x_t, x0=x0)
    if isinstance(item, Finished):
        grid, pngs = await state.encode(images.grid_and_images_b64, item.images)
        return DoneMessage(
            grid=grid,
            images=pngs,
            seed=spec.seed,
            model=spec.model.name,
            sampler=spec.sampler,
            steps=spec.steps,
            elapsed_ms=item.elapsed_ms,
        )
    if isinstance(item, Cancelled):
        return CancelledMessage(step=item.step)
    if isinstance(item, Failed):
        return ErrorMessage(detail=item.detail)
    return item


def _quietly(task: asyncio.Task) -> None:
    """Take a task's exception so that asyncio does not log it: once the session is over, a send
    that fails because the client has gone is expected."""
    if not task.cancelled():
        task.exception()


def _encode_frame(frame: Frame) -> tuple[str, str]:
    return images.b64(images.grid_png(frame.x_t)), images.b64(images.grid_png(frame.x0))


def _start_message(spec: JobSpec) -> StartMessage:
    channels, image_size, _ = spec.model.image_shape
    return StartMessage(
        total=spec.steps,
        seed=spec.seed,
        model=spec.model.name,
        sampler=spec.sampler,
        steps=spec.steps,
        n=spec.n,
        every=spec.every,
        image_size=image_size,
        channels=channels,
        params=spec.params,
        label=spec.label,
        guidance=spec.guidance,
    )


async def _close_with_error(websocket: WebSocket, detail, code: int, state: ServerState) -> None:
    try:
        await asyncio.wait_for(
            websocket.send_text(ErrorMessage(detail=detail).model_dump_json()), state.settings.ws_send_timeout_s
        )
    except (TimeoutError, WebSocketDisconnect, RuntimeError):
        return
    await _close(websocket, code, state)


async def _close(websocket: WebSocket, code: int, state: ServerState) -> None:
    # the client may have closed first, or stopped reading: closing must not wait for it
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, TimeoutError):
        await asyncio.wait_for(websocket.close(code), state.settings.ws_send_timeout_s)


def _error(kind: str, message: str) -> dict:
    return {"type": kind, "loc": [], "msg": message}
