"""One sampling thread per device that advances every user's job with batched UNet forwards.

Continuous batching at the level of denoising steps, as LLM servers batch tokens: a job is the
state of one sampling run (a step generator of model.samplers). Each iteration of the loop takes
the current x_t of every active job of a model, runs ONE forward over all of them, each row with
its own timestep, label and guidance weight, hands every job its slice of ε, and advances it.
Jobs join and leave between iterations, so a new user starts at the next iteration instead of
waiting for someone else's 1000 DDPM steps. Each job draws its noise from its own torch.Generator,
so its images depend on its seed only, not on what shares the batch.

Admission: at most `max_jobs` jobs are in the running batch; up to `max_queue` more wait in a FIFO
queue and join the batch as places free up, in order; only a full queue refuses a job. A queued job
is told its position and an estimate of its wait (`_etas`) at once and whenever the position changes.

The loop never waits for a client: it reports what happens to a job through the job's `report`
callback (called on the loop thread; it must only hand the event over, e.g. with
call_soon_threadsafe), and the server encodes and sends from there.

The loop's thread is the only one in the process that runs PyTorch's parallel CPU kernels: the
models are loaded and warmed up on it (`start(prepare)`), and the other threads touch only small
tensors or NumPy. With OpenMP each thread that runs a parallel region gets a team of its own, and
once the teams hold more threads than there are cores, libgomp stops spinning between regions: every
op then waits for its threads to be woken, and a forward on a 2-core machine took 1.5-1.7× as long
(docs/performance.md). The one team's thread count follows the cores other processes leave free
(server.threads), where spinning threads would wait on each other.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

import torch

from model import editing
from model.samplers import StepGenerator, guided_eps
from server.errors import Refused
from server.images import downscale
from server.metrics import Metrics
from server.registry import LoadedModel
from server.threads import SAMPLE_S, CpuThreads

log = logging.getLogger(__name__)
T = TypeVar("T")

POSITION_INTERVAL_S = 0.25  # a queued job hears of its new position at most this often
ITERATION_SMOOTHING = 0.2  # weight of the latest iteration in the measured time of one


@dataclass(frozen=True, eq=False)
class JobSpec:
    """What to sample: a run's plan (model.editing.Plan: its sampler, steps, n, seed and start), which the
    loop runs and the queue counts, and the settings of the request (server.validation) it does not hold."""

    model: LoadedModel
    plan: editing.Plan
    label: int | None = None  # None: unconditional (the null label of a conditional model)
    guidance: float | None = None  # classifier-free guidance w, with a label (None: plain conditional)
    every: int = 0  # report every k-th step (and always the last) as a Frame; 0: no frames
    preview_size: int | None = None  # a frame's images are sent at most this many pixels a side (None: full size)
    origin: JobSpec | None = None  # a branch's original run: its label and guidance until the plan's at_step

    def echo(self, names) -> dict:
        """The settings of these names (a reply's fields), as the replies report them."""
        settings = vars(self.plan) | vars(self) | {"model": self.model.name, "sampler": self.plan.sampler.name}
        return {name: settings[name] for name in names if name in settings}


# --- what the loop reports about a job ----------------------------------------------------------


@dataclass
class Queued:
    position: int  # jobs waiting ahead of it
    eta_s: float | None  # about when it should start, in seconds (None until the loop has measured an iteration)


@dataclass
class Started:
    """The job has a place in the batch and its first step is next."""


@dataclass
class Frame:
    """x_t after `step` of `total` steps, and the x0 predicted on the way; t = -1 at the end."""

    step: int
    total: int
    t: int
    x_t: torch.Tensor  # previews: at most the job's preview_size pixels a side
    x0: torch.Tensor


@dataclass
class Finished:
    images: torch.Tensor
    elapsed_ms: float


@dataclass
class Cancelled:
    step: int


@dataclass
class Failed:
    kind: str  # "timeout" | "shutdown" | "error"
    detail: str


Event = Queued | Started | Frame | Finished | Cancelled | Failed


class Job:
    _ids = itertools.count(1)

    def __init__(self, spec: JobSpec, report: Callable[[Event], None], timeout_s: float = float("inf")):
        self.id = next(Job._ids)
        self.spec = spec
        self.report = report
        self.timeout_s = timeout_s
        self.cancelled = threading.Event()  # set by cancel()
        self._loop: SamplingLoop | None = None  # set by submit: cancelling a queued job withdraws it
        self.submitted_at = 0.0
        self.started_at = 0.0
        self.position: int | None = None  # in the queue, as last reported; None once started
        self.framed = False  # a frame has been reported
        # set on the loop thread by start()
        self.steps: StepGenerator | None = None
        self.step = None
        self._drawn: torch.Tensor | None = None  # the classes drawn for a model without an unconditional class

    def cancel(self) -> None:
        """Ask the loop to drop this job: at once if it waits in the queue, else before its next
        step. Safe from any thread."""
        self.cancelled.set()
        if self._loop is not None:
            self._loop.withdraw(self)

    def start(self) -> None:
        """Draw x_T and build the step generator; on the loop thread, like all torch work."""
        spec, model = self.spec, self.spec.model
        self.started_at = time.perf_counter()
        self.steps, generator = spec.plan.begin(model.device, model.image_shape)
        self.step = next(self.steps)
        if model.num_classes and not model.guidance:
            # no unconditional class: a class drawn for each image samples the same distribution
            self._drawn = torch.randint(model.num_classes, (spec.plan.n,), generator=generator, device=model.device)

    def condition(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The labels and guidance weights of the rows of the next step: a replayed step's are its origin's."""
        spec, model = self.spec, self.spec.model
        while spec.origin is not None and self.step.index < spec.plan.branch[1]:  # (origin, at_step)
            spec = spec.origin
        labels = self._drawn  # None, but on a model without an unconditional class: a class drawn per image
        if model.num_classes and (spec.label is not None or model.guidance):
            label = model.unet.null_label if spec.label is None else spec.label
            labels = torch.full((spec.plan.n,), label, dtype=torch.long, device=model.device)
        w = 1.0 if spec.guidance is None else spec.guidance
        return labels, torch.full((spec.plan.n,), w, device=model.device)

    def advance(self, eps: torch.Tensor) -> list[Event]:
        """Take one step with ε for the current x_t; return what to report: the frame of this step
        if it is streamed (the last one always is), then Finished after the last step."""
        self.step = step = self.steps.send(eps)
        events: list[Event] = []
        replayed = self.spec.origin is not None and step.index <= self.spec.plan.branch[1] and not step.done
        if self.spec.every and not replayed and (step.index % self.spec.every == 0 or step.done):
            # previews, shrunk where they are made: a 256 px batch leaves the GPU at 1/16 of its size
            x_t, x0 = (downscale(x, self.spec.preview_size).cpu() for x in (step.x_t, step.x0))
            events.append(Frame(step.index, step.total, step.t, x_t, x0))
        if step.done:
            events.append(Finished(step.x_t.cpu(), (time.perf_counter() - self.started_at) * 1000))
        return events

    def remaining_steps(self) -> int:
        return self.spec.plan.steps_taken if self.step is None else self.step.total - self.step.index


class SamplingLoop:
    """The sampling thread of one device (the module docstring says how it admits jobs)."""

    def __init__(self, device: torch.device, max_jobs: int, metrics: Metrics | None = None, max_queue: int = 0):
        self.device = device
        self.max_jobs = max_jobs
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: list[Job] = []
        self._queue: deque[Job] = deque()  # waiting for a place in the batch, first come first served
        self._running = 0  # jobs given a place in the batch and not yet reported finished, cancelled or failed
        self._queue_changed = False
        self._positions_sent_at = 0.0
        self.iteration_s: float | None = None  # one iteration's measured time (the batch's forwards), smoothed
        self._next_start: tuple[float, float] | None = None  # (when, in how many s) the queue's head should start
        self._stopping = False
        self._closed = False  # no more jobs admitted; those running still run
        self._active: list[Job] = []  # touched by the loop thread only
        self._thread: threading.Thread | None = None  # made by start

    @property
    def active_jobs(self) -> int:
        """Jobs running or waiting."""
        with self._lock:
            return self._running + len(self._queue)

    @property
    def queued_jobs(self) -> int:
        with self._lock:
            return len(self._queue)

    def retry_after_s(self) -> float | None:
        """About when a place in the queue should free up: when its first job should start, as last
        estimated (None: not measured yet)."""
        if self._next_start is None:
            return None
        estimated_at, eta = self._next_start
        return max(0.0, eta - (time.perf_counter() - estimated_at))

    def submit(self, job: Job) -> None:
        """Give the job a place in the batch, or in the queue (it is then reported Queued at once);
        Refused("busy") when both are full, Refused("shutdown") once the loop is closed."""
        job.submitted_at = time.perf_counter()
        job._loop = self
        with self._lock:
            if self._closed:
                raise Refused("shutdown", "the server is shutting down")
            if self._running < self.max_jobs:
                self._running += 1
                self._incoming.append(job)
                self._wake.notify()
            elif len(self._queue) < self.max_queue:
                job.position = len(self._queue)
                self._queue.append(job)
            else:
                taken = f"the {self.max_jobs} sampling places and the queue's {self.max_queue} are taken"
                raise Refused("busy", taken, self.retry_after_s())
            self._count()
            queued = job.position is not None
            eta = self._etas([*self._queue][: job.position + 1], self._incoming)[-1] if queued else None
        if queued:
            self._report(job, Queued(job.position, eta))

    def withdraw(self, job: Job) -> None:
        """Remove a cancelled job from the queue at once (a running job leaves before its next step)."""
        with self._lock:
            if job not in self._queue:
                return
            self._queue.remove(job)
            self._queue_changed = True
            self._count()
        self._end(job, Cancelled(0))

    def start(self, prepare: Callable[[], T] | None = None) -> T | None:
        """Start the loop's thread; it first runs `prepare` (loading the models, say) and this waits
        for it, returning what it returns or raising what it raises (the loop then does not start)."""
        prepared: Future = Future()
        name = f"sampling-{self.device}"
        self._thread = threading.Thread(target=self._serve, args=(prepare, prepared), name=name, daemon=True)
        self._thread.start()
        return prepared.result()

    def close(self) -> None:
        """Admit no more jobs (submit refuses them); the jobs running run on, the queued ones
        are failed with "shutdown" (they would not start within a shutdown's grace period)."""
        with self._lock:
            self._closed = True
            queued, self._queue = list(self._queue), deque()
            self._count()
        for job in queued:
            self._end(job, Failed("shutdown", "the server is shutting down"))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current iteration; jobs still running are reported Failed("shutdown")."""
        self.close()
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout_s)

    def _count(self) -> None:  # with the lock held
        self.metrics.active_jobs.set(self._running)
        self.metrics.queued_jobs.set(len(self._queue))

    # --- the loop thread ---

    def _serve(self, prepare: Callable[[], T] | None, prepared: Future) -> None:
        try:
            prepared.set_result(None if prepare is None else prepare())
        except BaseException as e:
            prepared.set_exception(e)
            return
        threads = CpuThreads(torch.get_num_threads()) if self.device.type == "cpu" else None
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._incoming or self._active or self._stopping):
                        self._wake.wait(None if threads is None else SAMPLE_S)
                        if threads is not None:  # idle, it reads the load: a new job runs on the cores free now
                            threads.adapt()
                    if self._stopping:
                        break
                    joining, self._incoming = self._incoming, []
                if threads is not None:
                    self.metrics.torch_threads.set(threads.adapt())
                began = time.perf_counter()
                for job in joining:
                    self._join(job)
                self._retire_stopped_jobs()
                for name in dict.fromkeys(job.spec.model.name for job in self._active):  # one forward a model
                    self._advance([job for job in self._active if job.spec.model.name == name])
                if self._active:
                    elapsed = time.perf_counter() - began
                    last = self.iteration_s
                    self.iteration_s = elapsed if last is None else last + ITERATION_SMOOTHING * (elapsed - last)
                self._send_positions()
        with self._lock:
            leftover, self._incoming = self._active + self._incoming, []
        self._active = []
        for job in leftover:
            self._leave(job, Failed("shutdown", "the server is shutting down"))

    def _join(self, job: Job) -> None:
        try:
            job.start()
        except Exception:  # the exception's text stays in the log: it may describe the server's insides
            log.exception("job %d could not start", job.id)
            self._leave(job, Failed("error", f"could not start sampling (job {job.id}; the server's log says why)"))
            return
        self.metrics.queue_wait.observe(job.started_at - job.submitted_at)
        job.position = None
        self._active.append(job)
        self._report(job, Started())

    def _retire_stopped_jobs(self) -> None:
        now = time.perf_counter()
        for job in list(self._active):
            if job.cancelled.is_set():
                self._leave(job, Cancelled(job.step.index))
            elif now - job.started_at > job.timeout_s:
                self._leave(job, Failed("timeout", f"sampling took longer than the {job.timeout_s:g} s limit"))

    def _advance(self, jobs: list[Job]) -> None:
        """One batched forward for all `jobs` (of one model), then one step of each."""
        model = jobs[0].spec.model
        sizes = [job.spec.plan.n for job in jobs]
        x = torch.cat([job.step.x_t for job in jobs])
        t = torch.cat([torch.full((job.spec.plan.n,), job.step.t, device=model.device) for job in jobs])
        conditions = [job.condition() for job in jobs]
        labels = torch.cat([labels for labels, _ in conditions]) if model.num_classes else None
        guidance = torch.cat([guidance for _, guidance in conditions])
        began = time.perf_counter()
        try:
            eps = guided_eps(model.unet, x, t, labels, guidance)
        except Exception:  # out of memory, most likely: fail these jobs, keep serving
            log.exception("UNet forward failed for %d jobs of %s", len(jobs), model.name)
            for job in jobs:
                self._leave(job, Failed("error", f"the model failed (job {job.id}; the server's log says why)"))
            return
        self.metrics.forward_seconds.observe(time.perf_counter() - began)  # eps is on the CPU, or awaited below
        self.metrics.batch_jobs.observe(len(jobs))
        guided_rows = 0 if labels is None else int(((labels != model.unet.null_label) & (guidance != 1)).sum())
        self.metrics.batch_images.observe(len(x) + guided_rows)
        rows = len(x) if model.guidance_input else len(x) + guided_rows  # the rows the forward ran
        self.metrics.record_steps(len(jobs))
        for job, job_eps in zip(jobs, eps.split(sizes), strict=True):
            try:
                events = job.advance(job_eps)
            except Exception:
                log.exception("job %d failed", job.id)
                self._leave(job, Failed("error", f"sampling failed (job {job.id}; the server's log says why)"))
                continue
            for event in events:
                if isinstance(event, Frame) and not job.framed:
                    job.framed = True
                    self.metrics.first_frame.observe(time.perf_counter() - job.submitted_at)
                if isinstance(event, Finished):
                    self._leave(job, event)
                else:
                    self._report(job, event)
        model.record_row_time((time.perf_counter() - began) / rows)

    def _leave(self, job: Job, event: Finished | Cancelled | Failed) -> None:
        """A job of the batch ends: its place goes to the first job of the queue."""
        if job in self._active:
            self._active.remove(job)
        with self._lock:
            self._running -= 1
            if self._queue and not self._closed:
                self._incoming.append(self._queue.popleft())
                self._running += 1
                self._queue_changed = True
            self._count()
        self._end(job, event)

    def _end(self, job: Job, event: Finished | Cancelled | Failed) -> None:
        self.metrics.jobs.labels(outcome=type(event).__name__.lower()).inc()
        self._report(job, event)

    def _send_positions(self) -> None:
        """Tell each queued job whose position changed where it stands, at most every POSITION_INTERVAL_S."""
        now = time.perf_counter()
        if not self._queue_changed or now - self._positions_sent_at < POSITION_INTERVAL_S:
            return
        with self._lock:
            queued, joining = list(self._queue), list(self._incoming)
            self._queue_changed = False
        self._positions_sent_at = now
        etas = self._etas(queued, joining)
        self._next_start = (now, etas[0]) if etas and etas[0] is not None else None
        for position, (job, eta) in enumerate(zip(queued, etas, strict=True)):
            if job.position != position:
                job.position = position
                self._report(job, Queued(position, eta))

    def _etas(self, queued: list[Job], joining: list[Job]) -> list[float | None]:
        """When each job of `queued` (the queue from its first job) should start: the queue played forward on the
        measured iteration time, each place of the batch freeing when its job has taken its
        remaining steps, for the next job of the queue to take it."""
        if self.iteration_s is None:
            return [None] * len(queued)
        # submit reads the active list from another thread: a stale copy only puts the estimate a step off
        running = [job.remaining_steps() for job in [*list(self._active), *joining]]
        frees = sorted(running)[: self.max_jobs] + [0] * max(0, self.max_jobs - len(running))
        heapq.heapify(frees)
        etas = []
        for job in queued:
            start = heapq.heappop(frees)
            heapq.heappush(frees, start + job.spec.plan.steps_taken)
            etas.append(start * self.iteration_s)
        return etas

    def _report(self, job: Job, event: Event) -> None:
        try:
            job.report(event)
        except Exception:  # a listener whose event loop is gone must not take the loop down
            log.exception("could not report %s of job %d", type(event).__name__, job.id)
