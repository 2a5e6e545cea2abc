"""The server's metrics, kept and exposed by prometheus_client. Each Metrics has its own CollectorRegistry
(a test may run several apps in one process), updated from the sampling thread and the event loop alike
(prometheus_client's metrics are thread-safe)."""

from __future__ import annotations

import threading
import time
from collections import deque
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
disable_created_metrics()  # no *_created series: a scrape's time series are the ones below

# waits and latencies of a demo on a CPU (seconds) to a GPU (milliseconds)
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Rate:
    """Events per second over the last `window_s` seconds (a gauge Prometheus cannot derive itself
    between two scrapes of an idle-then-busy demo)."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self._events.append((time.monotonic(), count))

    def per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._events and self._events[0][0] < now - self.window_s:
                self._events.popleft()
            return sum(count for _, count in self._events) / self.window_s


class Metrics:
    """Everything /metrics reports."""

    def __init__(self):
        self.registry = CollectorRegistry()
        counter, gauge, histogram = (partial(kind, registry=self.registry) for kind in (Counter, Gauge, Histogram))
        self.requests = counter(
            "ddpm_http_requests", "HTTP requests by route and status", ("method", "route", "status")
        )
        self.ws_sessions = counter("ddpm_ws_sessions", "WebSocket sampling sessions by outcome", ("outcome",))
        self.errors = counter("ddpm_errors", "Refused or failed sampling requests by kind", ("kind",))
        self.models = gauge("ddpm_models_loaded", "Models being served")
        self.active_jobs = gauge("ddpm_active_jobs", "Jobs in the running batch of the sampling loop")
        self.queued_jobs = gauge("ddpm_queued_jobs", "Jobs waiting in the queue for a place in the batch")
        self.torch_threads = gauge(
            "ddpm_torch_threads", "PyTorch CPU threads of the sampling loop's forwards (server.threads)"
        )
        self.jobs = counter("ddpm_jobs", "Sampling jobs that left the loop, by outcome", ("outcome",))
        self.queue_wait = histogram("ddpm_queue_wait_seconds", "From a job's submission to its start", buckets=SECONDS)
        self.first_frame = histogram(
            "ddpm_time_to_first_frame_seconds", "From a streamed job's submission to its first frame", buckets=SECONDS
        )
        self.forward_seconds = histogram("ddpm_forward_seconds", "Latency of one batched UNet forward", buckets=SECONDS)
        self.batch_jobs = histogram(
            "ddpm_batch_jobs", "Jobs advanced by one batched UNet forward", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.batch_images = histogram(
            "ddpm_batch_images",
            "Rows of one batched UNet forward: its images, guided ones counting twice",
            buckets=(1, 4, 16, 64, 256, 1024, 4096),
        )
        self.denoising_steps = counter("ddpm_denoising_steps", "Denoising steps taken, one per job")
        self.step_rate = Rate()
        steps_per_second = gauge("ddpm_denoising_steps_per_second", "Denoising steps per second over the last 10 s")
        steps_per_second.set_function(self.step_rate.per_second)
        self.frames_dropped = counter(
            "ddpm_ws_frames_dropped", "Frames replaced by a newer one before a slow client read them"
        )

    def record_steps(self, count: int) -> None:
        self.denoising_steps.inc(count)
        self.step_rate.add(count)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if it has none yet), e.g. value("ddpm_jobs_total", outcome="cancelled")."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
