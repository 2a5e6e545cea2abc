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
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from model.checkpoint import EpsilonFromV, atomic_write, save_checkpoint
from model.cli import HelpFormatter, add_run_arguments, parse_with_config
from model.data import DATASETS, load_dataset
from model.device import bf16_autocast, resolve_device
from model.formats import load_model
from model.samplers import ddim_steps, ddim_timesteps, denoise, guided_eps, initial_noise, make_generator
from model.schedule import SCHEDULES, NoiseSchedule
from model.unet import PREDICTIONS, PRESETS, UNet, build_unet
from model.visualize import save_denoising_strip, save_sample_grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m model.train", description="Train a DDPM/DDIM noise predictor.", formatter_class=HelpFormatter
    )
    groups = add_run_arguments(p)
    groups["data"].add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    groups["data"].add_argument("--image-size", type=int, help="resize/crop to this size (default: the dataset's own)")
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
    g.add_argument("--prediction", choices=PREDICTIONS, default="epsilon", help="what the UNet regresses: ε or v")
    g.add_argument(
        "--min-snr-gamma", type=float, help="Min-SNR-γ loss weighting (Hang et al. 2023; 5 in the paper); default: none"
    )
    g.add_argument("--schedule", choices=SCHEDULES, default="linear")
    g.add_argument("--timesteps", type=int, default=1000)
    groups["optimization"].add_argument("--steps", type=int, default=10_000, help="optimizer steps")
    groups["optimization"].add_argument("--epochs", type=float, help="train this many epochs instead of --steps")
    groups["speed"].add_argument("--compile", action="store_true", help="torch.compile the UNet")
    groups["output"].add_argument(
        "--init-from", type=Path, help="start a new run from these weights (a checkpoint of the same UNet config)"
    )
    groups["output"].add_argument("--sample-every", type=int, default=2000, help="0: never")
    p.set_defaults(
        batch_size=128, warmup=500, ema_decay=0.9999, out=Path("runs/default"), log_every=50, ckpt_every=1000
    )
    return parse_with_config(p, argv)


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
    tends to d."""

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


@torch.inference_mode()
def save_samples(model: UNet, schedule: NoiseSchedule, folder: Path, step: int, device: torch.device) -> None:
    """A 10×10 grid (one row per class for conditional models, guidance w = 3) and a denoising strip of 4
    samples, by DDIM with 50 steps and clipped x0."""
    if model.config.prediction == "v":
        model = EpsilonFromV(model, schedule)
    n = 100 if model.config.num_classes else 64
    gen = make_generator(0, device)
    x = initial_noise((n, model.config.in_channels, model.config.image_size, model.config.image_size), gen, device)
    labels = torch.arange(n, device=device) // 10 % model.config.num_classes if model.config.num_classes else None
    run = ddim_steps(schedule, x, ddim_timesteps(schedule.num_timesteps, 50), generator=gen, thresholding="clip")
    steps = list(denoise(run, lambda x_t, t: guided_eps(model, x_t, t, labels, 3.0)))
    save_sample_grid(steps[-1].x_t, folder / f"grid_{step:07d}.png", nrow=10 if labels is not None else 8)
    keep = [replace(s, x_t=s.x_t[:4], x0=s.x0[:4]) for s in steps]
    save_denoising_strip(keep, folder / f"strip_{step:07d}.png", columns=10)


# --- the parts of a run that distillation shares ------------------------------------------------


@dataclass
class Runtime:
    """Where a run computes: the device, its place among torchrun's processes, and the speed options."""

    device: torch.device
    rank: int = 0
    world: int = 1
    distributed: bool = False
    bf16: bool = False
    memory_format: torch.memory_format = torch.preserve_format  # of the model and the batches

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else nullcontext()

    def close(self) -> None:
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()


def init_runtime(args: argparse.Namespace) -> Runtime:
    """Pick the device (one GPU per torchrun process), join the process group, set threads."""
    distributed = "LOCAL_RANK" in os.environ
    args.device = str(resolve_device(args.device))
    if distributed:
        if args.device.startswith("cuda"):
            args.device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(args.device)
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    args.bf16 = bf16 = bf16_autocast(device, cuda if args.bf16 is None else args.bf16)  # the run's config says what ran
    channels_last = cuda if args.channels_last is None else args.channels_last
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    return Runtime(device, rank, world, distributed, bf16, memory_format)


