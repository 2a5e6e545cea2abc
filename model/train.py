"""Train a DDPM noise predictor: `python -m model.train --dataset mnist --out runs/mnist`.

One loop for one CPU, one GPU, or many GPUs under `torchrun --nproc_per_node=N` (DistributedDataParallel;
only rank 0 writes). The run folder holds:
  config.json         the options of the run (a resumed run reads them back)
  model.safetensors   the EMA weights with their metadata: what sampling and the server load
  state.pt            everything needed to resume exactly: weights, EMA, optimizer, lr schedule,
                      step, RNG states (tensors only: loaded with weights_only=True)
  metrics.jsonl, events.out.tfevents.*   loss, lr and images/s (TensorBoard reads the events)
  samples/            a sample grid and a denoising strip every --sample-every steps
Every file is written atomically: a kill at any moment leaves the previous version intact.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from model.checkpoint import atomic_write, save_checkpoint
from model.cli import HelpFormatter
from model.data import DATASETS, load_dataset
from model.samplers import ddim_steps, ddim_timesteps, denoise, guided_eps, initial_noise, make_generator
from model.schedule import SCHEDULES, NoiseSchedule
from model.unet import PRESETS, UNet, UNetConfig
from model.visualize import save_denoising_strip, save_sample_grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train a DDPM/DDIM noise predictor. Options can also come from --config FILE.json "
        "(keys are the option names with underscores); options on the command line win.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", type=Path, help="JSON file of option values")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    g.add_argument("--data-root", type=Path, default=Path("data"), help="where the dataset's files are")
    g.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    g.add_argument("--image-size", type=int, help="resize/crop to this size (default: the dataset's own)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="UNet configuration")
    g.add_argument("--base-channels", type=int, help="override the preset's base width")
    g.add_argument("--channel-mults", type=int, nargs="+", help="override the preset's channel multipliers")
    g.add_argument("--num-res-blocks", type=int, help="override the preset's residual blocks per level")
    g.add_argument("--attention-resolutions", type=int, nargs="*", help="override where attention runs")
    g.add_argument("--dropout", type=float, help="override the preset's dropout")
    g.add_argument(
        "--conditional", action=argparse.BooleanOptionalAction, default=True, help="class-conditional (if labeled)"
    )
    g.add_argument("--label-dropout", type=float, default=0.1, help="share of labels replaced by the null label (CFG)")
    g.add_argument("--schedule", choices=SCHEDULES, default="linear")
    g.add_argument("--timesteps", type=int, default=1000)
    g = p.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size (split over processes)")
    g.add_argument("--steps", type=int, default=10_000, help="optimizer steps")
    g.add_argument("--epochs", type=float, help="train this many epochs instead of --steps")
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--warmup", type=int, default=500, help="steps of linear learning-rate warmup")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay ends at lr × this")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--ema-decay", type=float, default=0.9999)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("speed")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (CUDA default)")
    g.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="(CUDA default)")
    g.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("runs/default"), help="the run folder")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--sample-every", type=int, default=2000, help="0: never")
    g.add_argument("--ckpt-every", type=int, default=1000)
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")

    args, _ = p.parse_known_args(argv)
    if args.config:
        known = {a.dest for a in p._actions}
        values = json.loads(args.config.read_text())
        unknown = set(values) - known
        if unknown:
            p.error(f"{args.config}: unknown options {sorted(unknown)}")
        p.set_defaults(**values)
    return p.parse_args(argv)


# --- pieces of the loop ------------------------------------------------------------------------


class EpochBatches(Sampler):
    """Batches of a fresh permutation every epoch, a pure function of (seed, step): a resumed run
    sees exactly the batches it would have seen, and each process takes its own share."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.step = n, batch_size, seed, start_step
        self.rank, self.world = rank, world
        self.per_epoch = n // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"the dataset has {n} images, fewer than one batch of {batch_size}")

    def __iter__(self):
        while True:
            epoch, offset = divmod(self.step, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            for b in range(offset, self.per_epoch):
                batch = perm[b * self.batch_size : (b + 1) * self.batch_size]
                self.step += 1
                yield batch[self.rank :: self.world].tolist()


def bias_corrected_ema(decay: float):
    """An EMA of the weights that is, after n updates, exactly Σ_k d^(n-k) θ_k / Σ_k d^(n-k).

    A plain EMA, m_n = d m_{n-1} + (1 - d) θ_n, keeps a share d^(n-1) of its first weights: 37% after
    1000 steps at d = 0.999, 8% after 2500. Those weights hold the zero-initialised output layers, so
    ε_θ comes out too small and samples stay noisy. Normalising, as Adam does for its moments, removes
    that share: with decay β_n = d (1 - d^(n-1)) / (1 - d^n) the average starts as a plain mean and
    tends to d.
    """

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = num_averaged + 1  # this update makes the n-th average
        beta = decay * (1 - decay ** (n - 1)) / (1 - decay**n)
        return beta * averaged + (1 - beta) * current

    return average


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay from 1 to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def unet_config(args: argparse.Namespace, channels: int, image_size: int, num_classes: int) -> UNetConfig:
    overrides = {
        "base_channels": args.base_channels,
        "channel_mults": args.channel_mults,
        "num_res_blocks": args.num_res_blocks,
        "attention_resolutions": args.attention_resolutions,
        "dropout": args.dropout,
    }
    return UNetConfig(
        **{**PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None}},
        in_channels=channels,
        image_size=image_size,
        num_classes=num_classes,
    )


