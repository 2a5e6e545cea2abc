"""Fine-tune a distilled student by distribution matching, with no data: `python -m model.dmd --teacher
checkpoints/mnist.safetensors --student checkpoints/mnist-fast.safetensors --out runs/mnist-fast-dmd`.

DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis") without its
GAN term. The generator G is the student (model.distill's: v-prediction, w as an input) run as DDIM on its
own trailing grid. Each iteration takes the x0 that G predicts at one step of its chain, reached by G's own
earlier steps without gradients (DMD2's backward simulation: G learns from the inputs it will meet), and
compares two scores at a random noise level t of that x̂: the teacher's, guided at w (the "real" score),
and a "fake" score of G's outputs, a copy of the teacher trained online by denoising G's samples. Their x0
predictions give the KL gradient, normalised as DMD's eq. 8:
    ∇ = (x0_fake - x0_real) / mean|x̂ - x0_real|,   and G descends ½‖x̂ - sg(x̂ - ∇)‖².
The fake score takes --ttur updates per update of G (DMD2's two time-scale rule), so it follows G.
Both use Adam with β1 = 0, as DMD2 does. The run folder holds config.json, state.pt (resumed with
--resume, bit for bit: it keeps the random state), metrics.jsonl and model.safetensors (G's EMA weights,
with the student's sampler and steps in its metadata, as model.distill writes them).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model.checkpoint import atomic_write, save_checkpoint
from model.cli import HelpFormatter
from model.device import add_device_argument, resolve_device
from model.formats import load_model
from model.samplers import ddim_timesteps, guided_eps
from model.schedule import _at
from model.train import forget_after, guard_run_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m model.dmd",
        description="Fine-tune a distilled student by distribution matching (DMD2 without its GAN term), with no data.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--teacher", type=Path, required=True, help="the guided teacher (the real score)")
    p.add_argument("--student", type=Path, required=True, help="a student of model.distill to start from")
    p.add_argument("--out", type=Path, required=True, help="the run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    p.add_argument("--iters", type=int, default=2000, help="updates of the generator")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--guidance", type=float, nargs=2, default=(3.0, 3.0), metavar=("LOW", "HIGH"),
                   help="the real score's w, drawn uniformly from this range")  # fmt: skip
    p.add_argument("--lr-g", type=float, default=2e-5, help="the generator's Adam learning rate")
    p.add_argument("--lr-fake", type=float, default=1e-4, help="the fake score's Adam learning rate")
    p.add_argument("--ttur", type=int, default=2, help="fake-score updates per generator update")
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--t-range", type=float, nargs=2, default=(0.02, 0.98), metavar=("LOW", "HIGH"),
                   help="where the scores are compared, as shares of T")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=250, help="state.pt and model.safetensors every this many")
    p.add_argument("--snapshot-every", type=int, default=0, help="also keep ema-STEP.safetensors (0: never)")
    return p.parse_args(argv)


class DistributionMatching:
    """The three networks, their optimizers and one iteration of DMD2 (the module docstring)."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.device = args, resolve_device(args.device)
        self.teacher, self.student = load_model(args.teacher, self.device), load_model(args.student, self.device)
        if not self.student.config.guidance_input or self.student.sampling is None:
            raise SystemExit(f"{args.student}: not a student of model.distill (w as an input, its own sampler)")
        self.schedule = self.teacher.schedule
        self.real = self.teacher.unet.eval().requires_grad_(False)  # ε; guided by doubling the rows
        self.fake = copy.deepcopy(self.teacher.unet).train().requires_grad_(True)  # ε of G's outputs
        self.gen = self.student.net.eval().requires_grad_(True)  # no dropout in G; gradients still flow
        self.ema = copy.deepcopy(self.gen).requires_grad_(False)
        self.grid = ddim_timesteps(self.schedule.num_timesteps, self.student.sampling["steps"], "trailing")
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=args.lr_g, betas=(0.0, 0.999))
        self.opt_fake = torch.optim.Adam(self.fake.parameters(), lr=args.lr_fake, betas=(0.0, 0.999))
        config = self.teacher.config
        self.shape = (args.batch_size, config.in_channels, config.image_size, config.image_size)

    def x0(self, net, x, t: int, labels, w):
        """The student's x0 at t, clipped as its sampler clips it."""
        t = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        return self.schedule.x0_from_v(x, t, net(x, t, labels, w)).clamp(-1, 1)

    def generate(self, labels, w):
        """x̂ at a random step of G's chain, from G's own earlier steps (no gradients but at that step)."""
        alphas, grid = self.schedule.alphas_cumprod, self.grid
        i = int(torch.randint(len(grid), ()))
        x = torch.randn(self.shape, device=self.device)
        with torch.no_grad():
            for t, t_next in itertools.pairwise(grid[: i + 1]):
                x0 = self.x0(self.gen, x, t, labels, w)
                eps = (x - _at(alphas, t, x).sqrt() * x0) / (1 - _at(alphas, t, x)).sqrt()
                x = _at(alphas, t_next, x).sqrt() * x0 + (1 - _at(alphas, t_next, x)).sqrt() * eps
        return self.x0(self.gen, x, grid[i], labels, w)

    def step(self) -> dict[str, float]:
        """One update of G, its EMA, then --ttur updates of the fake score (the first on G's x̂)."""
        args, schedule, T = self.args, self.schedule, self.schedule.num_timesteps
        labels = torch.randint(self.teacher.config.num_classes, (args.batch_size,), device=self.device)
        w = torch.empty(args.batch_size, device=self.device).uniform_(*args.guidance)
        x0_hat = self.generate(labels, w)
        t = torch.randint(int(args.t_range[0] * T), int(args.t_range[1] * T), (args.batch_size,), device=self.device)
        x_t = schedule.q_sample(x0_hat, t, torch.randn_like(x0_hat))
        with torch.no_grad():
            x0_real = schedule.predict_x0(x_t, t, guided_eps(self.real, x_t, t, labels, w)).clamp(-1, 1)
            x0_fake = schedule.predict_x0(x_t, t, self.fake(x_t, t, labels)).clamp(-1, 1)
            weight = (x0_hat - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)
            grad = (x0_fake - x0_real) / weight
        loss_g = 0.5 * F.mse_loss(x0_hat, (x0_hat - grad).detach())
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(self.gen.parameters(), 1.0)
        self.opt_g.step()
        with torch.no_grad():
            for averaged, live in zip(self.ema.parameters(), self.gen.parameters(), strict=True):
                averaged.lerp_(live, 1 - args.ema_decay)
        for k in range(args.ttur):
            with torch.no_grad():
                samples = x0_hat.detach() if k == 0 else self.generate(labels, w)
            t = torch.randint(0, T, (args.batch_size,), device=self.device)
            noise = torch.randn_like(samples)
            loss_fake = F.mse_loss(self.fake(schedule.q_sample(samples, t, noise), t, labels), noise)
            self.opt_fake.zero_grad(set_to_none=True)
            loss_fake.backward()
            torch.nn.utils.clip_grad_norm_(self.fake.parameters(), 1.0)
            self.opt_fake.step()
        return {"loss_g": loss_g.item(), "loss_fake": loss_fake.item()}

    NETS = ("gen", "fake", "ema", "opt_g", "opt_fake")

    def save(self, folder: Path, step: int) -> None:
        state = {name: getattr(self, name).state_dict() for name in self.NETS}
        state |= {"step": step, "rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        atomic_write(folder / "state.pt", lambda tmp: torch.save(state, tmp))
        paths = [folder / "model.safetensors"]
        if self.args.snapshot_every and step % self.args.snapshot_every == 0:
            paths.append(folder / f"ema-{step}.safetensors")
        provenance = dict(self.student.distillation or {})
        provenance["method"] = provenance.get("method", "distillation") + ", then distribution matching (DMD2)"
        provenance["dmd"] = {**self.config(), "step": step}
        for path in paths:
            save_checkpoint(path, self.ema, self.schedule, self.teacher.dataset, self.teacher.class_names, step,
                            sampling=self.student.sampling, distillation=provenance)  # fmt: skip

    def load(self, folder: Path) -> int:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)  # each part finds its device
        for name in self.NETS:
            getattr(self, name).load_state_dict(state[name])
        torch.set_rng_state(state["rng"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        return state["step"]

    def config(self) -> dict:
        return json.loads(json.dumps(vars(self.args), default=str))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    guard_run_folder(args.out, args.resume)
    torch.manual_seed(args.seed)
    dmd = DistributionMatching(args)
    step = 0
    if args.resume:
        step = dmd.load(args.out)
        forget_after(args.out / "metrics.jsonl", step)
    atomic_write(args.out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(dmd.config(), indent=2)))
    began = time.perf_counter()
    with open(args.out / "metrics.jsonl", "a") as log:
        while step < args.iters:
            losses = dmd.step()
            step += 1
            if step % args.log_every == 0:
                seconds = round(time.perf_counter() - began, 1)
                print(json.dumps({"step": step, **losses, "s": seconds}), file=log, flush=True)
            if step % args.ckpt_every == 0 or step == args.iters:
                dmd.save(args.out, step)
    print(f"student: {args.out / 'model.safetensors'}")


if __name__ == "__main__":
    main()