def guard_run_folder(out: Path, resume: bool) -> Path:
    """The run's state.pt; a fresh run never overwrites an old one, a resumed run needs one."""
    state_path = out / "state.pt"
    if resume and not state_path.is_file():
        raise SystemExit(f"--resume: no {state_path} to resume from")
    if not resume and state_path.is_file():
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    return state_path


class TrainState:
    """The weights, their EMA, AdamW and its learning-rate schedule, and the step: what one optimisation
    step changes and what state.pt holds."""

    def __init__(self, model: UNet, args: argparse.Namespace, total_steps: int):
        self.model = model
        # the EMA copy is only ever evaluated: eval mode keeps dropout off when it draws samples
        self.ema = AveragedModel(model, avg_fn=bias_corrected_ema(args.ema_decay), use_buffers=True).eval()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, args.warmup, total_steps, args.min_lr_ratio)
        )
        self.parts = {"model": model, "ema": self.ema, "optimizer": self.optimizer, "scheduler": self.scheduler}
        self.grad_clip = args.grad_clip
        self.step = 0

    def update(self, loss: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        return grad_norm

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, path: Path, rt: Runtime) -> None:
        """state.pt, atomically. Every process joins the RNG gather; only rank 0 writes."""
        rng = {"rng_cpu": gather_states(torch.get_rng_state(), rt)}
        if rt.cuda:
            rng["rng_cuda"] = gather_states(torch.cuda.get_rng_state(rt.device).to(rt.device), rt)
        if rt.rank != 0:
            return
        state = {**{key: part.state_dict() for key, part in self.parts.items()}, "step": torch.tensor(self.step), **rng}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load(self, path: Path, rt: Runtime) -> dict:
        """Restore from state.pt; returns it, for open_run to restore the RNG states once everything else is set up."""
        state = torch.load(path, map_location=rt.device, weights_only=True)
        for key, part in self.parts.items():
            part.load_state_dict(state[key])
        self.step = int(state["step"])
        return state


def forget_after(metrics: Path, step: int) -> None:
    """A resumed run's log forgets what was logged after its saved state: those steps run again."""
    if metrics.is_file():
        lines = metrics.read_text().splitlines(keepends=True)
        kept = "".join(line for line in lines if json.loads(line)["step"] <= step)
        atomic_write(metrics, lambda tmp: Path(tmp).write_text(kept))


