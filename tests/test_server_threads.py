"""server.threads: the sampling loop's PyTorch threads follow the cores other processes leave free."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from server import threads
from server.threads import CpuThreads, threads_for


@pytest.mark.parametrize(
    ("most", "cores", "busy_elsewhere", "expected"),
    [
        (2, 2, 0.0, 2),  # an idle machine: all it was given
        (2, 2, 0.3, 2),  # a little noise does not cost a thread
        (2, 2, 0.7, 1),  # one core taken: one thread, no barrier to wait at
        (2, 2, 5.0, 1),  # never fewer than one
        (8, 8, 2.2, 6),
        (4, 16, 3.0, 4),  # cores to spare: never more than it was given
    ],
)
def test_threads_for_the_free_cores(most, cores, busy_elsewhere, expected):
    assert threads_for(most, cores, busy_elsewhere) == expected


def test_adapt_follows_the_load_and_sets_torch(monkeypatch):
    """Busy time of the machine beyond this process's own, per second of wall time, is what other
    processes take; the thread count is set in torch only when it changes, and read at most every SAMPLE_S."""
    samples = iter(
        [
            (0.0, 0.0, 0.0),  # at construction
            (1.0, 1.2, 0.2),  # 1.2 s busy of which 0.2 s ours: one core elsewhere
            (2.0, 2.4, 1.4),  # all of the busy time ours: the machine is free again
        ]
    )
    monkeypatch.setattr(threads, "_sample", lambda: next(samples))
    clock = iter([0.0, 1.0, 1.1, 2.0])  # adapt reads the clock, then samples when SAMPLE_S has passed
    monkeypatch.setattr(threads, "_clock", lambda: next(clock))
    set_to = []
    monkeypatch.setattr(threads.torch, "set_num_threads", set_to.append)
    cpu = CpuThreads(2, cores=2)
    assert cpu.adapt() == 2 and set_to == []  # 0.0 s after construction: too soon to read again
    assert cpu.adapt() == 1 and set_to == [1]
    assert cpu.adapt() == 1 and set_to == [1]  # 0.1 s later: not read
    assert cpu.adapt() == 2 and set_to == [1, 2]


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads Linux's /proc/stat")
def test_a_process_burning_a_core_leaves_one_thread(monkeypatch):
    """Read from the real machine: while another process spins on a core, a loop given 2 threads on
    2 cores runs on 1 (other load can only lower the count further: this cannot pass by luck)."""
    monkeypatch.setattr(threads.torch, "set_num_threads", lambda n: None)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the burner is up and spinning
        cpu = CpuThreads(2, cores=2)
        time.sleep(1.0)
        assert cpu.adapt() == 1
    finally:
        burner.kill()
