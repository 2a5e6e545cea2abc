"""The one bridge between the sampling thread and the event loop, and the one failure table.

A route hands a JobSpec to `JobBridge.submit` with an Outbox and the client's address: the loop's
events (Queued while it waits, Started, frames, then Finished, Cancelled or Failed) arrive in it
on the event loop, to be awaited with `Outbox.get`, or with `run_to_end` when only the outcome
matters (REST). Everything that can stop a request, from a bad field to the server shutting down,
is a `Refused(kind, detail)`, and FAILURES says what each kind is over REST (status) and over the
WebSocket (close code, after an error message).

Admission: the loop runs a batch of jobs and queues the rest, refusing only when its queue is full
("busy"); here each client (its address, as server.app's proxy-header middleware sets it) may hold
at most `max_per_client` jobs running or queued ("client_limit").

Shutdown is bounded here too: `drain` stops admitting, lets the running jobs finish within a grace
period, fails the rest ("shutdown": 503, or an error and 1001) and waits briefly for every client
to have its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from server.loop import (
    Cancelled,
    Event,
    Failed,
    Finished,
    Frame,
    Job,
    JobSpec,
    LoopClosed,
    LoopFull,
    Queued,
    SamplingLoop,
    Started,
)
from server.metrics import Metrics
from server.parsing import safe_errors, safe_text
from server.validation import InvalidRequest

log = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455)
NORMAL, GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR, TRY_AGAIN_LATER = 1000, 1001, 1008, 1011, 1013
RETRY_AFTER_S = 2  # when the loop has no estimate of its own (server.loop.SamplingLoop.retry_after_s)


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


def client_address(connection: HTTPConnection) -> str:
    """Who sends a request, for the per-client limit: the peer's address, or the client's as a
    trusted proxy forwards it (server.app applies X-Forwarded-For from trusted_proxies only)."""
    return connection.client.host if connection.client else "unknown"


class Outbox:
    """What a client is to be sent, in order, as awaitables. Frames are droppable: when
    `frame_slots` unsent frames wait, a newer one replaces the oldest. Every other item, and the
    last frame, is always kept."""

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


async def _outcome(outbox: Outbox, wait_s: float) -> Event:
    """The job's last event; Failed("timeout") if it has not started within `wait_s`."""
    try:
        async with asyncio.timeout(wait_s):
            while not isinstance(event := await outbox.get(), Started):
                if not isinstance(event, Queued):
                    return event  # it ended before it started
    except TimeoutError:
        return Failed("timeout", f"no sampling place came free within the {wait_s:g} s limit")
    while isinstance(event := await outbox.get(), Frame):
        pass
    return event


def _droppable(item) -> bool:
    return isinstance(item, Frame) and item.step < item.total


class JobBridge:
    """The sampling loop as the event loop sees it. Created on the event loop (in the lifespan)."""

    def __init__(self, loop: SamplingLoop, metrics: Metrics, timeout_s: float, max_per_client: int = 1 << 30):
        self.loop = loop
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_per_client = max_per_client
        self.draining = asyncio.Event()
        self._per_client: dict[str, int] = {}  # jobs running or queued, by client address
        self._clients = 0
        self._no_clients = asyncio.Event()
        self._no_clients.set()

    def submit(self, spec: JobSpec, outbox: Outbox, client: str) -> Job:
        """Run or queue `spec` in the loop, its events going to `outbox`; Refused if the queue is
        full or `client` already has its most jobs."""
        if self._per_client.get(client, 0) >= self.max_per_client:
            raise Refused("client_limit", f"you already have {self.max_per_client} runs going or waiting (the most)")
        event_loop = asyncio.get_running_loop()

        def receive(event: Event) -> None:  # on the event loop
            if isinstance(event, Finished | Cancelled | Failed):
                self._release(client)
            outbox.put(event)

        job = Job(spec, lambda event: event_loop.call_soon_threadsafe(receive, event), self.timeout_s)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        try:
            self.loop.submit(job)
        except LoopClosed as e:
            self._release(client)
            raise Refused("shutdown", str(e)) from None
        except LoopFull as e:
            self._release(client)
            raise Refused("busy", str(e), self.loop.retry_after_s()) from None
        return job

    def _release(self, client: str) -> None:
        left = self._per_client.pop(client) - 1
        if left:
            self._per_client[client] = left

    async def run_to_end(
        self, spec: JobSpec, client: str, client_gone: Callable[[], Awaitable]
    ) -> Finished | Cancelled | None:
        """Run a job that streams no frames to its end, after its wait in the queue (at most
        timeout_s). Refused if it failed; None if `client_gone()` completed first (the job is then
        cancelled, which frees its place at once, or within one step if it runs)."""
        outbox = Outbox()
        job = self.submit(spec, outbox, client)
        outcome = asyncio.ensure_future(_outcome(outbox, self.timeout_s))
        gone = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({outcome, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            outcome.cancel()
            job.cancel()  # a no-op once the job has ended
        if not outcome.done() or outcome.cancelled():
            return None
        event: Event = outcome.result()
        if isinstance(event, Failed):
            raise Refused(event.kind, event.detail)
        return event

    @contextmanager
    def client(self) -> Iterator[None]:
        """Counts a client (a REST request or a WebSocket session) until it has its answer."""
        self._clients += 1
        self._no_clients.clear()
        try:
            yield
        finally:
            self._clients -= 1
            if not self._clients:
                self._no_clients.set()

    async def drain(self, grace_s: float, settle_s: float, give_up: Callable[[], bool] = lambda: False) -> None:
        """Stop admitting jobs; let those running finish within `grace_s`, then stop the loop,
        which fails the rest with "shutdown"; then give the clients `settle_s` to get their answer."""
        self.draining.set()
        self.loop.close()
        deadline = time.monotonic() + grace_s
        while self.loop.active_jobs and time.monotonic() < deadline and not give_up():
            await asyncio.sleep(0.05)
        if self.loop.active_jobs:
            why = "at a second signal" if give_up() else f"after {grace_s:g} s"
            log.warning("shutting down: stopping %d jobs still running %s", self.loop.active_jobs, why)
        await asyncio.to_thread(self.loop.stop)
        deadline = time.monotonic() + settle_s
        # in slices: a second signal (give_up) ends this wait too
        while not self._no_clients.is_set() and not give_up() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_clients.wait(), min(left, 0.05))
        if self._clients and not give_up():
            log.warning("shutting down: %d clients did not take their answer within %g s", self._clients, settle_s)
