"""What a streamed run costs on the wire, per served model: the bytes of each WebSocket message of the
default request (the server's default sampler, steps and guidance, n = 16, a label, every frame).

    python bench/bench_frames.py                        # every model in checkpoints/
    python bench/bench_frames.py --models mnist cifar10 --n 16

A frame holds two base64 PNG grids (x_t and the predicted x_0). PNG is lossless, so a frame of noise
costs about its raw pixels: 16 colour 32×32 images are 49 kB of noise, 16 grey 28×28 ones 12.5 kB.
"On the wire" is the run as permessage-deflate sends it (RFC 7692, which browsers and the server
negotiate by default: one raw-deflate stream over the run's messages, each ended by a sync flush whose
last 4 bytes are not sent); deflate wins back most of base64's third, and nothing of the noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import zlib

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
from _common import REPO, markdown_table
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings


def stream(client: TestClient, request: dict) -> list[tuple[str, int, int]]:
    """(type, bytes, bytes deflated as permessage-deflate sends them) of every message of one run."""
    sizes = []
    deflate = zlib.compressobj(wbits=-15)  # the connection's one compression context
    with client.websocket_connect("/ws/sample") as ws:
        ws.send_text(json.dumps(request))
        while True:
            data = ws.receive_text().encode()
            kind = json.loads(data)["type"]
            deflated = len(deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH)) - 4
            sizes.append((kind, len(data), deflated))
            if kind in ("done", "error", "cancelled"):
                return sizes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default=str(REPO / "checkpoints"))
    p.add_argument("--models", nargs="+", help="default: every model the server loads")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # TestClient's host; a frame buffer longer than any run, so that no frame is dropped for a slow reader
    settings = Settings(_env_file=None, checkpoint_dir=args.checkpoints, web_dir=None, torch_threads=args.threads,
                        allowed_hosts=["testserver"], ws_frame_buffer=10_000)  # fmt: skip
    rows = []
    with TestClient(create_app(settings)) as client:
        models = args.models or [m["name"] for m in client.get("/models").json()]
        for name in models:
            sizes = stream(client, {"model": name, "n": args.n, "label": 3, "seed": 0, "every": 1})
            frames = [b for kind, b, _ in sizes if kind == "frame"]
            done = sum(b for kind, b, _ in sizes if kind == "done")
            run, wire = sum(b for _, b, _ in sizes), sum(d for *_, d in sizes)
            kb = [statistics.median(frames), max(frames), sum(frames), done, run, wire]
            rows.append([name, len(frames), *(f"{b / 1000:.1f}" for b in kb)])
    header = ["model", "frames", "frame kB (median)", "largest", "all frames kB", "done kB", "run kB", "on the wire kB"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
