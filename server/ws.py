"""WS /ws/sample: one sampling run per connection, every (k-th) x_t streamed as it is computed.

The client sends one request message; the server answers as server.openapi's DESCRIPTION says. While the
job runs, a listener task reads the client's messages (cancel, or the socket closing) and a sender task
drains the connection's Outbox, encoding PNGs in the encoder pool. A slow client only loses frames of its
own: the Outbox keeps the newest, and a send that takes longer than ws_send_timeout_s drops the client.

Every way a session can end is one outcome: done or cancelled (close 1000), disconnected or
slow_client (nothing more can be sent), or a Refused kind, sent as an error message and closed with
the code of server.errors.FAILURES. Any exception, expected or not, becomes one of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

from server import images
from server.errors import NORMAL, POLICY_VIOLATION, InvalidRequest, Refused, error
from server.jobs import Outbox, ServerState, client_address, first, get_state
from server.loop import Cancelled, Event, Finished, Frame, Job, JobSpec, Queued
from server.parsing import parse_json, parse_request
from server.schemas import CancelledMessage, DoneMessage, FrameMessage, QueuedMessage, StartMessage, StreamRequest
from server.validation import resolve

log = logging.getLogger(__name__)

router = APIRouter()


class ClientGone(Exception):
    """The client closed the socket, or stopped reading: nothing more can be sent to it. Its message is
    the outcome: "disconnected" or "slow_client"."""


def origin_allowed(origin: str | None, host: str | None, allowed: list[str], scheme: str = "ws") -> bool:
    """CORS does not apply to WebSockets, so a page on any site could open one to this server with
    the visitor's network position; the handshake's Origin is checked instead. No Origin means no
    browser (a script or curl), which could send any Origin anyway. The same origin is the page's
    scheme (http for ws:, https for wss:, as a trusted proxy's X-Forwarded-Proto sets it), host and port."""
    if origin is None or "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    page_scheme = "https" if scheme == "wss" else "http"
    return host is not None and parts.scheme == page_scheme and parts.netloc.lower() == host.lower()


@router.websocket("/ws/sample")
async def ws_sample(websocket: WebSocket):
    state = get_state(websocket)
    origin, host = websocket.headers.get("origin"), websocket.headers.get("host")
    if not origin_allowed(origin, host, state.settings.cors_origins, websocket.url.scheme):
        state.metrics.ws_sessions.labels(outcome="forbidden").inc()
        await websocket.close(POLICY_VIOLATION)  # before accept(): the handshake is refused with 403
        return
    with state.jobs.client():
        outcome = await _session(websocket, state)
    state.metrics.ws_sessions.labels(outcome=outcome).inc()


async def _session(websocket: WebSocket, state: ServerState) -> str:
    """Run one streamed job, whatever happens; returns the outcome for the metrics."""
    try:
        await websocket.accept()
        return await _stream(websocket, state, await _read_request(websocket, state))
    except ClientGone as e:
        if str(e) == "slow_client":
            log.info(
                "dropping a WebSocket client that did not read a message within %g s", state.settings.ws_send_timeout_s
            )
        return str(e)  # no polite close: the server's transport drops the connection (server.transport)
    except (WebSocketDisconnect, OSError):
        return "disconnected"
    except Exception as e:
        refused = Refused.of(e)
        if refused.kind == "error":
            log.exception("a WebSocket session failed")
        state.metrics.errors.labels(kind=refused.kind).inc()
        with contextlib.suppress(ClientGone):  # then it cannot be told why, nor closed politely
            await _send_text(websocket, json.dumps({"type": "error", "kind": refused.kind, **refused.body()}), state)
            await _close(websocket, refused.failure.close_code, state)
        return refused.kind


async def _read_request(websocket: WebSocket, state: ServerState) -> JobSpec:
    """The first message, as a job; InvalidRequest or Refused("shutdown") otherwise."""
    # as long as an HTTP request may take to arrive: an idle socket is held no longer over either
    wait_s = state.settings.request_read_timeout_s
    receive, _ = await first(websocket.receive(), state.jobs.draining.wait(), timeout_s=wait_s)
    if not receive.done():
        if state.jobs.draining.is_set():
            raise Refused("shutdown", "the server is shutting down")
        raise InvalidRequest([error("timeout", f"no request within {wait_s:g} s")])
    message = receive.result()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", NORMAL))
    text = message.get("text")
    if text is None:
        raise InvalidRequest([error("json_invalid", "send the request as one JSON text message")])
    request = parse_request(StreamRequest, text, state.settings)
    return resolve(request, state.registry, state.settings)


async def _stream(websocket: WebSocket, state: ServerState, spec: JobSpec) -> str:
    outbox = Outbox(state.settings.ws_frame_buffer, on_drop=state.metrics.frames_dropped.inc)
    job = state.jobs.submit(spec, outbox, client_address(websocket))
    try:
        sender, listener = await first(_send(websocket, outbox, spec, state), _listen(websocket, job, outbox, state))
    finally:
        job.cancel()  # a no-op once it has ended; frees its place within one step otherwise
    if not sender.done():  # the listener saw the socket close first
        listener.result()  # raises what ended it, if anything did
        return "disconnected"
    outcome = sender.result()  # or what ended the job
    await _close(websocket, NORMAL, state)
    return outcome


async def _listen(websocket: WebSocket, job: Job, outbox: Outbox, state: ServerState) -> None:
    """Read the client's messages until the socket closes: {"type": "cancel"} cancels the job (the
    loop confirms with a Cancelled event); anything else is an error that also ends the job."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        is_cancel = False
        with contextlib.suppress(InvalidRequest):
            is_cancel = parse_json(message.get("text") or "null", state.settings.max_body_bytes) == {"type": "cancel"}
        job.cancel()
        if not is_cancel:
            expected = 'while sampling, the only message accepted is {"type": "cancel"}'
            outbox.put(Refused("invalid", [error("unexpected_message", expected)]))


async def _send(websocket: WebSocket, outbox: Outbox, spec: JobSpec, state: ServerState) -> str:
    """Send the outbox's messages until the job's last one; returns "done" or "cancelled", or
    raises the Refused that ended the job (after the frames sent before it)."""
    while True:
        item = await outbox.get()
        if isinstance(item, Refused):
            raise item
        message = await _render(item, spec, state)
        await _send_text(websocket, message.model_dump_json(), state)
        if isinstance(message, DoneMessage):
            return "done"
        if isinstance(message, CancelledMessage):
            return "cancelled"


async def _send_text(websocket: WebSocket, text: str, state: ServerState) -> None:
    try:
        await asyncio.wait_for(websocket.send_text(text), state.settings.ws_send_timeout_s)
    except TimeoutError:
        raise ClientGone("slow_client") from None
    except (WebSocketDisconnect, RuntimeError, OSError):  # RuntimeError: sending after the close
        raise ClientGone("disconnected") from None


async def _render(item: Event, spec: JobSpec, state: ServerState) -> BaseModel:
    """The message of a loop's event (a failure is a Refused, which _send raises)."""
    if isinstance(item, Frame):
        x_t, x0 = await state.encode(_encode_frame, item)
        return FrameMessage(step=item.step, total=item.total, t=item.t, x_t=x_t, x0=x0)
    if isinstance(item, Finished):
        grid, pngs = await state.encode(images.grid_and_images_b64, item.images)
        return DoneMessage(grid=grid, images=pngs, elapsed_ms=item.elapsed_ms, **spec.echo(DoneMessage.model_fields))
    if isinstance(item, Cancelled):
        return CancelledMessage(step=item.step)
    if isinstance(item, Queued):
        return QueuedMessage(position=item.position, eta_s=None if item.eta_s is None else round(item.eta_s, 1))
    channels, image_size, _ = spec.model.image_shape  # Started: the run's settings and its images' shape
    preview_size = min(image_size, spec.preview_size or image_size)
    at_step = 0 if spec.plan.branch is None else spec.plan.branch[1]
    shape = {"image_size": image_size, "channels": channels, "preview_size": preview_size}
    return StartMessage(
        **{**spec.echo(StartMessage.model_fields), "total": spec.plan.steps_taken, "at_step": at_step, **shape}
    )


def _encode_frame(frame: Frame) -> tuple[str, str]:
    return images.b64(images.grid_png(frame.x_t)), images.b64(images.grid_png(frame.x0))


async def _close(websocket: WebSocket, code: int, state: ServerState) -> None:
    # the client may have closed first, or stopped reading: closing must not wait for it
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, TimeoutError, OSError):
        await asyncio.wait_for(websocket.close(code), state.settings.ws_send_timeout_s)