class RunLog:
    """metrics.jsonl, TensorBoard and the progress bar of a run folder (rank 0 writes), for the run of
    these options (`config`, as config.json holds them) over `total` steps."""

    def __init__(self, out: Path, config: dict, rt: Runtime, step: int, total: int, resume: bool):
        self.out, self.rt, self.every, self.total = out, rt, config["log_every"], total
        self.writer = None
        if rt.rank == 0:
            (out / "samples").mkdir(parents=True, exist_ok=True)
            if resume:
                forget_after(out / "metrics.jsonl", step)
            text = json.dumps(config, indent=2, default=str)  # a Path as its text
            atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(text))
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out), purge_step=step)
        self.progress = tqdm(
            total=total, initial=step, disable=rt.rank != 0 or config["no_progress"], dynamic_ncols=True, mininterval=1
        )
        self.tick, self.seen = time.perf_counter(), 0

    def step(self, state: TrainState, images: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count a step of `images`; every --log-every steps and at the last, write the loss (its mean over
        processes), the learning rate, the gradient norm and images/s."""
        self.seen += images * self.rt.world
        self.progress.update(1)
        step = state.step
        if step % self.every and step != self.total:
            return
        loss = loss.detach().float()
        if self.rt.distributed:
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        metrics = {"step": step, "loss": loss.item(), "lr": state.lr, "grad_norm": grad_norm.detach().float().item()}
        metrics["images_per_s"] = self.seen / (time.perf_counter() - self.tick)
        self.tick, self.seen = time.perf_counter(), 0
        if self.rt.rank != 0:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        for key, value in metrics.items():
            if key != "step":
                self.writer.add_scalar(f"train/{key}", value, step)
        self.progress.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.0f}")

    def close(self) -> None:
        self.progress.close()
        if self.writer:
            self.writer.close()


def open_run(
    model: UNet, dataset, args: argparse.Namespace, total: int, folder: Path, config: dict, rt: Runtime
) -> tuple[TrainState, Iterator[tuple[torch.Tensor, torch.Tensor]], RunLog]:
    """The state of a run in `folder` (resumed from its state.pt if it has one), the endless (images, labels)
    batches on the device from its step (those a resumed run would see) and its log; every process's
    random stream is continued last, once the rest has drawn from it."""
    resume = (folder / "state.pt").is_file()
    state = TrainState(model, args, total)
    saved = state.load(folder / "state.pt", rt) if resume else None
    sampler = EpochBatches(len(dataset), args.batch_size, args.seed, state.step, rt.rank, rt.world)
    # iter() draws the DataLoader's base seed: before the RNG states are restored below
    loader = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=args.workers, pin_memory=rt.cuda))
    batches = ((x.to(rt.device, memory_format=rt.memory_format, non_blocking=True), y.to(rt.device)) for x, y in loader)
    log = RunLog(folder, config, rt, state.step, total, resume)
    if saved:
        torch.set_rng_state(saved["rng_cpu"][rt.rank].cpu())
        if rt.cuda and "rng_cuda" in saved:
            torch.cuda.set_rng_state(saved["rng_cuda"][rt.rank].cpu())
    return state, batches, log


def train(args: argparse.Namespace) -> Path:
    rt = init_runtime(args)
    state_path = guard_run_folder(args.out, args.resume)
    dataset = load_dataset(args.dataset, args.data_root, train=True, image_size=args.image_size, download=args.download)
    channels, _, image_size = dataset[0][0].shape
    # an unconditional model names no classes; a labelled folder's come from its sub-folders
    class_names = list(getattr(dataset, "class_names", DATASETS[args.dataset].class_names)) if args.conditional else []
    num_classes = len(class_names)
    if args.epochs:
        args.steps = max(1, round(args.epochs * (len(dataset) // args.batch_size)))

    torch.manual_seed(args.seed)
    schedule = NoiseSchedule.from_name(args.schedule, args.timesteps).to(rt.device)
    flags = ("base_channels", "channel_mults", "num_res_blocks", "attention_resolutions", "dropout", "prediction")
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}  # over the preset's
    model = build_unet(args.preset, **given, in_channels=channels, image_size=image_size, num_classes=num_classes)
    if args.init_from and not args.resume:
        warm_start(model, args.init_from)
    model = model.to(rt.device, memory_format=rt.memory_format)
    state, loader, log = open_run(model, dataset, args, args.steps, args.out, vars(args), rt)
    trained = DistributedDataParallel(model) if rt.distributed else model
    forward = torch.compile(trained) if args.compile else trained

    model.train()
    while state.step < args.steps:
        x0, labels = next(loader)
        if num_classes:
            drop = torch.rand(labels.shape, device=rt.device) < args.label_dropout
            labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
        else:
            labels = None
        with rt.autocast():
            loss = schedule.loss(forward, x0, labels, args.prediction, args.min_snr_gamma)
        grad_norm = state.update(loss)
        log.step(state, x0.shape[0], loss, grad_norm)
        step = state.step
        if step % args.ckpt_every == 0 or step == args.steps:
            state.save(state_path, rt)
            if rt.rank == 0:
                save_checkpoint(args.out / "model.safetensors", state.ema.module, schedule, args.dataset,
                                class_names, step, ema=True)  # fmt: skip
        if rt.rank == 0 and args.sample_every and (step % args.sample_every == 0 or step == args.steps):
            save_samples(state.ema.module, schedule, args.out / "samples", step, rt.device)

    log.close()
    rt.close()
    return args.out / "model.safetensors"


def warm_start(model: UNet, path: Path) -> None:
    """Copy the weights of an earlier run's checkpoint (its EMA) into a new run's model."""
    start = load_model(path)
    if start.net.config != model.config:
        raise SystemExit(f"--init-from {path}: its UNet config {start.net.config} is not this run's {model.config}")
    model.load_state_dict(start.net.state_dict())
    print(f"warm start from {path} (step {start.step})")


def gather_states(state: torch.Tensor, rt: Runtime) -> list[torch.Tensor]:
    """Every process's RNG state, so that a resumed run continues each one's random stream."""
    if not rt.distributed:
        return [state]
    states = [torch.empty_like(state) for _ in range(rt.world)]
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
