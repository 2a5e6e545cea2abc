"""The user's wait for the demo's default request, against diffusers' DDIM-50 loop, in one run.

    python bench/bench_default.py                      # 2 threads; about a minute on an idle 2-core machine
    python bench/bench_default.py --threads 1 --repeats 9
    python bench/bench_default.py --checkpoint checkpoints/mnist-fast.safetensors   # a distilled student's own

Starts `python -m server` (with --threads) on a free port and times, on the client's clock, the
request a visitor's first click sends: POST /sample with only {"model", "n": 16, "label", "seed"},
so the server's default sampler, steps and guidance. Beside it, interleaved repeat by repeat so that
every contender sees the same machine:
  - diffusers' DDIMScheduler, 50 steps, driving a 1.1M-parameter class-conditional UNet2DModel (block
    widths 32/64/64, attention at the lowest resolution) over a batch of 16, in this process with the
    same threads: the reference of issue 13, a plain diffusers loop at DDIM's usual 50 steps;
  - the same default request as a plain Python loop over the same sampler and UNet in this process
    (model.samplers.sampling_run + guided_eps): what the server adds is the difference.
Each row is the median of --repeats runs after a warm-up run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from _common import DEFAULT_CHECKPOINT, cpu_name, markdown_table
from bench_server import prepare_checkpoints, start_server

from model.checkpoint import load_checkpoint
from model.samplers import guided_eps, initial_noise, make_generator, sample, sampling_run

REST_S = 1.0  # between timed runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads, the server's and this process's")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each row (the median is reported)")
    parser.add_argument("--n", type=int, default=16, help="images per request (and the diffusers batch)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers reference")
    return parser.parse_args(argv)


def diffusers_reference(n: int):
    """A function running diffusers' DDIM-50 loop on a random 1.1M UNet2DModel over a batch of n, or None."""
    try:
        from diffusers import DDIMScheduler, UNet2DModel
    except ImportError:
        print("note: diffusers is not installed (pip install -e '.[test]'): no reference row", file=sys.stderr)
        return None
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), num_class_embeds=11,
    ).eval()  # fmt: skip
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    labels = torch.arange(n) % 10
    x_T = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    params = sum(p.numel() for p in unet.parameters()) / 1e6

    @torch.inference_mode()
    def run():
        scheduler.set_timesteps(50)
        x = x_T
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample
        return x

    return run, f"diffusers DDIMScheduler, 50 steps, UNet2DModel {params:.2f}M params (32/64/64), batch {n}"


def plain_default(checkpoint: Path, sampler: str, steps: int, n: int, guidance: float):
    """The default request as a plain loop in this process: the same sampler, steps, guidance and UNet."""
    ckpt = load_checkpoint(checkpoint)
    labels = torch.full((n,), 3)

    @torch.inference_mode()
    def run():
        generator = make_generator(1)
        x = initial_noise((n, *_shape(ckpt)), generator)
        return sample(
            sampling_run(sampler, ckpt.schedule, x, steps, generator, **ckpt.sampler_defaults().get(sampler, {})),
            lambda x_t, t: guided_eps(ckpt.unet, x_t, t, labels, guidance),
        )

    return run


def _shape(ckpt) -> tuple[int, int, int]:
    return (ckpt.config.in_channels, ckpt.config.image_size, ckpt.config.image_size)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        note = prepare_checkpoints(args.checkpoint, Path(folder))
        process, url = start_server(Path(folder), "cpu", 8, args.threads)
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                model = client.get("/models").json()[0]["name"]
                labels = iter(range(10**9))

                def default_request():
                    # what the page's first click sends: no sampler, steps or guidance
                    body = {"model": model, "n": args.n, "label": next(labels) % 10, "seed": 7}
                    response = client.post("/sample", json=body)
                    response.raise_for_status()
                    return response.json()

                answer = default_request()  # warm-up, and what the defaults are
                sampler, steps, guidance = answer["sampler"], answer["steps"], answer["guidance"]
                what = f"{sampler}, {steps} steps, w={guidance:g}, n={args.n}"
                plain = plain_default(Path(folder) / "bench.safetensors", sampler, steps, args.n, guidance)
                contenders = {
                    f"POST /sample with the server's defaults ({what}; client clock)": default_request,
                    f"the same as a plain loop in this process ({what})": plain,
                }
                reference = None if args.no_diffusers else diffusers_reference(args.n)
                if reference is not None:
                    contenders[reference[1]] = reference[0]
                    reference = reference[1]
                for run in contenders.values():
                    run()  # warm-up
                seconds = {name: [] for name in contenders}
                for _ in range(args.repeats):
                    for name, run in contenders.items():
                        # a visitor's request comes to a machine at rest: the loops in this process leave
                        # its cores busy for a moment after them (OpenMP's spinning threads), and the
                        # server gives its forwards the cores it finds free (server.threads)
                        time.sleep(REST_S)
                        started = time.perf_counter()
                        run()
                        seconds[name].append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(timeout=30)

    medians = {name: statistics.median(values) for name, values in seconds.items()}
    base = medians.get(reference) if reference else None
    print(f"command: python bench/bench_default.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    load = f"load average {os.getloadavg()[0]:.1f}"
    print(f"machine: CPU {cpu_name()}, {torch.get_num_threads()} threads here and in the server; {load}")
    print(f"model: {note}; what the request that names no sampler got: {what}")
    rows = [
        [name, f"{medians[name] * 1000:.0f}", f"{min(seconds[name]) * 1000:.0f}", f"{max(seconds[name]) * 1000:.0f}",
         f"{base / medians[name]:.2f}×" if base else ""]
        for name in contenders
    ]  # fmt: skip
    print()
    print(markdown_table(["run", "median ms", "min ms", "max ms", "diffusers DDIM-50 ÷ this"], rows))


if __name__ == "__main__":
    main()
