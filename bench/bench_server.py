"""How fast the sampling server answers, and what the batching loop buys.

Starts `python -m server` on a free loopback port with one checkpoint and measures, over HTTP and
WebSocket like any client:
  1. the latency of one POST /sample (DDIM-50, n=16), without and with a label (guidance doubles the rows);
  2. the time per denoising step over the WebSocket, streaming every frame vs. only the last one;
  3. the throughput (images/s) of 1, 4 and 16 concurrent clients, all batched by the loop, against the
     same requests sent one at a time (what a server that runs one job at a time would do).

    python bench/bench_server.py                      # about a minute on 2 CPU cores
    python bench/bench_server.py --device cuda --clients 1,4,16,64 --throughput-n 16 --throughput-steps 50

The figures are in docs/server.md. Without --checkpoint it uses checkpoints/mnist.safetensors, or,
when that is not there yet, a random model of the same architecture (timing does not depend on weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "mnist.safetensors")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="the server's --threads (PyTorch CPU threads)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each latency figure (median)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels of the throughput test")
    parser.add_argument("--throughput-n", type=int, default=4, help="images per request in the throughput test")
    parser.add_argument("--throughput-steps", type=int, default=20, help="DDIM steps in the throughput test")
    return parser.parse_args()


def prepare_checkpoints(checkpoint: Path, folder: Path) -> str:
    """A checkpoint folder holding just the model to measure; returns a note on what it is."""
    if checkpoint.is_file():
        shutil.copy(checkpoint, folder / "bench.safetensors")
        return str(checkpoint)
    from model.checkpoint import save_checkpoint
    from model.schedule import NoiseSchedule
    from model.unet import build_unet

    save_checkpoint(
        folder / "bench.safetensors", build_unet("tiny", num_classes=10), NoiseSchedule.from_name("linear"), "random"
    )
    return f"{checkpoint} is missing: a random 'tiny' model of the same architecture"


def start_server(
    folder: Path, device: str, max_jobs: int, threads: int | None, settings: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`python -m server` on a free port, with only `settings` (DDPM_* variables) beside its defaults."""
    command = [sys.executable, "-m", "server", "--port", "0", "--checkpoints", str(folder), "--device", device]
    if threads:
        command += ["--threads", str(threads)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")} | (settings or {})
    process = subprocess.Popen(
        [*command, "--max-jobs", str(max_jobs), "--log-level", "warning", "--env-file", os.devnull],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if match := re.match(r"Open (http://\S+) in your browser", line):
            return process, match.group(1)
        print(line, end="", file=sys.stderr)
    raise SystemExit("the server did not start")


async def timed_post(client: httpx.AsyncClient, body: dict) -> float:
    started = time.perf_counter()
    response = await client.post("/sample", json=body)
    response.raise_for_status()
    return time.perf_counter() - started


async def timed_stream(ws_url: str, body: dict) -> tuple[float, int]:
    """(seconds from request to done, frames received)"""
    async with connect(ws_url, max_size=None) as ws:
        started = time.perf_counter()
        await ws.send(json.dumps(body))
        frames = 0
        while (message := json.loads(await ws.recv()))["type"] not in ("done", "error", "cancelled"):
            frames += message["type"] == "frame"
        if message["type"] != "done":
            raise RuntimeError(message)
        return time.perf_counter() - started, frames


async def median_of(repeats: int, measure) -> float:
    await measure()  # warm-up
    return statistics.median([await measure() for _ in range(repeats)])


def batch_stats(metrics: str) -> tuple[float, float]:
    """(forwards, jobs summed over forwards) so far, from /metrics."""
    count = float(re.search(r"^ddpm_batch_jobs_count (\S+)$", metrics, re.MULTILINE).group(1))
    total = float(re.search(r"^ddpm_batch_jobs_sum (\S+)$", metrics, re.MULTILINE).group(1))
    return count, total


def report(line: str) -> None:
    print(line, flush=True)


async def run(args: argparse.Namespace, url: str) -> None:
    ws_url = url.replace("http", "ws", 1) + "/ws/sample"
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        model = (await client.get("/models")).json()[0]
        report(f"model: {model['image_size']}×{model['image_size']}×{model['channels']}, on {model['device']}")

        plain = {"sampler": "ddim", "steps": 50, "n": 16, "seed": 0}
        latency = await median_of(args.repeats, lambda: timed_post(client, plain))
        report(f"POST /sample DDIM-50 n=16: {latency * 1000:.0f} ms")
        if model["num_classes"]:
            guided = {**plain, "label": 3}
            latency = await median_of(args.repeats, lambda: timed_post(client, guided))
            report(f"POST /sample DDIM-50 n=16, label + guidance 2: {latency * 1000:.0f} ms")

        for every, name in ((1, "every frame"), (50, "last frame only")):
            body = {**plain, "every": every}
            results = [await timed_stream(ws_url, body) for _ in range(args.repeats + 1)][1:]
            seconds = statistics.median(r[0] for r in results)
            frames = min(r[1] for r in results)
            report(f"WS DDIM-50 n=16, {name}: {seconds / 50 * 1000:.1f} ms per step ({frames} frames received)")

        request = {"sampler": "ddim", "steps": args.throughput_steps, "n": args.throughput_n, "seed": 0}
        await timed_post(client, request)  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            images = clients * args.throughput_n
            before = batch_stats((await client.get("/metrics")).text)
            started = time.perf_counter()
            await asyncio.gather(*(timed_post(client, request) for _ in range(clients)))
            batched = time.perf_counter() - started
            after = batch_stats((await client.get("/metrics")).text)
            jobs_per_forward = (after[1] - before[1]) / (after[0] - before[0])
            started = time.perf_counter()
            for _ in range(clients):
                await timed_post(client, request)
            one_at_a_time = time.perf_counter() - started
            report(
                f"{clients:>2} clients × DDIM-{args.throughput_steps} n={args.throughput_n}: "
                f"batched {images / batched:.1f} images/s ({jobs_per_forward:.1f} jobs per forward), "
                f"one at a time {images / one_at_a_time:.1f} images/s, ×{one_at_a_time / batched:.2f}"
            )


def main() -> None:
    args = parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        note = prepare_checkpoints(args.checkpoint, Path(folder))
        process, url = start_server(Path(folder), args.device, max(clients), args.threads)
        try:
            print(f"checkpoint: {note}")
            threads = args.threads or "default"
            print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; threads: {threads}")
            asyncio.run(run(args, url))
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
