"""The one bridge between the sampling thread and the event loop, and what the routes share (ServerState).

A route hands a JobSpec to `JobBridge.submit` with an Outbox and the client's address: the loop's events
(Queued while it waits, Started, frames, then Finished or Cancelled) arrive in it on the event loop, to be
awaited with `Outbox.get`, or with `run_to_end` when only the outcome matters (REST). What cannot run is a
`Refused` (server.errors), and so is a job that failed. Beyond the loop's own admission (server.loop), each
client may hold at most `max_per_client` jobs running or queued ("client_limit"). Shutdown is bounded here
too (`drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from starlette.requests import HTTPConnection

from model.device import resolve_device
from server.errors import Refused
from server.loop import Cancelled, Event, Failed, Finished, Frame, Job, JobSpec, Queued, SamplingLoop, Started
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.settings import Settings
from server.threads import CpuThreads

log = logging.getLogger(__name__)


def client_address(connection: HTTPConnection) -> str:
    """Who sends a request, for the per-client limit: the peer's address, or the client's as a
    trusted proxy forwards it (server.middleware applies X-Forwarded-For from trusted_proxies only)."""
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


async def _outcome(outbox: Outbox, wait_s: float) -> Finished | Cancelled:
    """The job's last event; Refused if it failed, or has not started within `wait_s`."""
    try:
        async with asyncio.timeout(wait_s):
            while isinstance(event := await outbox.get(), Queued):
                pass
    except TimeoutError:
        raise Refused("timeout", f"no sampling place came free within the {wait_s:g} s limit") from None
    while isinstance(event, Started | Frame):
        event = await outbox.get()
    if isinstance(event, Refused):
        raise event
    return event


def _droppable(item) -> bool:
    return isinstance(item, Frame) and item.step < item.total


async def first(*awaitables: Awaitable, timeout_s: float | None = None) -> list[asyncio.Future]:
    """The awaitables as tasks, once one is done (or `timeout_s` has passed): the others are cancelled
    but not awaited, since a handler being cancelled must not wait for anything (anyio, which runs it,
    would cancel it again and take that for a cancellation from outside)."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    for task in tasks:
        task.add_done_callback(_quietly)
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()  # a no-op on one that is done
    return tasks


def _quietly(task: asyncio.Task) -> None:
    """Take a task's exception so that asyncio does not log it: first's caller re-raises what matters."""
    if not task.cancelled():
        task.exception()


class JobBridge:
    """The sampling loop as the event loop sees it. Created on the event loop (in the lifespan)."""

    def __init__(self, loop: SamplingLoop, timeout_s: float, max_per_client: int = 1 << 30):
        self.loop = loop
        self.timeout_s = timeout_s
        self.max_per_client = max_per_client
        self.draining = asyncio.Event()
        self._per_client: Counter[str] = Counter()  # jobs running or queued, by client address
        self._clients = 0  # counted by client()

    def submit(self, spec: JobSpec, outbox: Outbox, client: str) -> Job:
        """Run or queue `spec` in the loop, its events going to `outbox` (Failed as a Refused); Refused otherwise."""
        if self._per_client[client] >= self.max_per_client:
            raise Refused("client_limit", f"you already have {self.max_per_client} runs going or waiting (the most)")
        event_loop = asyncio.get_running_loop()

        def receive(event: Event) -> None:  # on the event loop
            if isinstance(event, Finished | Cancelled | Failed):
                self._per_client -= Counter([client])  # in place; a client's count of 0 leaves the Counter
            outbox.put(Refused(event.kind, event.detail) if isinstance(event, Failed) else event)

        job = Job(spec, lambda event: event_loop.call_soon_threadsafe(receive, event), self.timeout_s)
        self._per_client[client] += 1
        try:
            self.loop.submit(job)
        except Refused:
            self._per_client -= Counter([client])
            raise
        return job

    async def run_to_end(
        self, spec: JobSpec, client: str, client_gone: Callable[[], Awaitable]
    ) -> Finished | Cancelled | None:
        """Run a job that streams no frames to its end, after its wait in the queue (at most
        timeout_s). Refused if it failed; None if `client_gone()` completed first (the job is then
        cancelled, which frees its place at once, or within one step if it runs)."""
        outbox = Outbox()
        job = self.submit(spec, outbox, client)
        try:
            outcome, _ = await first(_outcome(outbox, self.timeout_s), client_gone())
        finally:
            job.cancel()  # a no-op once the job has ended
        if not outcome.done() or outcome.cancelled():
            return None
        return outcome.result()

    @contextlib.contextmanager
    def client(self) -> Iterator[None]:
        """Counts a client (a REST request or a WebSocket session) until it has its answer."""
        self._clients += 1
        try:
            yield
        finally:
            self._clients -= 1

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
        while self._clients and time.monotonic() < deadline and not give_up():
            await asyncio.sleep(0.05)
        if self._clients and not give_up():
            log.warning("shutting down: %d clients did not take their answer within %g s", self._clients, settle_s)


@dataclass
class ServerState:
    """What the routes share while the app runs: set up by the app's lifespan, found on app.state."""

    settings: Settings
    registry: ModelRegistry
    loop: SamplingLoop
    jobs: JobBridge  # the way to the loop from the event loop
    metrics: Metrics
    encoder: ThreadPoolExecutor  # PNG encoding: off the event loop and off the sampling thread

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics, stopping: Callable[[], bool]) -> ServerState:
        """Load the models and start the sampling loop on the settings' device; once `stopping()` says
        so (a signal came while they load), the models left are not loaded."""
        device = resolve_device(settings.device)

        def prepare() -> ModelRegistry:
            # on the thread that samples, like all parallel torch work (server.loop says why): even
            # set_num_threads starts a team of OpenMP threads for the thread that calls it
            if settings.torch_threads:
                # process-wide; with every core busy elsewhere, threads that wait on each other make each op slower
                torch.set_num_threads(settings.torch_threads)
            # the start-up timing on the threads the sampling loop will use: on a machine whose cores other
            # processes keep busy, spinning threads made it 5-15x the loop's own (server.threads)
            threads = CpuThreads(torch.get_num_threads()) if device.type == "cpu" else None
            adapt = threads.adapt if threads else lambda: None
            registry = ModelRegistry.load(settings.checkpoint_dir, device, settings.default_model, stopping, adapt)
            if threads is not None:
                torch.set_num_threads(threads.most)  # the loop's own CpuThreads starts from the count it was given
            return registry

        loop = SamplingLoop(device, settings.max_jobs, metrics, settings.max_queue)
        registry = loop.start(prepare)
        metrics.models.set(len(registry.models))
        encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="png")
        jobs = JobBridge(loop, settings.request_timeout_s, settings.max_jobs_per_client)
        log.info(
            "serving %s on %s (default %s), at most %d jobs at once and %d waiting, %d PyTorch CPU threads",
            ", ".join(registry.models) or "no models",
            device,
            registry.default,
            settings.max_jobs,
            settings.max_queue,
            torch.get_num_threads(),
        )
        return cls(settings, registry, loop, jobs, metrics, encoder)

    def stop(self) -> None:
        self.jobs.draining.set()
        self.loop.stop()
        self.encoder.shutdown(wait=False, cancel_futures=True)

    async def encode(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.encoder, fn, *args)


def get_state(connection: HTTPConnection) -> ServerState:
    return connection.app.state.server
