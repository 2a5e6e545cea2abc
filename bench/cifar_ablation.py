"""Which CIFAR-10 model and loss learn most per CPU-hour? Each candidate trains for the same CPU time
(this process's, one thread: other work on the machine does not change it), then is judged by its
held-out x_0 error (the same units whatever the network regresses) and, with --fid, by Inception FID of
N samples (DDIM, w = 1) against N train images. A few hundred steps on a CPU are too few for FID to tell
candidates apart (all still draw noise: FID 475 for the first), while the denoising error orders them.

    python bench/cifar_ablation.py --data-root data/cifar10 --cpu-minutes 8 --only eps v
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from model.checkpoint import Checkpoint, EpsilonFromV
from model.data import load_dataset
from model.evaluate import FIDJudge, RealImages, generate
from model.fid import InceptionFeatures, build_inception, load_inception_weights
from model.schedule import NoiseSchedule
from model.train import TrainState
from model.unet import UNet, UNetConfig

SMALL = dict(base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(8,))
# name: (prediction, Min-SNR γ or None, UNet shape)
CANDIDATES = {
    "eps": ("epsilon", None, SMALL),
    "v": ("v", None, SMALL),
    "eps-minsnr5": ("epsilon", 5.0, SMALL),
    "v-minsnr5": ("v", 5.0, SMALL),
    "v-minsnr5-wide1": (
        "v",
        5.0,
        dict(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,)),
    ),
    "v-minsnr5-narrow3": (
        "v",
        5.0,
        dict(base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=3, attention_resolutions=(8,)),
    ),
    "v-minsnr5-attn16": ("v", 5.0, {**SMALL, "attention_resolutions": (16,)}),
}


def held_out_x0_error(net, schedule, prediction, x0, labels) -> float:
    """Mean squared error of the predicted x_0, clipped to [-1, 1] as the samplers clip it, on test images
    at 10 fixed timesteps and fixed noise: the same units whatever the network regresses."""
    g = torch.Generator().manual_seed(0)
    errors = []
    with torch.inference_mode():
        for t_value in range(50, 1000, 100):
            t = torch.full((len(x0),), t_value)
            noise = torch.randn(x0.shape, generator=g)
            x_t = schedule.q_sample(x0, t, noise)
            out = net(x_t, t, labels)
            pred = schedule.predict_x0(x_t, t, out) if prediction == "epsilon" else schedule.x0_from_v(x_t, t, out)
            errors.append((pred.clamp(-1, 1) - x0).pow(2).mean().item())
    return sum(errors) / len(errors)


def run(name: str, args, dataset, test, judge) -> dict:
    prediction, gamma, shape = CANDIDATES[name]
    torch.manual_seed(0)
    schedule = NoiseSchedule.from_name("linear", 1000)
    net = UNet(UNetConfig(in_channels=3, image_size=32, num_classes=10, dropout=0.0, prediction=prediction, **shape))
    train_args = argparse.Namespace(
        ema_decay=0.999, lr=args.lr, weight_decay=0.0, warmup=200, min_lr_ratio=1.0, grad_clip=1.0
    )
    state = TrainState(net, train_args, total_steps=10**9)
    n, start = len(dataset), time.process_time()
    images, labels = dataset.tensors
    while time.process_time() - start < args.cpu_minutes * 60:
        idx = torch.randint(n, (args.batch_size,))
        x0, y = images[idx], labels[idx].clone()
        flip = torch.rand(len(idx)) < 0.5
        x0[flip] = x0[flip].flip(-1)
        y[torch.rand(len(y)) < 0.1] = 10
        with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
            loss = schedule.loss(net, x0, y, prediction, gamma)
        state.update(loss)
    cpu_s = time.process_time() - start
    net.eval()  # the weights themselves: an EMA over a few hundred steps still holds the first ones
    row = dict(name=name, prediction=prediction, min_snr_gamma=gamma, **shape,
               params=sum(p.numel() for p in net.parameters()), steps=state.step, cpu_minutes=round(cpu_s / 60, 2),
               x0_mse=round(held_out_x0_error(net, schedule, prediction, *test), 5))  # fmt: skip
    if judge is not None:
        unet = EpsilonFromV(net, schedule) if prediction == "v" else net
        ckpt = Checkpoint(unet, schedule, "cifar10", list(dataset.class_names))
        samples = generate(ckpt, "ddim", args.sample_steps, args.n, batch_size=100, progress=False)
        row["fid"] = round(judge.score(samples.images, samples.labels)["fid"], 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("data/cifar10"))
    p.add_argument("--cpu-minutes", type=float, default=8.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast, as the run")
    p.add_argument("--fid", action="store_true", help="also FID (Inception on N samples: minutes on a CPU)")
    p.add_argument("--n", type=int, default=500, help="samples and train images of the FID")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the FID's samples")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="default: every candidate")
    p.add_argument("--inception-weights", type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/cifar-ablation.jsonl"))
    args = p.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("cifar10", args.data_root, train=True)
    test_x, test_y = load_dataset("cifar10", args.data_root, train=False).tensors
    test = (test_x[:500], test_y[:500])
    judge = None
    if args.fid:
        features = InceptionFeatures(build_inception(load_inception_weights(args.inception_weights)))
        real = RealImages("cifar10", args.data_root, 32)
        judge = FIDJudge(features, real, args.n, Path("runs/fid-cache"), progress=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only or CANDIDATES:
        row = run(name, args, dataset, test, judge)
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
