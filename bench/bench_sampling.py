"""Sampling latency and images/s per sampler and step count, and the same model driven by diffusers'
DDIMScheduler loop for comparison (same weights, same device, same x_T, one run).

    python bench/bench_sampling.py --threads 1                       # CPU: about 4 minutes on a busy core
    python bench/bench_sampling.py --threads 2 --runs dpm-solver++:10,ddim:50 --guidance 3 --compile --bf16
    python bench/bench_sampling.py --device cuda --batch 16,256 --compile --bf16 --cuda-graphs

Each row is one full sampling run of `batch` images from x_T to x_0 by a sampler of the table (the
median of --repeats runs, after a warm-up run). Unconditional by default (the null label: one UNet
forward of `batch` rows a step); --guidance W samples labels 0…9 with classifier-free guidance, which
doubles the rows. --compile (torch.compile) and --bf16 (bf16 autocast), on the CPU or a GPU, and
--cuda-graphs on a GPU each add a row of their own, and one with all of them; "first forward s" is the
start-up cost of each (compilation happens there), and the last column the largest pixel difference
from the eager fp32 run. --nchw adds a row with the weights in PyTorch's default layout
(load_checkpoint keeps them channels-last). All rows of one (batch, sampler, steps) are timed
interleaved, run by run, so that every one of them sees the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import sys
from pathlib import Path

import torch
from _common import (
    DEFAULT_CHECKPOINT,
    add_common_args,
    command_line,
    gpu_options,
    load_model,
    machine_line,
    markdown_table,
    median,
    timed,
    variants,
)

from model.device import resolve_device
from model.samplers import initial_noise, make_generator, sample, sampling_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--runs", default="ddim:10,ddim:50,ddim:100,ddpm:1000", help="sampler:steps, comma-separated")
    parser.add_argument("--batch", default="16", help="images per run, comma-separated")
    parser.add_argument("--guidance", type=float, help="sample labels 0…9 with this classifier-free guidance w")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers DDIMScheduler comparison")
    parser.add_argument("--nchw", action="store_true", help="also time the weights in the default (NCHW) layout")
    add_common_args(parser)
    speed = parser.add_argument_group("speed-ups, each a row of its own")
    speed.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet (needs a C++ compiler on the CPU)"
    )
    speed.add_argument("--bf16", action="store_true", help="bf16 autocast for the UNet (the sampler math stays fp32)")
    speed.add_argument("--cuda-graphs", action="store_true", help="replay the UNet forward as a CUDA graph (GPU only)")
    args = parser.parse_args(argv)
    args.runs = [(name, int(steps)) for name, steps in (run.split(":") for run in args.runs.split(","))]
    args.batch = [int(b) for b in args.batch.split(",")]
    return args


# --- the noise predictor, plain and sped up -------------------------------------------------------


class EpsFn:
    """ε_θ(x_t, t) for a batch, with classifier-free guidance over a statically doubled batch (no
    data-dependent indexing, so that the forward can be captured as a CUDA graph)."""

    def __init__(self, unet, labels: torch.Tensor | None, guidance: float | None, options: tuple[str, ...] = ()):
        self.labels, self.guidance = labels, guidance
        self.bf16 = "bf16" in options
        forward = unet
        self.mark_step = "compile" in options and "cuda_graphs" in options
        self.graphed = "cuda_graphs" in options
        if "compile" in options:  # with CUDA graphs too: Inductor's own graphs ("reduce-overhead")
            forward = torch.compile(unet, mode="reduce-overhead" if "cuda_graphs" in options else "default")
        elif "cuda_graphs" in options:
            forward = GraphedForward(unet)
        self.forward = forward
        self.null = unet.null_label if unet.config.num_classes else None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = self.labels
        if labels is not None and self.guidance is not None:
            x, t, labels = torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, self.null)])
        if self.mark_step:  # Inductor's graphs reuse their output buffers: copy ε out before the next step
            torch.compiler.cudagraph_mark_step_begin()
        # no autocast weight cache under a graph: it would replay casts that were freed after capture
        autocast = torch.autocast(x.device.type, torch.bfloat16, cache_enabled=not self.graphed) if self.bf16 else None
        with autocast or contextlib.nullcontext():
            eps = self.forward(x, t, labels).float()
        if self.mark_step:
            eps = eps.clone()
        if labels is not None and self.guidance is not None:
            cond, uncond = eps.chunk(2)
            eps = uncond + self.guidance * (cond - uncond)
        return eps


class GraphedForward:
    """unet(x, t, labels) captured once per input shape as a CUDA graph and replayed."""

    def __init__(self, unet):
        self.unet = unet
        self.graphs = {}

    def __call__(self, x, t, labels):
        key = (tuple(x.shape), labels is None)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, t, labels)
        graph, inputs, out = self.graphs[key]
        for static, value in zip(inputs, (x, t, labels), strict=True):
            if static is not None:
                static.copy_(value)
        graph.replay()
        return out.clone()

    def _capture(self, x, t, labels):
        inputs = (x.clone(), t.clone(), None if labels is None else labels.clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(3):
                self.unet(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.unet(*inputs)
        return graph, inputs, out


# --- one sampling run, ours and diffusers' ------------------------------------------------------------


def run_ours(schedule, x_T: torch.Tensor, sampler: str, steps: int, eps_fn, seed: int) -> torch.Tensor:
    """A run of a sampler of the table, at its defaults but for DDIM, which here does not clip x0, as
    diffusers' DDIMScheduler(clip_sample=False) that it is compared with."""
    params = {"thresholding": "none"} if sampler == "ddim" else {}
    return sample(sampling_run(sampler, schedule, x_T, steps, make_generator(seed, x_T.device), **params), eps_fn)


