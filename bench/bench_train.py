"""Training throughput (images/s) of the UNet: the optimizer step of model/train.py (L_simple, AdamW,
gradient clipping, EMA update: TrainState.update) on synthetic batches, so that data loading is not
what is measured; with --objectives ddpm,progressive also a step of model/distill.py's rounds.

    python bench/bench_train.py --threads 1                               # CPU: about a minute
    python bench/bench_train.py --threads 1 --objectives ddpm,progressive
    python bench/bench_train.py --device cuda --preset ddpm-cifar10 --channels 3 --image-size 32 \
        --classes 0 --batch 128 --steps 50 --compile --bf16 --channels-last

Each row times --steps optimizer steps after --warmup untimed ones (the median of --repeats such
runs). On a GPU, --compile, --bf16 and --channels-last each add a row of their own, and one with all
of them (ddpm-train turns bf16 and channels-last on by default on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import sys

import torch
from _common import (
    add_common_args,
    command_line,
    gpu_options,
    machine_line,
    markdown_table,
    median,
    timed,
    variants,
)

from model.checkpoint import EpsilonFromV
from model.device import resolve_device, synchronize
from model.distill import progressive_loss
from model.samplers import ddim_timesteps
from model.schedule import NoiseSchedule
from model.train import TrainState
from model.train import parse_args as train_args
from model.unet import PRESETS, build_unet

train_defaults = train_args([])  # lr, warm-up, EMA, clipping: the training CLI's defaults

GPU_ONLY = ("compile", "bf16", "channels_last")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="the UNet (default: the shipped one)")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--classes", type=int, default=10, help="class-conditional with this many classes; 0: not")
    parser.add_argument("--batch", default="64", help="batch sizes, comma-separated (the shipped models: 64)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps a run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (and compilation)")
    parser.add_argument("--objectives", default="ddpm", help="comma-separated: ddpm (training), progressive "
                        "(a distillation round, which needs --classes)")  # fmt: skip
    add_common_args(parser)
    gpu = parser.add_argument_group("GPU only (ignored with a note on the CPU)")
    gpu.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    gpu.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward and the loss")
    gpu.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    args = parser.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    args.objectives = args.objectives.split(",")
    if not set(args.objectives) <= {"ddpm", "progressive"} or ("progressive" in args.objectives and not args.classes):
        parser.error("--objectives: ddpm and/or progressive (with --classes)")
    return args


class Trainer:
    """model/train.py's step (TrainState.update on the objective's loss), without the data loader, the
    logging and the checkpoints. "ddpm": L_simple; "progressive": a round of model/distill.py, the model
    its own teacher (two guided DDIM steps without gradients, then the student's step)."""

    def __init__(self, args, batch: int, device: torch.device, options: tuple[str, ...], objective: str):
        torch.manual_seed(0)
        self.device = device
        self.bf16 = "bf16" in options
        self.objective = objective
        self.schedule = NoiseSchedule.from_name("linear", 1000).to(device)
        distilled = {"guidance_input": True, "prediction": "v"} if objective == "progressive" else {}
        self.model = build_unet(
            args.preset, in_channels=args.channels, image_size=args.image_size, num_classes=args.classes, **distilled
        ).to(device)
        if "channels_last" in options:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.state = TrainState(self.model, train_defaults, args.steps)
        self.teacher = EpsilonFromV(copy.deepcopy(self.model).eval(), self.schedule)
        self.forward = torch.compile(self.model) if "compile" in options else self.model
        self.x0 = torch.rand(batch, args.channels, args.image_size, args.image_size, device=device) * 2 - 1
        if "channels_last" in options:
            self.x0 = self.x0.contiguous(memory_format=torch.channels_last)
        # labels with the null label among them (1 in classes+1), as train.py's label dropout makes them
        self.labels = torch.randint(0, args.classes + 1, (batch,), device=device) if args.classes else None
        self.w = torch.rand(batch, device=device) * 8
        self.grid = ddim_timesteps(1000, 16, "trailing")
        self.model.train()

    def step(self) -> None:
        with torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else contextlib.nullcontext():
            if self.objective == "ddpm":
                loss = self.schedule.loss(self.forward, self.x0, self.labels)
            else:
                loss = progressive_loss(self.forward, self.teacher, self.schedule, self.x0, self.grid, self.labels,
                                        self.w)  # fmt: skip
        self.state.update(loss)

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    options = gpu_options(args, device, GPU_ONLY)

    print(command_line())
    print(machine_line(device))
    rows = []
    for variant in variants(options):
        name = " + ".join(option.replace("_", "-") for option in variant) or "eager fp32"
        for objective, batch in itertools.product(args.objectives, args.batch):
            trainer = Trainer(args, batch, device, variant, objective)
            trainer.steps(args.warmup)
            synchronize(device)
            seconds = median(timed(lambda t=trainer: t.steps(args.steps), device)[0] for _ in range(args.repeats))
            params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
            shape = f"{args.channels}×{args.image_size}×{args.image_size}"
            rows.append([objective, name, args.preset, f"{params:.1f}M", shape, batch,
                         seconds / args.steps * 1000, batch * args.steps / seconds])  # fmt: skip
            print(f"  done: {objective}, {name}, batch {batch}", file=sys.stderr, flush=True)
            del trainer
    print()
    print(markdown_table(["objective", "variant", "preset", "params", "image", "batch", "ms/step", "images/s"], rows))


if __name__ == "__main__":
    main()
