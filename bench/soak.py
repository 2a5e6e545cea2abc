"""A soak test of the server: for --duration seconds (default 10 minutes), --clients concurrent
clients each pick, again and again, one of: a REST sample, a REST request abandoned mid-job, a
malformed REST request, a WebSocket run, a WebSocket run cancelled after its first frame, a
WebSocket closed abruptly mid-job, a malformed WebSocket request. It reports the answers that break
the contract (any 500, any WebSocket closed without a close frame (1006), any other unexpected
answer), the jobs left in the loop once the clients stop, and the server's memory (RSS) over time.

    OMP_NUM_THREADS=1 python bench/soak.py                 # starts a server on the CPU: 10 minutes
    python bench/soak.py --duration 60 --clients 4
    python bench/soak.py --url http://127.0.0.1:8000 --pid 1234   # a running server (--pid: its memory)

Loopback only: the clients send nothing anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from _common import DEFAULT_CHECKPOINT, command_line, cpu_name, markdown_table
from bench_clients import start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

MALFORMED_BODIES = [
    b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model": ' + b"[" * 960 + b"]" * 960 + b"}",
    b'{"model": "\\ud800"}',
    b'{"\\udfff": 1}',
    b'{"n": ' + b"9" * 5000 + b"}",
    b'{"model": "\xff\xfe"}',
    b'{"eta": NaN}',
    b'{"model": ""}',
    b'{"n": "4"}',
    b'{"steps": 100000}',
    b'{"model": "' + b"x" * 20_000 + b'"}',
    b"[1, 2]",
    b'{"n": 4',
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--url", help="a running server on this machine; default: start one on a free loopback port")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the model a started server loads")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="of a started server")
    parser.add_argument("--seed", type=int, default=0, help="of the clients' choices")
    return parser.parse_args(argv)


class Tally:
    def __init__(self):
        self.runs = Counter()  # (action, answer) → count
        self.broken: list[str] = []  # answers that break the contract, with what was asked

    def note(self, action: str, answer: str, expected: set[str]) -> None:
        self.runs[action, answer] += 1
        if answer not in expected:
            self.broken.append(f"{action}: {answer}")


async def rest(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    action = rng.choice(["rest sample", "rest abandoned", "rest malformed"])
    try:
        if action == "rest sample":
            body = {"sampler": "ddim", "steps": 10, "n": 2, "seed": rng.randrange(1000)}
            answer = str((await client.post("/sample", json=body, timeout=120)).status_code)
            tally.note(action, answer, {"200", "503"})
        elif action == "rest abandoned":
            body = {"sampler": "ddpm", "steps": 1000, "n": 1}
            try:
                answer = str((await client.post("/sample", json=body, timeout=rng.uniform(0.1, 0.5))).status_code)
            except httpx.TimeoutException:
                answer = "abandoned"
            tally.note(action, answer, {"abandoned", "503"})
        else:
            body = rng.choice(MALFORMED_BODIES)
            response = await client.post("/sample", content=body, headers={"Content-Type": "application/json"})
            response.json()  # the answer is JSON, whatever the request was
            tally.note(action, str(response.status_code), {"422"})
    except (httpx.HTTPError, ValueError) as e:
        tally.note(action, type(e).__name__, set())


async def websocket(ws_url: str, tally: Tally, rng: random.Random) -> None:
    action = rng.choice(["ws run", "ws cancelled", "ws aborted", "ws malformed"])
    messages: list[str] = []
    try:
        async with connect(ws_url, max_size=None, open_timeout=60, close_timeout=10) as ws:
            if action == "ws malformed":
                await ws.send(rng.choice(MALFORMED_BODIES).decode("utf-8", "replace"))
            elif action == "ws run":
                await ws.send(json.dumps({"sampler": "ddim", "steps": 10, "n": 2, "every": 2}))
            else:
                await ws.send(json.dumps({"sampler": "ddpm", "steps": 1000, "n": 1, "every": 1}))
            async for raw in ws:
                messages.append(json.loads(raw)["type"])
                if action == "ws cancelled" and messages[-1] == "frame" and messages.count("frame") == 1:
                    await ws.send(json.dumps({"type": "cancel"}))
                if action == "ws aborted" and messages[-1] == "frame":
                    ws.transport.abort()  # gone without a close frame, mid-job
                    tally.note(action, "aborted", {"aborted"})
                    return
        code = ws.close_code
    except ConnectionClosed as e:
        code = e.rcvd.code if e.rcvd else 1006
    except (OSError, TimeoutError) as e:
        tally.note(action, type(e).__name__, set())
        return
    ends = [m for m in messages if m not in ("queued", "start", "frame")]
    answer = f"{ends[-1] if ends else 'nothing'} + {code}"
    expected = {
        "ws run": {"done + 1000", "error + 1013"},
        "ws cancelled": {"cancelled + 1000", "done + 1000", "error + 1013"},
        "ws aborted": {"error + 1013"},
        "ws malformed": {"error + 1008"},
    }[action]
    tally.note(action, answer, expected)


async def client_loop(url: str, tally: Tally, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    ws_url = url.replace("http", "ws", 1) + "/ws/sample"
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            if rng.random() < 0.5:
                await rest(client, tally, rng)
            else:
                await websocket(ws_url, tally, rng)


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


async def watch_memory(pid: int | None, samples: list[tuple[float, float]], started: float, deadline: float) -> None:
    while time.monotonic() < deadline:
        rss = rss_mib(pid)
        if rss is not None:
            samples.append((time.monotonic() - started, rss))
        await asyncio.sleep(min(10.0, max(0.5, (deadline - started) / 60)))


def metric(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def soak(url: str, pid: int | None, args: argparse.Namespace) -> tuple[Tally, list, str]:
    tally, memory = Tally(), []
    started = time.monotonic()
    deadline = started + args.duration
    watcher = asyncio.create_task(watch_memory(pid, memory, started, deadline))
    await asyncio.gather(*(client_loop(url, tally, deadline, args.seed * 1000 + c) for c in range(args.clients)))
    await watcher
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(200):  # the jobs of abandoned requests leave within a step or two
            metrics = (await client.get("/metrics")).text
            if metric(metrics, "ddpm_active_jobs") == 0:
                break
            await asyncio.sleep(0.05)
    rss = rss_mib(pid)
    if rss is not None:
        memory.append((time.monotonic() - started, rss))
    return tally, memory, metrics


def report(args, tally: Tally, memory: list, metrics: str, note: str) -> None:
    print(command_line())
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"server: {note}; {args.clients} clients for {args.duration:g} s")
    rows = [[action, answer, count] for (action, answer), count in sorted(tally.runs.items())]
    print(markdown_table(["action", "answer", "count"], rows))
    statuses = Counter()
    for status, count in re.findall(r'^ddpm_http_requests_total\{.*status="(\d+)"\} (\S+)$', metrics, re.MULTILINE):
        statuses[status] += float(count)
    closes_1006 = sum(1 for line in tally.broken if line.endswith("+ 1006"))
    print(f"requests: {sum(tally.runs.values())}; answers breaking the contract: {len(tally.broken)}")
    for line, count in Counter(tally.broken).most_common(10):
        print(f"  {count} × {line}")
    print(f"500 answers (the server's count): {statuses['500']:g} (503 busy: {statuses['503']:g}); "
          f"WebSocket closes without a close frame (1006): {closes_1006}")  # fmt: skip
    sessions = dict(re.findall(r'^ddpm_ws_sessions_total\{outcome="(\w+)"\} (\S+)$', metrics, re.MULTILINE))
    outcomes = ", ".join(f"{outcome} {float(count):g}" for outcome, count in sessions.items())
    print(f"WebSocket sessions by outcome (the server's count): {outcomes}")
    print(f"jobs left in the loop: {metric(metrics, 'ddpm_active_jobs'):g}")
    if memory:
        first_minute = [rss for t, rss in memory if t >= min(60.0, args.duration / 4)] or [memory[-1][1]]
        print(f"server memory (RSS): {memory[0][1]:.0f} MiB at the start, {first_minute[0]:.0f} MiB after warm-up, "
              f"{memory[-1][1]:.0f} MiB at the end, {max(rss for _, rss in memory):.0f} MiB at most")  # fmt: skip
        step = max(1, len(memory) // 10)
        print("RSS over time:", ", ".join(f"{t:.0f} s {rss:.0f}" for t, rss in memory[::step] + memory[-1:]), "MiB")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    process = None
    with tempfile.TemporaryDirectory() as folder:
        if args.url:
            url, pid, note = args.url.rstrip("/"), args.pid, "a running server"
        else:
            process, url, note = start_server(args.checkpoint, args.device, Path(folder))
            pid = process.pid
        try:
            tally, memory, metrics = asyncio.run(soak(url, pid, args))
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
    report(args, tally, memory, metrics, note)
    return 1 if tally.broken else 0


if __name__ == "__main__":
    sys.exit(main())
