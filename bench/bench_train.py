"""Training throughput (images/s) of the UNet: the optimizer step of model/train.py (L_simple, AdamW,
gradient clipping, EMA update) on synthetic batches, so that data loading is not what is measured.

    python bench/bench_train.py --threads 1                               # CPU: about a minute
    python bench/bench_train.py --device cuda --preset ddpm-cifar10 --channels 3 --image-size 32 \
        --classes 0 --batch 128 --steps 50 --compile --bf16 --channels-last

Each row times --steps optimizer steps after --warmup untimed ones (the median of --repeats such
runs). On a GPU, --compile, --bf16 and --channels-last each add a row of their own, and one with all
of them (ddpm-train turns bf16 and channels-last on by default on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch
from _common import (
    add_common_args,
    command_line,
    gpu_options,
    machine_line,
    markdown_table,
    median,
    resolve_device,
    synchronize,
    timed,
    variants,
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model.schedule import NoiseSchedule
from model.unet import PRESETS, build_unet

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
    add_common_args(parser)
    gpu = parser.add_argument_group("GPU only (ignored with a note on the CPU)")
    gpu.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    gpu.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward and the loss")
    gpu.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    args = parser.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    return args


class Trainer:
    """model/train.py's step, without the data loader, the logging and the checkpoints."""

    def __init__(self, args, batch: int, device: torch.device, options: tuple[str, ...]):
        torch.manual_seed(0)
        self.device = device
        self.bf16 = "bf16" in options
        self.channels_last = "channels_last" in options
        self.schedule = NoiseSchedule.from_name("linear", 1000).to(device)
        self.model = build_unet(
            args.preset, in_channels=args.channels, image_size=args.image_size, num_classes=args.classes
        ).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(0.9999), use_buffers=True).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-4)
        self.forward = torch.compile(self.model) if "compile" in options else self.model
        self.x0 = torch.rand(batch, args.channels, args.image_size, args.image_size, device=device) * 2 - 1
        if self.channels_last:
            self.x0 = self.x0.contiguous(memory_format=torch.channels_last)
        # labels with the null label among them (1 in classes+1), as train.py's label dropout makes them
        self.labels = torch.randint(0, args.classes + 1, (batch,), device=device) if args.classes else None
        self.model.train()

    def step(self) -> None:
        with torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else contextlib.nullcontext():
            loss = self.schedule.loss(self.forward, self.x0, self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.ema.update_parameters(self.model)

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
        for batch in args.batch:
            trainer = Trainer(args, batch, device, variant)
            trainer.steps(args.warmup)
            synchronize(device)
            seconds = median(timed(lambda t=trainer: t.steps(args.steps), device)[0] for _ in range(args.repeats))
            params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
            shape = f"{args.channels}×{args.image_size}×{args.image_size}"
            rows.append([name, args.preset, f"{params:.1f}M", shape, batch, seconds / args.steps * 1000,
                         batch * args.steps / seconds])  # fmt: skip
            print(f"  done: {name}, batch {batch}", file=sys.stderr, flush=True)
            del trainer
    print()
    print(markdown_table(["variant", "preset", "params", "image", "batch", "ms/step", "images/s"], rows))


if __name__ == "__main__":
    main()