@torch.inference_mode()
def save_samples(model: UNet, schedule: NoiseSchedule, folder: Path, step: int, device: torch.device) -> None:
    """A 10×10 grid (one row per class for conditional models, guidance w = 3) and a denoising strip of 4
    samples, by DDIM with 50 steps and clipped x0."""
    n = 100 if model.config.num_classes else 64
    gen = make_generator(0, device)
    x = initial_noise((n, model.config.in_channels, model.config.image_size, model.config.image_size), gen, device)
    labels = torch.arange(n, device=device) // 10 % model.config.num_classes if model.config.num_classes else None
    steps = list(
        denoise(
            ddim_steps(schedule, x, ddim_timesteps(schedule.num_timesteps, 50), generator=gen, thresholding="clip"),
            lambda x_t, t: guided_eps(model, x_t, t, labels, 3.0),
        )
    )
    save_sample_grid(steps[-1].x_t, folder / f"grid_{step:07d}.png", nrow=10 if labels is not None else 8)
    keep = [replace(s, x_t=s.x_t[:4], x0=s.x0[:4]) for s in steps]
    save_denoising_strip(keep, folder / f"strip_{step:07d}.png", columns=10)


# --- the training run ---------------------------------------------------------------------------


def train(args: argparse.Namespace) -> Path:
    distributed = "LOCAL_RANK" in os.environ
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if distributed:
        local_rank = int(os.environ["LOCAL_RANK"])
        if args.device.startswith("cuda"):
            args.device = f"cuda:{local_rank}"
            torch.cuda.set_device(args.device)
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = cuda if args.bf16 is None else args.bf16
    channels_last = cuda if args.channels_last is None else args.channels_last
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the {world} processes")

    out: Path = args.out
    state_path = out / "state.pt"
    if args.resume and not state_path.is_file():
        raise SystemExit(f"--resume: no {state_path} to resume from")
    if not args.resume and state_path.is_file():
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or choose another --out")

    info = DATASETS[args.dataset]
    dataset = load_dataset(args.dataset, args.data_root, train=True, image_size=args.image_size, download=args.download)
    image_size = args.image_size or info.image_size
    num_classes = len(info.class_names) if args.conditional else 0
    if args.epochs:
        args.steps = max(1, round(args.epochs * (len(dataset) // args.batch_size)))

    torch.manual_seed(args.seed)
    schedule = NoiseSchedule.from_name(args.schedule, args.timesteps).to(device)
    model = UNet(unet_config(args, info.channels, image_size, num_classes)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # the EMA copy is only ever evaluated: eval mode keeps dropout off when it draws samples
    ema = AveragedModel(model, avg_fn=bias_corrected_ema(args.ema_decay), use_buffers=True).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.warmup, args.steps, args.min_lr_ratio)
    )

    step = 0
    if args.resume:
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])

    trained = DistributedDataParallel(model) if distributed else model
    forward = torch.compile(trained) if args.compile else trained
    batches = EpochBatches(len(dataset), args.batch_size, args.seed, step, rank, world)
    loader = iter(DataLoader(dataset, batch_sampler=batches, num_workers=args.workers, pin_memory=cuda))

    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
        if args.resume:  # forget what was logged after the saved state: those steps run again
            drop_metrics_after(out / "metrics.jsonl", step)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out), purge_step=step)

    def save() -> None:
        # every process joins the RNG gather; only rank 0 writes
        rng_cpu = gather_states(torch.get_rng_state(), world, distributed)
        rng_cuda = gather_states(torch.cuda.get_rng_state(device).to(device), world, distributed) if cuda else None
        if rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": torch.tensor(step),
            "rng_cpu": rng_cpu,
        }
        if rng_cuda is not None:
            state["rng_cuda"] = rng_cuda
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))
        save_checkpoint(
            out / "model.safetensors", ema.module, schedule, args.dataset, list(info.class_names), step, ema=True
        )

    progress = tqdm(
        total=args.steps, initial=step, disable=rank != 0 or args.no_progress, dynamic_ncols=True, mininterval=1
    )
    if args.resume:  # last: setting up the loop above draws from the RNG (the DataLoader's base seed)
        torch.set_rng_state(state["rng_cpu"][rank].cpu())
        if cuda and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"][rank].cpu())
    model.train()
    tick, seen = time.perf_counter(), 0
    while step < args.steps:
        x0, labels = next(loader)
        x0 = x0.to(device, non_blocking=True)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if num_classes:
            labels = labels.to(device)
            drop = torch.rand(labels.shape, device=device) < args.label_dropout
            labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
        else:
            labels = None
        with torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext():
            loss = schedule.loss(forward, x0, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        step += 1
        seen += x0.shape[0] * world

        if step % args.log_every == 0 or step == args.steps:
            loss_value = loss.detach()
            if distributed:
                dist.all_reduce(loss_value, op=dist.ReduceOp.AVG)
            elapsed = time.perf_counter() - tick
            metrics = {
                "step": step,
                "loss": loss_value.item(),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm.item(),
                "images_per_s": seen / elapsed,
            }
            tick, seen = time.perf_counter(), 0
            if rank == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                for key, value in metrics.items():
                    if key != "step":
                        writer.add_scalar(f"train/{key}", value, step)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.0f}")
        progress.update(1)
        if step % args.ckpt_every == 0 or step == args.steps:
            save()
        if rank == 0 and args.sample_every and (step % args.sample_every == 0 or step == args.steps):
            save_samples(ema.module, schedule, out / "samples", step, device)

    progress.close()
    if writer:
        writer.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return out / "model.safetensors"


def drop_metrics_after(path: Path, step: int) -> None:
    if path.is_file():
        kept = [line for line in path.read_text().splitlines(keepends=True) if json.loads(line)["step"] <= step]
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))


def gather_states(state: torch.Tensor, world: int, distributed: bool) -> list[torch.Tensor]:
    """Every process's RNG state, so that a resumed run continues each one's random stream."""
    if not distributed:
        return [state]
    states = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather(states, state)
    return [s.cpu() for s in states]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        path = train(args)
    except FileNotFoundError as e:  # a missing dataset: one clear line, no traceback
        sys.exit(f"error: {e}")
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"checkpoint: {path}")


if __name__ == "__main__":
    main()
