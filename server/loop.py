"""One sampling thread per device that advances every user's job with batched UNet forwards.

Continuous batching at the level of denoising steps, as LLM servers batch tokens: a job is the
state of one sampling run (a step generator of model.samplers). Each iteration of the loop takes
the current x_t of every active job of a model, runs ONE forward over all of them, each row with
its own timestep, label and guidance weight, hands every job its slice of ε, and advances it.
Jobs join and leave between iterations, so a new user starts at the next iteration instead of
waiting for someone else's 1000 DDPM steps. Each job draws its noise from its own torch.Generator,
so its images depend on its seed only, not on what shares the batch.

The loop never waits for a client: it reports what happens to a job through the job's `report`
callback (called on the loop thread; it must only hand the event over, e.g. with
call_soon_threadsafe), and the server encodes and sends from there.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from model.samplers import SAMPLERS, StepGenerator, guided_eps, initial_noise, make_generator
from server.images import downscale
from server.metrics import Metrics
from server.registry import LoadedModel

log = logging.getLogger(__name__)


class LoopFull(Exception):
    """Every place in the loop is taken; try again later."""


class LoopClosed(LoopFull):
    """The loop admits no more jobs: the server is shutting down."""


@dataclass(frozen=True)
class JobSpec:
    """What to sample. Validated before it gets here (server.validation)."""

    model: LoadedModel
    sampler: str  # a name of the sampler table, model.samplers.SAMPLERS
    steps: int
    n: int
    seed: int
    params: dict = field(default_factory=dict)  # the sampler's parameters; those left out take its defaults
    label: int | None = None  # None: unconditional (the null label of a conditional model)
    guidance: float | None = None  # classifier-free guidance w, with a label (None: plain conditional)
    every: int = 0  # report every k-th step (and always the last) as a Frame; 0: no frames
    preview_size: int | None = None  # a frame's images are sent at most this many pixels a side (None: full size)


# --- what the loop reports about a job ----------------------------------------------------------


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


Event = Frame | Finished | Cancelled | Failed


class Job:
    _ids = itertools.count(1)

    def __init__(self, spec: JobSpec, report: Callable[[Event], None], timeout_s: float = float("inf")):
        self.id = next(Job._ids)
        self.spec = spec
        self.report = report
        self.timeout_s = timeout_s
        self._cancelled = threading.Event()
        self.started_at = 0.0
        # set on the loop thread by start()
        self.steps: StepGenerator | None = None
        self.step = None
        self.labels: torch.Tensor | None = None
        self.guidance: torch.Tensor | None = None

    def cancel(self) -> None:
        """Ask the loop to drop this job; it does so before its next step. Safe from any thread."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def start(self) -> None:
        """Draw x_T and build the step generator; on the loop thread, like all torch work."""
        spec, model = self.spec, self.spec.model
        self.started_at = time.perf_counter()
        generator = make_generator(spec.seed, model.device)
        x = initial_noise((spec.n, *model.image_shape), generator, model.device)
        sampler = SAMPLERS[spec.sampler]
        self.steps = sampler.make(model.schedule, x, spec.steps, generator, **sampler.resolve(spec.params))
        self.step = next(self.steps)
        if model.num_classes and spec.label is None and not model.guidance:
            # no unconditional class: a class drawn for each image samples the same distribution
            self.labels = torch.randint(model.num_classes, (spec.n,), generator=generator, device=model.device)
        elif model.num_classes:
            label = model.unet.null_label if spec.label is None else spec.label
            self.labels = torch.full((spec.n,), label, dtype=torch.long, device=model.device)
        w = 1.0 if spec.guidance is None else spec.guidance
        self.guidance = torch.full((spec.n,), w, device=model.device)

    def advance(self, eps: torch.Tensor) -> list[Event]:
        """Take one step with ε for the current x_t; return what to report: the frame of this step
        if it is streamed (the last one always is), then Finished after the last step."""
        self.step = step = self.steps.send(eps)
        events: list[Event] = []
        if self.spec.every and (step.index % self.spec.every == 0 or step.done):
            # previews, shrunk where they are made: a 256 px batch leaves the GPU at 1/16 of its size
            x_t, x0 = (downscale(x, self.spec.preview_size).cpu() for x in (step.x_t, step.x0))
            events.append(Frame(step.index, step.total, step.t, x_t, x0))
        if step.done:
            events.append(Finished(step.x_t.cpu(), (time.perf_counter() - self.started_at) * 1000))
        return events

    def timed_out(self, now: float) -> bool:
        return now - self.started_at > self.timeout_s


