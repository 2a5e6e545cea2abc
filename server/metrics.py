"""The server's counters, in the Prometheus text exposition format (version 0.0.4).

A few dozen lines instead of a dependency: the server needs counters, gauges and histograms with
labels, updated from the sampling thread and the event loop alike (hence the lock), nothing more.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Metric:
    kind = ""

    def __init__(self, registry: Metrics, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help, labels
        self._lock = registry.lock
        registry.all.append(self)

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.labels)

    def _label_text(self, key: tuple[str, ...], extra: str = "") -> str:
        pairs = [f'{name}="{_escape(value)}"' for name, value in zip(self.labels, key, strict=True)]
        if extra:
            pairs.append(extra)
        return "{" + ",".join(pairs) + "}" if pairs else ""

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self._samples()]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple[str, ...], float] = {} if self.labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> list[str]:
        with self._lock:
            return [f"{self.name}{self._label_text(key)} {_number(v)}" for key, v in sorted(self._values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, *args, buckets: tuple[float, ...], **kwargs):
        super().__init__(*args, **kwargs)
        self.buckets = (*sorted(buckets), math.inf)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[next(i for i, upper in enumerate(self.buckets) if value <= upper)] += 1
            self._sum += value

    def count_above(self, value: float) -> int:
        """How many observations exceeded `value` (a bucket bound)."""
        with self._lock:
            return sum(c for upper, c in zip(self.buckets, self._counts, strict=True) if upper > value)

    def _samples(self) -> list[str]:
        with self._lock:
            lines, cumulative = [], 0
            for upper, count in zip(self.buckets, self._counts, strict=True):
                cumulative += count
                lines.append(f'{self.name}_bucket{{le="{_number(upper)}"}} {cumulative}')
            return [*lines, f"{self.name}_sum {_number(self._sum)}", f"{self.name}_count {cumulative}"]


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
        self.lock = threading.Lock()
        self.all: list[_Metric] = []
        self.requests = Counter(
            self, "ddpm_http_requests_total", "HTTP requests by route and status", ("method", "route", "status")
        )
        self.ws_sessions = Counter(
            self, "ddpm_ws_sessions_total", "WebSocket sampling sessions by outcome", ("outcome",)
        )
        self.errors = Counter(self, "ddpm_errors_total", "Refused or failed sampling requests by kind", ("kind",))
        self.models = Gauge(self, "ddpm_models_loaded", "Models being served")
        self.active_jobs = Gauge(self, "ddpm_active_jobs", "Sampling jobs holding a place in the loop")
        self.jobs = Counter(self, "ddpm_jobs_total", "Sampling jobs that left the loop, by outcome", ("outcome",))
        self.batch_jobs = Histogram(
            self, "ddpm_batch_jobs", "Jobs advanced by one batched UNet forward", buckets=(1, 2, 4, 8, 16, 32, 64)
        )
        self.batch_images = Histogram(
            self,
            "ddpm_batch_images",
            "Images in one batched UNet forward (guided rows count twice)",
            buckets=(1, 4, 16, 64, 256, 1024, 4096),
        )
        self.denoising_steps = Counter(self, "ddpm_denoising_steps_total", "Denoising steps taken, one per job")
        self.steps_per_second = Gauge(
            self, "ddpm_denoising_steps_per_second", "Denoising steps per second over the last 10 s"
        )
        self.frames_dropped = Counter(
            self, "ddpm_ws_frames_dropped_total", "Frames replaced by a newer one before a slow client read them"
        )
        self.step_rate = Rate()

    def record_steps(self, count: int) -> None:
        self.denoising_steps.inc(count)
        self.step_rate.add(count)

    def render(self) -> str:
        self.steps_per_second.set(self.step_rate.per_second())
        return "\n".join(line for metric in self.all for line in metric.render()) + "\n"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
