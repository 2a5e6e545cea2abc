"""The server on Ray Serve against the plain server, side by side in one run, under the same WebSocket
clients as bench_clients.py (streaming as the page does): one plain server with 1 PyTorch thread, one with
2, and `python -m server.ray` with 2 replicas of 1 thread each, all on this machine and started at once;
the rounds take turns (plain 1, plain 2, Ray, plain 1, ...) so that all three see the same machine.

    OMP_NUM_THREADS=1 python bench/bench_ray.py                 # 16 clients, 3 rounds: about 3 minutes
    OMP_NUM_THREADS=1 python bench/bench_ray.py --burst 120     # what autoscaling does with a burst

--burst S starts Ray with --replicas 1-2 (autoscaled) and sends --clients WebSocket clients at it at
once, each starting a run again as soon as its last one ended (after 1 s when refused as busy), for S
seconds; the table gives, per 10 s, the runs finished, images/s, the runs refused and which replicas
served them (from the X-Serve-Replica header of each handshake).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _common import DEFAULT_CHECKPOINT, REPO, command_line, cpu_name, markdown_table
from bench_clients import level
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TRY_AGAIN_LATER = 1013
START_TIMEOUT_S = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the model every server loads")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="turns of each contender (the median is reported)")
    parser.add_argument("--requests", type=int, default=2, help="requests each client sends in a turn")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--n", type=int, default=4, help="images per request")
    parser.add_argument("--every", type=int, default=1, help="stream every k-th step")
    parser.add_argument("--max-jobs", type=int, default=16, help="of each server and each replica")
    parser.add_argument("--burst", type=float, help="seconds of a burst against autoscaled Ray replicas (1-2)")
    return parser.parse_args(argv)


def start(command: list[str], name: str) -> tuple[subprocess.Popen, str]:
    """A server command on this machine, and the address it announces once its models are loaded."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: [lines.append(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if match := re.search(r"^Open (http://\S+) in your browser$", "".join(lines), re.MULTILINE):
            return process, match.group(1)
        time.sleep(0.2)
    stop(process)
    raise SystemExit(f"{name} did not start:\n" + "".join(lines[-30:]))


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def server_flags(args: argparse.Namespace, folder: Path, threads: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--checkpoints", str(folder),
            "--threads", str(threads), "--max-jobs", str(args.max_jobs), "--log-level", "warning",
            "--env-file", os.devnull]  # fmt: skip


def model_folder(checkpoint: Path, folder: Path) -> str:
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint} is not there: pass --checkpoint")
    (folder / checkpoint.name).symlink_to(checkpoint.resolve())
    return str(checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint)


def ws_url(url: str) -> str:
    return re.sub(r"^http", "ws", url) + "/ws/sample"


# --- side by side ---------------------------------------------------------------------------------


def side_by_side(args: argparse.Namespace, folder: Path) -> None:
    contenders = {
        "plain server, 1 thread": [sys.executable, "-m", "server", *server_flags(args, folder, 1)],
        "plain server, 2 threads": [sys.executable, "-m", "server", *server_flags(args, folder, 2)],
        "Ray Serve, 2 replicas × 1 thread": [sys.executable, "-m", "server.ray", "--replicas", "2",
                                             "--no-dashboard", *server_flags(args, folder, 1)],
    }  # fmt: skip
    request = {"sampler": "ddim", "steps": args.steps, "n": args.n, "every": args.every}
    processes, urls = [], {}
    try:
        for name, command in contenders.items():
            process, urls[name] = start(command, name)
            processes.append(process)

        async def measure() -> dict[str, list[dict]]:
            rows = {name: [] for name in contenders}
            for name in contenders:  # warm-up: the first requests of a process pay for lazy initialisation
                await level(ws_url(urls[name]), request, args.clients, 1)
            for turn in range(args.rounds):
                for name in contenders:
                    rows[name].append(await level(ws_url(urls[name]), request, args.clients, args.requests))
                    print(f"  round {turn + 1}: {name}", file=sys.stderr, flush=True)
            return rows

        results = asyncio.run(measure())
    finally:
        for process in processes:
            stop(process)
    header = ["server", "clients", "images/s (median)", "images/s (each round)", "latency p50 s",
              "first frame p50 s", "refused"]  # fmt: skip
    rows = []
    for name, levels in results.items():
        rates = [row["images_per_s"] for row in levels]
        rows.append([name, args.clients, statistics.median(rates), " / ".join(f"{r:.1f}" for r in rates),
                     statistics.median(row["latency_p50_s"] for row in levels),
                     statistics.median(row["first_frame_p50_s"] for row in levels),
                     sum(row["refused"] for row in levels)])  # fmt: skip
    print()
    print(markdown_table(header, rows))


# --- a burst against autoscaled replicas ----------------------------------------------------------


async def burst_client(url: str, request: dict, until: float, log: list[tuple], seed: int) -> None:
    """Runs one request after another until `until`: (start, end, replica, images or 0 if refused)."""
    while time.monotonic() < until:
        started = time.monotonic()
        async with connect(url, open_timeout=60, max_size=None) as ws:
            replica = ws.response.headers.get("x-serve-replica", "?")
            await ws.send(json.dumps({**request, "seed": seed}))
            images = 0
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "done":
                    images = len(message["images"])
                    break
                if message["type"] == "error":
                    with contextlib.suppress(ConnectionClosed):
                        await ws.recv()
                    if ws.close_code != TRY_AGAIN_LATER:
                        raise RuntimeError(message["detail"])
                    break
        log.append((started, time.monotonic(), replica, images))
        seed += 1
        if not images:
            await asyncio.sleep(1)


def burst(args: argparse.Namespace, folder: Path) -> None:
    command = [sys.executable, "-m", "server.ray", "--replicas", "1-2", "--no-dashboard",
               *server_flags(args, folder, 1)]  # fmt: skip
    process, url = start(command, "Ray Serve, 1-2 replicas")
    request = {"sampler": "ddim", "steps": args.steps, "n": args.n, "every": args.every}
    log: list[tuple] = []
    try:
        t0 = time.monotonic()

        async def all_clients():
            until = t0 + args.burst
            await asyncio.gather(
                *(burst_client(ws_url(url), request, until, log, 1000 * c) for c in range(args.clients))
            )

        asyncio.run(asyncio.wait_for(all_clients(), args.burst + 300))
    finally:
        stop(process)
    window = 10
    rows = []
    for start_s in range(0, int(max(end for _, end, _, _ in log) - t0) + 1, window):
        ended = [(replica, images) for _, end, replica, images in log if start_s <= end - t0 < start_s + window]
        done = [(replica, images) for replica, images in ended if images]
        served = Counter(replica for replica, _ in done)
        per_replica = ", ".join(f"{replica}: {count}" for replica, count in sorted(served.items())) or "–"
        images = sum(count for _, count in done)
        rows.append([f"{start_s}-{start_s + window}", len(done), images / window, len(ended) - len(done), per_replica])
    print(f"burst: {args.clients} clients for {args.burst:g} s against --replicas 1-2 (max_jobs {args.max_jobs})")
    print()
    print(markdown_table(["seconds", "runs done", "images/s", "refused", "runs per replica"], rows))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(command_line())
    print(f"machine: CPU {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
          "servers and clients on this machine")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        note = model_folder(args.checkpoint, Path(folder))
        print(f"model: {note}; request: ddim-{args.steps}, n={args.n}, a frame every {args.every} steps")
        if args.burst:
            burst(args, Path(folder))
        else:
            side_by_side(args, Path(folder))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