class SamplingLoop:
    """The sampling thread of one device. `submit` jobs from any thread; at most `max_jobs` hold a
    place at once (queued or running), so overload is refused instead of queued without bound."""

    def __init__(self, device: torch.device, max_jobs: int, metrics: Metrics | None = None):
        self.device = device
        self.max_jobs = max_jobs
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: list[Job] = []
        self._places = 0  # jobs submitted and not yet reported finished, cancelled or failed
        self._stopping = False
        self._closed = False  # no more jobs admitted; those admitted still run
        self._active: list[Job] = []  # touched by the loop thread only
        self._thread = threading.Thread(target=self._run, name=f"sampling-{device}", daemon=True)

    @property
    def active_jobs(self) -> int:
        with self._lock:
            return self._places

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise LoopClosed("the server is shutting down")
            if self._places >= self.max_jobs:
                raise LoopFull(f"all {self.max_jobs} sampling places are taken")
            self._places += 1
            self._incoming.append(job)
            self.metrics.active_jobs.set(self._places)
            self._wake.notify()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Admit no more jobs (submit raises LoopClosed); the jobs admitted run on."""
        with self._lock:
            self._closed = True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current iteration; jobs still running are reported Failed("shutdown")."""
        with self._lock:
            self._closed = self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # --- the loop thread ---

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._incoming or self._active or self._stopping):
                        self._wake.wait()
                    if self._stopping:
                        break
                    joining, self._incoming = self._incoming, []
                for job in joining:
                    self._join(job)
                self._retire_stopped_jobs()
                for model_jobs in _by_model(self._active).values():
                    self._advance(model_jobs)
        with self._lock:
            leftover, self._incoming = self._active + self._incoming, []
        self._active = []
        for job in leftover:
            self._leave(job, Failed("shutdown", "the server is shutting down"))

    def _join(self, job: Job) -> None:
        try:
            job.start()
        except Exception as e:
            log.exception("job %d could not start", job.id)
            self._leave(job, Failed("error", f"could not start sampling: {e}"))
            return
        self._active.append(job)

    def _retire_stopped_jobs(self) -> None:
        now = time.perf_counter()
        for job in list(self._active):
            if job.cancelled:
                self._leave(job, Cancelled(job.step.index))
            elif job.timed_out(now):
                self._leave(job, Failed("timeout", f"sampling took longer than the {job.timeout_s:g} s limit"))

    def _advance(self, jobs: list[Job]) -> None:
        """One batched forward for all `jobs` (of one model), then one step of each."""
        model = jobs[0].spec.model
        sizes = [job.spec.n for job in jobs]
        x = torch.cat([job.step.x_t for job in jobs])
        t = torch.cat([torch.full((job.spec.n,), job.step.t, device=model.device) for job in jobs])
        labels = torch.cat([job.labels for job in jobs]) if model.num_classes else None
        guidance = torch.cat([job.guidance for job in jobs])
        try:
            eps = guided_eps(model.unet, x, t, labels, guidance)
        except Exception as e:  # out of memory, most likely: fail these jobs, keep serving
            log.exception("UNet forward failed for %d jobs of %s", len(jobs), model.name)
            for job in jobs:
                self._leave(job, Failed("error", f"the model failed: {e}"))
            return
        self.metrics.batch_jobs.observe(len(jobs))
        guided_rows = 0 if labels is None else int(((labels != model.unet.null_label) & (guidance != 1)).sum())
        self.metrics.batch_images.observe(len(x) + guided_rows)
        self.metrics.record_steps(len(jobs))
        for job, job_eps in zip(jobs, eps.split(sizes), strict=True):
            try:
                events = job.advance(job_eps)
            except Exception as e:
                log.exception("job %d failed", job.id)
                self._leave(job, Failed("error", f"sampling failed: {e}"))
                continue
            for event in events:
                if isinstance(event, Finished):
                    self._leave(job, event)
                else:
                    self._report(job, event)

    def _leave(self, job: Job, event: Finished | Cancelled | Failed) -> None:
        if job in self._active:
            self._active.remove(job)
        with self._lock:
            self._places -= 1
            self.metrics.active_jobs.set(self._places)
        self.metrics.jobs.inc(outcome=type(event).__name__.lower())
        self._report(job, event)

    def _report(self, job: Job, event: Event) -> None:
        try:
            job.report(event)
        except Exception:  # a listener whose event loop is gone must not take the loop down
            log.exception("could not report %s of job %d", type(event).__name__, job.id)


def _by_model(jobs: list[Job]) -> dict[str, list[Job]]:
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.spec.model.name, []).append(job)
    return groups
