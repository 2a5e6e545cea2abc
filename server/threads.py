"""PyTorch's CPU threads for the sampling loop: as many as it was given, less the cores that other
processes keep busy. The loop's forwards run on one OpenMP team (server.loop), whose threads spin at
each kernel's barrier rather than sleep. On free cores that is the fastest there is (a student's 16
images in 90 ms, against 147 ms when they sleep: docs/performance.md), but when another process takes
one of those cores, the spinning thread waits out its partner's lost time slice at every one of a
forward's hundreds of kernels (the same request: 832 ms, against 120 ms sleeping). So before each
iteration the loop asks `CpuThreads.adapt`, which every SAMPLE_S compares the machine's busy time with
this process's own (Linux's /proc/stat) and runs on the cores left free: one thread, with no barrier at
all, when the rest of the machine keeps all but one busy; where /proc/stat cannot be read, the given
count. (A forward's result can differ in its last bits between thread counts, as between batch sizes:
about 1e-6.)"""

from __future__ import annotations

import logging
import os
import time

import torch

log = logging.getLogger(__name__)

SAMPLE_S = 0.25  # how often the machine's load is read: a file read, at most 4 times a second
_clock = time.monotonic


def threads_for(most: int, cores: int, busy_elsewhere: float) -> int:
    """The threads to run with at most `most`, on a machine of `cores` cores of which other processes
    keep `busy_elsewhere` busy (in cores, averaged over the last moment): at least one."""
    return max(1, min(most, round(cores - busy_elsewhere)))


class CpuThreads:
    """Sets torch's thread count for the calling thread's kernels; create and call it on the loop's thread."""

    def __init__(self, most: int, cores: int | None = None):
        self.most = most
        self.cores = cores or _cores()
        self.current = most
        self._last = _sample()

    def adapt(self) -> int:
        """The thread count for the next forwards, set in torch if it changed."""
        if self._last is None or _clock() - self._last[0] < SAMPLE_S:
            return self.current
        now = _sample()
        if now is None:
            return self.current
        wall, busy, own = (a - b for a, b in zip(now, self._last, strict=True))
        self._last = now
        elsewhere = max(0.0, busy - own) / wall  # cores other processes kept busy
        threads = threads_for(self.most, self.cores, elsewhere)
        if threads != self.current:
            log.debug("PyTorch CPU threads %d → %d (other processes keep %.1f cores busy)", self.current, threads,
                      elsewhere)  # fmt: skip
            torch.set_num_threads(threads)
            self.current = threads
        return threads


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _sample() -> tuple[float, float, float] | None:
    """(now, CPU seconds the machine has been busy, CPU seconds this process has used), or None if unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal …: all but idle and iowait are busy
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    own = sum(os.times()[:2])
    return _clock(), busy, own
