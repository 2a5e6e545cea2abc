"""Server throughput under 1, 4, 16 and 64 concurrent WebSocket clients, each streaming its run as the
page does (WS /ws/sample, a frame every --every steps), all batched by the server's sampling loop,
the ones it has no place for waiting in its queue.

    OMP_NUM_THREADS=1 python bench/bench_clients.py           # starts a server on the CPU: 3-5 minutes here
    python bench/bench_clients.py --device cuda --n 16 --steps 50
    python bench/bench_clients.py --url http://gpu-host:8000  # a running server, e.g. `docker compose up`

Each client sends --rounds requests one after the other; a row is one concurrency level: images/s
over the wall time of all its requests (and as a multiple of the first level's, one client: one run
at a time), the wait in the server's queue (request sent → start), the time to the first frame and
the latency of a request (request sent → done), and how many the server refused as busy (its queue
full). The server this script starts has its default batch (max_jobs) and queue, and no per-client
limit to speak of, since every client here has the same address. Clients and server share this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from _common import DEFAULT_CHECKPOINT, REPO, command_line, cpu_name, markdown_table
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TRY_AGAIN_LATER = 1013


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server; default: start one on a free loopback port")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the model a started server loads")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="of a started server")
    parser.add_argument("--max-jobs", type=int, help="of a started server: its batch (default: the server's)")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrency levels, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="requests each client sends, one after the other")
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=4, help="images per request")
    parser.add_argument(
        "--every", default="1", help="stream every k-th step (the page: every step of DDIM-50); several: 1,20"
    )
    parser.add_argument("--label", type=int, help="a class, with the server's default guidance (doubles the rows)")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.every = [int(k) for k in args.every.split(",")]
    return args


# --- a server to measure ------------------------------------------------------------------------


def start_server(
    checkpoint: Path, device: str, folder: Path, max_jobs: int | None = None
) -> tuple[subprocess.Popen, str, str]:
    """`python -m server` on a free port with the one model and no per-client limit to speak of (every
    client here has the same address); returns it, its address and a note."""
    if checkpoint.is_file():
        (folder / checkpoint.name).symlink_to(checkpoint.resolve())
        note = str(checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint)
    else:
        from model.checkpoint import save_checkpoint
        from model.schedule import NoiseSchedule
        from model.unet import build_unet

        unet = build_unet("tiny", in_channels=1, image_size=28, num_classes=10)
        save_checkpoint(folder / "random.safetensors", unet, NoiseSchedule.from_name("linear"), "random")
        note = f"random 'tiny' model of the MNIST architecture ({checkpoint.name} was not there yet)"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
    command = [sys.executable, "-m", "server", "--port", "0", "--checkpoints", str(folder), "--device", device,
               "--max-jobs-per-client", "100000", "--log-level", "warning", "--env-file", os.devnull]  # fmt: skip
    if max_jobs:
        command += ["--max-jobs", str(max_jobs)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if match := re.match(r"Open (http://\S+) in your browser", line):
            return process, match.group(1), note
        print(line, end="", file=sys.stderr)
    raise SystemExit("the server did not start")


# --- the clients --------------------------------------------------------------------------------


@dataclass
class Result:
    seconds: float = 0.0
    queue_wait: float | None = None
    first_frame: float | None = None
    frames: int = 0
    images: int = 0
    refused: bool = False


async def one_request(ws_url: str, request: dict) -> Result:
    result = Result()
    async with connect(ws_url, max_size=None, open_timeout=60) as ws:
        started = time.perf_counter()
        await ws.send(json.dumps(request))
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "start":
                result.queue_wait = time.perf_counter() - started
            elif message["type"] == "frame":
                result.frames += 1
                if result.first_frame is None:
                    result.first_frame = time.perf_counter() - started
            elif message["type"] == "done":
                result.images = len(message["images"])
                break
            elif message["type"] == "error":
                with contextlib.suppress(ConnectionClosed):
                    await ws.recv()  # the close that follows tells "busy" (1013) from the rest
                if ws.close_code != TRY_AGAIN_LATER:
                    raise RuntimeError(f"the server answered an error: {message['detail']}")
                result.refused = True
                break
        result.seconds = time.perf_counter() - started
    return result


async def client(ws_url: str, request: dict, rounds: int, seed: int) -> list[Result]:
    return [await one_request(ws_url, {**request, "seed": seed + i}) for i in range(rounds)]


async def level(ws_url: str, request: dict, clients: int, rounds: int) -> dict:
    """`clients` clients, each sending `rounds` requests one after another: the figures by name."""
    started = time.perf_counter()
    per_client = await asyncio.gather(*(client(ws_url, request, rounds, 1000 * c) for c in range(clients)))
    wall = time.perf_counter() - started
    results = [r for rs in per_client for r in rs]
    done = [r for r in results if not r.refused]
    waits = sorted(r.queue_wait for r in done if r.queue_wait is not None)
    firsts = sorted(r.first_frame for r in done if r.first_frame is not None)
    latencies = sorted(r.seconds for r in done)
    return {
        "clients": clients,
        "requests": len(results),
        "images_per_s": sum(r.images for r in done) / wall,
        "queue_wait_p50_s": _quantile(waits, 0.5),
        "queue_wait_p95_s": _quantile(waits, 0.95),
        "first_frame_p50_s": _quantile(firsts, 0.5),
        "first_frame_p95_s": _quantile(firsts, 0.95),
        "latency_p50_s": _quantile(latencies, 0.5),
        "latency_p95_s": _quantile(latencies, 0.95),
        "frames_per_s": sum(r.frames for r in done) / wall,
        "refused": len(results) - len(done),
    }


def _quantile(values: list[float], q: float) -> float | str:
    if len(values) < 2:
        return values[0] if values else "–"
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def run(args: argparse.Namespace, url: str) -> list[list]:
    ws_url = re.sub(r"^http", "ws", url.rstrip("/")) + "/ws/sample"
    request = {"sampler": args.sampler, "steps": args.steps, "n": args.n}
    if args.label is not None:
        request["label"] = args.label
    await one_request(ws_url, {**request, "seed": 0, "every": args.every[0]})  # warm-up
    rows, first = [], {}
    for clients in args.clients:
        for every in args.every:  # side by side at each level, so that both see the same machine
            row = await level(ws_url, {**request, "every": every}, clients, args.rounds)
            first.setdefault(every, row["images_per_s"])
            rows.append([every, *list(row.values())[:3], row["images_per_s"] / first[every], *list(row.values())[3:]])
            print(f"  done: {clients} clients, a frame every {every} steps", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        process = None
        if args.url:
            url, note = args.url, "the running server's default model"
        else:
            process, url, note = start_server(args.checkpoint, args.device, Path(folder), args.max_jobs)
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/models", timeout=10) as response:
                models = json.load(response)
            device = models[0]["device"] if models else "?"
            print(command_line())
            print(f"machine: server on {device}; CPU {cpu_name()}, {os.cpu_count()} cores, "
                  f"load average {os.getloadavg()[0]:.1f} at start; clients on this machine")  # fmt: skip
            print(f"model: {note}")
            what = f"label {args.label}, default guidance" if args.label is not None else "unconditional"
            print(f"request: {args.sampler}-{args.steps}, n={args.n}, {what}; {args.rounds} requests a client")
            rows = asyncio.run(run(args, url))
        finally:
            if process:
                process.terminate()
                process.wait(timeout=30)
    header = ["frame every", "clients", "requests", "images/s", "× first row", "queue wait p50 s",
              "queue wait p95 s", "first frame p50 s", "first frame p95 s", "latency p50 s", "latency p95 s",
              "frames/s", "refused"]  # fmt: skip
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
