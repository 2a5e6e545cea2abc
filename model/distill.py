"""Distil a guided teacher into a student that samples in 1 or 2 steps of one forward each:
`python -m model.distill --teacher checkpoints/mnist.safetensors --out runs/mnist-fast`.

Two stages, as in Meng et al. 2023 ("On Distillation of Guided Diffusion Models"):
  round 0, guidance: a student that takes the guidance weight w as an input learns the teacher's guided
      prediction ε_u + w (ε_c - ε_u), for w drawn from --guidance-range and every class and the null
      label: a guided step then costs one forward instead of two. The student predicts v = √ᾱ ε - √(1-ᾱ) x0
      (Salimans & Ho 2022), since an ε-prediction cannot give x0 at the first, pure-noise step.
  rounds 1 …, progressive distillation (Salimans & Ho 2022, Algorithm 2): a student initialised from its
      teacher learns to take in one DDIM step what the teacher takes in two, so each round halves the
      steps: --teacher-steps/2, /4, … down to --final-steps.
Each round is a run folder of its own under --out (round-0-guidance, round-1-8-steps, …), written and
resumed as model.train's runs are, with a sample grid; `--resume` skips the rounds that are done and
continues the one that is not. --out/model.safetensors is the final student, with the sampler and steps
it must be used with in its metadata.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from model.checkpoint import Checkpoint, atomic_write, save_checkpoint
from model.cli import HelpFormatter, add_run_arguments, parse_with_config
from model.data import load_dataset
from model.formats import load_model
from model.samplers import ddim_timesteps, guided_eps, initial_noise, make_generator, sample, sampling_run
from model.schedule import NoiseSchedule, _at
from model.train import Runtime, guard_run_folder, init_runtime, open_run
from model.unet import UNet, UNetConfig
from model.visualize import save_sample_grid

SPACING = "trailing"  # the student grids nest: trailing(2N) ⊃ trailing(N), and every run starts at t = T-1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m model.distill",
        description="Distil a class-conditional teacher (trained with label dropout, for classifier-free guidance) "
        "into a student that takes w as an input and samples in --final-steps DDIM steps.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--teacher", type=Path, help="the teacher checkpoint (.safetensors); required")
    add_run_arguments(p)  # its warmup is each round's
    g = p.add_argument_group("distillation")
    g.add_argument("--guidance-range", type=float, nargs=2, default=(0.0, 8.0), metavar=("LOW", "HIGH"),
                   help="w is drawn uniformly from this range")  # fmt: skip
    g.add_argument("--null-share", type=float, default=0.1, help="share of rows with the null label (w unused)")
    g.add_argument("--teacher-steps", type=int, default=16, help="DDIM steps of the guided teacher the first "
                   "progressive round distils (a power of two times --final-steps)")  # fmt: skip
    g.add_argument("--final-steps", type=int, default=2, help="the student's steps after the last round")
    g.add_argument("--guidance-round-steps", type=int, default=1000, help="optimizer steps of round 0")
    g.add_argument("--round-steps", type=int, default=1000, help="optimizer steps of each progressive round")
    p.set_defaults(batch_size=64, warmup=50, ema_decay=0.995, out=Path("runs/distill"), log_every=25, ckpt_every=100)

    args = parse_with_config(p, argv)
    if args.teacher is None:
        p.error("--teacher is required (on the command line or in --config)")
    ratio = args.teacher_steps // args.final_steps
    if args.final_steps < 1 or ratio < 2 or ratio & (ratio - 1) or ratio * args.final_steps != args.teacher_steps:
        p.error("--teacher-steps must be --final-steps times a power of two (at least 2)")
    return args


def rounds(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(folder name, student steps, optimizer steps) of every round; round 0 samples with --teacher-steps."""
    plan = [("round-0-guidance", args.teacher_steps, args.guidance_round_steps)]
    steps = args.teacher_steps // 2
    while steps >= args.final_steps:
        plan.append((f"round-{len(plan)}-{steps}-steps", steps, args.round_steps))
        steps //= 2
    return plan


