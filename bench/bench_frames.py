"""What a streamed run costs on the wire, per served model: the bytes of each WebSocket message of the
default request (the server's default sampler, steps and guidance, n = 16, a label, every frame).

    python bench/bench_frames.py                        # every model in checkpoints/
    python bench/bench_frames.py --models mnist cifar10 --n 16

A frame holds two base64 PNG grids (x_t and the predicted x_0). PNG is lossless, so a frame of noise
costs about its raw pixels: 16 colour 32×32 images are 49 kB of noise, 16 grey 28×28 ones 12.5 kB.
"""

from __future__ import annotations

import argparse
import json
import statistics

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
from _common import REPO, markdown_table
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings


def stream(client: TestClient, request: dict) -> list[tuple[str, int]]:
    """(type, bytes) of every message of one run."""
    sizes = []
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_text(json.dumps(request))
        while True:
            text = ws.receive_text()
            kind = json.loads(text)["type"]
            sizes.append((kind, len(text.encode())))
            if kind in ("done", "error", "cancelled"):
                return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default=str(REPO / "checkpoints"))
    p.add_argument("--models", nargs="+", help="default: every model the server loads")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # TestClient's host; a frame buffer longer than any run, so that no frame is dropped for a slow reader
    settings = Settings(_env_file=None, checkpoint_dir=args.checkpoints, web_dir=None, torch_threads=args.threads,
                        allowed_hosts=["testserver"], ws_frame_buffer=10_000)  # fmt: skip
    rows = []
    with TestClient(create_app(settings)) as client:
        models = args.models or [m["name"] for m in client.get("/models").json()]
        for name in models:
            sizes = stream(client, {"model": name, "n": args.n, "label": 3, "seed": 0, "every": 1})
            frames = [b for kind, b in sizes if kind == "frame"]
            done = sum(b for kind, b in sizes if kind == "done")
            run = sum(b for _, b in sizes)
            kb = [statistics.median(frames), max(frames), sum(frames), done, run]
            rows.append([name, len(frames), *(f"{b / 1000:.1f}" for b in kb)])
    header = ["model", "frames", "frame kB (median)", "largest", "all frames kB", "done kB", "run kB"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