def run_diffusers(scheduler, x_T: torch.Tensor, steps: int, eps_fn) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x = x_T
    for t in scheduler.timesteps:
        eps = eps_fn(x, torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long))
        x = scheduler.step(eps, t, x).prev_sample
    return x


def diffusers_scheduler(num_timesteps: int):
    try:
        from diffusers import DDIMScheduler
    except ImportError:
        print("note: diffusers is not installed (pip install -e '.[test]'): no comparison rows", file=sys.stderr)
        return None
    return DDIMScheduler(
        num_train_timesteps=num_timesteps, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True
    )


# --- the table ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    options = [name for name in ("compile", "bf16") if getattr(args, name)]
    options += gpu_options(args, device, ("cuda_graphs",))
    checkpoint, note = load_model(args.checkpoint, device)
    unet, schedule = checkpoint.unet, checkpoint.schedule
    conditional = unet.config.num_classes > 0
    scheduler = None if args.no_diffusers else diffusers_scheduler(schedule.num_timesteps)

    print(command_line())
    print(machine_line(device))
    print(f"model: {note}; {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    guided = args.guidance is not None and conditional
    print(
        f"requests: labels 0…9 with guidance w={args.guidance:g} (two UNet rows an image)" if guided
        else "requests: unconditional (one UNet row an image)"
    )  # fmt: skip

    unet_nchw = copy.deepcopy(unet).to(memory_format=torch.contiguous_format) if args.nchw else None
    rows = []
    with torch.inference_mode():
        for batch in args.batch:
            gen = make_generator(0, device)
            x_T = initial_noise((batch, *_image_shape(unet)), gen, device)
            if not conditional:
                labels = None
            elif guided:
                labels = torch.arange(batch, device=device) % unet.config.num_classes
            else:
                labels = torch.full((batch,), unet.null_label, device=device)
            guidance = args.guidance if guided else None
            # every variant's noise predictor, and the time of its first forward: its start-up cost
            eps_fns, first_forward = {}, {}
            for variant in variants(options):
                name = " + ".join(option.replace("_", " ") for option in variant) or "eager fp32"
                eps_fns[name] = EpsFn(unet, labels, guidance, variant)
                t = torch.full((batch,), schedule.num_timesteps - 1, device=device)
                first_forward[name], _ = timed(functools.partial(eps_fns[name], x_T, t), device)
            if args.nchw:  # the layout comparison is made for eager fp32 only, as the diffusers one
                eps_fns["eager fp32, NCHW weights"] = EpsFn(unet_nchw, labels, guidance)
                first_forward["eager fp32, NCHW weights"] = float("nan")
            for sampler, steps in args.runs:
                contenders = {
                    (name, f"{sampler} (ours)"): functools.partial(run_ours, schedule, x_T, sampler, steps, fn, 1)
                    for name, fn in eps_fns.items()
                }
                if scheduler is not None and sampler == "ddim":
                    contenders[("eager fp32", "ddim (diffusers loop)")] = functools.partial(
                        run_diffusers, scheduler, x_T, steps, eps_fns["eager fp32"]
                    )
                for run in contenders.values():
                    run()  # warm-up
                results = time_interleaved(contenders, args.repeats, device)
                reference = results[("eager fp32", f"{sampler} (ours)")][1]
                for (name, label), (seconds, out) in results.items():
                    diff = "" if out is reference else f"{(out - reference).abs().max().item():.1e}"
                    row = _row(name, label, steps, batch, seconds, diff)
                    rows.append([*row[:-1], first_forward.get(name, float("nan")), row[-1]])
                print(f"  done: {sampler}-{steps}, batch {batch}", file=sys.stderr, flush=True)

    header = ["variant", "sampler", "steps", "batch", "latency s", "ms/step", "images/s", "first forward s",
              "max abs diff vs eager fp32"]  # fmt: skip
    print()
    print(markdown_table(header, rows))


def time_interleaved(runs: dict, repeats: int, device: torch.device) -> dict:
    """{label: (median seconds, output of the last run)}; the runs take turns, repeat by repeat, so
    that all of them see the same machine."""
    seconds = {label: [] for label in runs}
    outputs = {}
    for _ in range(repeats):
        for label, run in runs.items():
            elapsed, outputs[label] = timed(run, device)
            seconds[label].append(elapsed)
    return {label: (median(seconds[label]), outputs[label]) for label in runs}


def _row(variant: str, sampler: str, steps: int, batch: int, seconds: float, diff: str) -> list:
    return [variant, sampler, steps, batch, seconds, seconds / steps * 1000, batch / seconds, diff]


def _image_shape(unet) -> tuple[int, int, int]:
    return (unet.config.in_channels, unet.config.image_size, unet.config.image_size)


if __name__ == "__main__":
    main()