def truncated_snr(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """max(SNR_t, 1): Salimans & Ho's weighting of an x0 loss, an ε-loss at low noise and an x0-loss at high."""
    abar = _at(schedule.alphas_cumprod, t, like)
    return (abar / (1 - abar)).clamp(min=1)


def ddim_to(schedule: NoiseSchedule, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_to: torch.Tensor):
    """DDIM (η = 0) from x_t at t to t_to given x0, one t per row; t_to = -1 is the clean image."""
    alpha_t, sigma_t = _ab(schedule, t, x_t)
    alpha_to, sigma_to = _ab(schedule, t_to, x_t)
    return alpha_to * x0 + sigma_to / sigma_t * (x_t - alpha_t * x0)


def _ab(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1-ᾱ_t)) per row, with ᾱ_{-1} = 1."""
    abar = torch.cat([schedule.alphas_cumprod, schedule.alphas_cumprod.new_ones(1)])[t]  # index -1: the 1
    abar = abar.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return abar.sqrt(), (1 - abar).sqrt()


def teacher_x0(teacher, schedule: NoiseSchedule, x_t, t, labels, w) -> torch.Tensor:
    """The teacher's guided prediction of x0, clipped to [-1, 1] as the server's samplers clip it."""
    return schedule.predict_x0(x_t, t, guided_eps(teacher, x_t, t, labels, w)).clamp(-1, 1)


def guidance_loss(student: UNet, teacher, schedule: NoiseSchedule, x0, grid, labels, w) -> torch.Tensor:
    """Round 0: the student's x0, from its v with w as an input, against the teacher's guided x0, at
    timesteps drawn from `grid`."""
    t = torch.tensor(grid, device=x0.device)[torch.randint(0, len(grid), (x0.shape[0],), device=x0.device)]
    x_t = schedule.q_sample(x0, t, torch.randn_like(x0))
    with torch.no_grad():
        target = teacher_x0(teacher, schedule, x_t, t, labels, w)
    x0_student = schedule.x0_from_v(x_t, t, student(x_t, t, labels, w))
    return (truncated_snr(schedule, t, x0) * (x0_student - target) ** 2).mean()


def progressive_loss(student: UNet, teacher, schedule: NoiseSchedule, x0, grid, labels, w) -> torch.Tensor:
    """Salimans & Ho's Algorithm 2: two teacher DDIM steps t → t' → t'' make the x̃ that one student step
    from t must predict to land on the same z_t'': x̃ = (z_t'' - σ_t''/σ_t z_t) / (α_t'' - σ_t''/σ_t α_t).
    `grid` is the teacher's timesteps (2N of them, noisiest first); the student's are every other one."""
    n = len(grid) // 2
    grid = torch.tensor([*grid, -1], device=x0.device)
    i = torch.randint(0, n, (x0.shape[0],), device=x0.device)
    t, t_mid, t_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
    z_t = schedule.q_sample(x0, t, torch.randn_like(x0))
    with torch.no_grad():
        z_mid = ddim_to(schedule, z_t, teacher_x0(teacher, schedule, z_t, t, labels, w), t, t_mid)
        z_next = ddim_to(schedule, z_mid, teacher_x0(teacher, schedule, z_mid, t_mid, labels, w), t_mid, t_next)
        alpha_t, sigma_t = _ab(schedule, t, x0)
        alpha_next, sigma_next = _ab(schedule, t_next, x0)
        target = (z_next - sigma_next / sigma_t * z_t) / (alpha_next - sigma_next / sigma_t * alpha_t)
    x0_student = schedule.x0_from_v(z_t, t, student(z_t, t, labels, w))
    return (truncated_snr(schedule, t, x0) * (x0_student - target) ** 2).mean()


@torch.inference_mode()
def sample_student(ckpt: Checkpoint, steps: int, n: int, guidance: float, seed: int = 0) -> torch.Tensor:
    """n images (class i // (n/10) … for conditional models) from a student, by its own sampler."""
    device = ckpt.schedule.device
    gen = make_generator(seed, device)
    x = initial_noise((n, ckpt.config.in_channels, ckpt.config.image_size, ckpt.config.image_size), gen, device)
    labels = torch.arange(n, device=device) * ckpt.config.num_classes // n
    run = sampling_run("ddim", ckpt.schedule, x, steps, gen, spacing=SPACING, thresholding="clip")
    return sample(run, lambda x_t, t: guided_eps(ckpt.unet, x_t, t, labels, guidance))


def run_round(
    args: argparse.Namespace, rt: Runtime, index: int, teacher: Checkpoint, dataset, provenance: dict
) -> None:
    """Train round `index`'s student in its folder (resuming it if it has a state.pt)."""
    name, student_steps, total = rounds(args)[index]
    folder = args.out / name
    schedule = teacher.schedule
    torch.manual_seed(args.seed + index)
    # a v-predicting student that takes w as an input and starts as its teacher: the same weights (round 0:
    # plus a guidance embedding that adds 0)
    config = UNetConfig.from_dict({**teacher.config.to_dict(), "guidance_input": True, "prediction": "v"})
    student = UNet(config).to(rt.device, memory_format=rt.memory_format)
    missing, unexpected = student.load_state_dict(teacher.net.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("guidance_mlp.") for k in missing), (missing, unexpected)
    state, loader, log = open_run(student, dataset, args, total, folder, {**vars(args), "round": index}, rt)
    # round 0 runs the teacher only on the first progressive round's teacher grid; the others on their own
    grid = ddim_timesteps(schedule.num_timesteps, (1 if index == 0 else 2) * student_steps, SPACING)
    loss_of = guidance_loss if index == 0 else progressive_loss
    low, high = args.guidance_range
    student.train()
    while state.step < total:
        x0, labels = next(loader)
        null = torch.rand(labels.shape, device=rt.device) < args.null_share
        labels = torch.where(null, torch.full_like(labels, student.config.num_classes), labels)
        w = low + (high - low) * torch.rand(labels.shape, device=rt.device)
        with rt.autocast():
            loss = loss_of(student, teacher.unet, schedule, x0, grid, labels, w)
        grad_norm = state.update(loss)
        log.step(state, x0.shape[0], loss, grad_norm)
        step = state.step
        if step % args.ckpt_every == 0 or step == total:
            state.save(folder / "state.pt", rt)
            if rt.rank == 0:
                save_checkpoint(
                    folder / "model.safetensors",
                    state.ema.module,
                    schedule,
                    teacher.dataset,
                    teacher.class_names,
                    step,
                    # how the student must be sampled: the server and evaluation follow it
                    sampling={"sampler": "ddim", "steps": student_steps, "spacing": SPACING, "eta": 0.0},
                    distillation={**provenance, "round": index, "round_steps": step},
                )
    log.close()
    if rt.distributed:
        torch.distributed.barrier()  # rank 0's checkpoint is the next round's teacher
    if rt.rank == 0:
        images = sample_student(load_model(folder / "model.safetensors", rt.device), student_steps, 100, 3.0)
        save_sample_grid(images, folder / "samples" / f"grid_{student_steps}_steps_w3.png", nrow=10)


def distill(args: argparse.Namespace) -> Path:
    rt = init_runtime(args)
    guard_run_folder(args.out, args.resume)  # --out/state.pt marks a started run
    teacher = load_model(args.teacher, rt.device)
    if not isinstance(teacher.net, UNet):
        raise SystemExit(f"{args.teacher}: only this project's checkpoints can be distilled (into its UNet)")
    if not teacher.config.num_classes:
        raise SystemExit(f"{args.teacher}: an unconditional model has no guidance to distil")
    if teacher.config.guidance_input:
        raise SystemExit(f"{args.teacher} is already a distilled student; distil from its teacher")
    dataset = load_dataset(teacher.dataset, args.data_root, train=True, download=args.download)
    if not args.resume:  # atomic_write makes the folder
        atomic_write(args.out / "state.pt", lambda tmp: torch.save({"rounds": len(rounds(args))}, tmp))
    provenance = {
        "method": "guidance distillation (Meng et al. 2023), then progressive distillation (Salimans & Ho 2022)",
        "teacher": args.teacher.name,
        "teacher_steps": args.teacher_steps,
        "guidance_range": list(args.guidance_range),
    }
    for index, (name, _, total) in enumerate(rounds(args)):
        folder = args.out / name
        state = folder / "state.pt"
        if not (state.is_file() and int(torch.load(state, weights_only=True)["step"]) >= total):  # not done
            run_round(args, rt, index, teacher, dataset, provenance)
        teacher = load_model(folder / "model.safetensors", rt.device)
    final = args.out / "model.safetensors"
    atomic_write(final, lambda tmp: shutil.copyfile(folder / "model.safetensors", tmp))
    rt.close()
    return final


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        path = distill(args)
    except FileNotFoundError as e:  # a missing dataset: one clear line, no traceback
        sys.exit(f"error: {e}")
    print(f"student: {path}")


if __name__ == "__main__":
    main()
