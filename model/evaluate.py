"""Judge a checkpoint by its samples: FID (pytorch-fid) and, for MNIST/Fashion-MNIST, the project's
classifier; one sampler or a sweep of samplers × steps like DDIM's Table 1.

  python -m model.evaluate checkpoints/mnist.safetensors --data-root ../shared/data        # DDPM, T steps, N=50,000
  python -m model.evaluate CKPT --sampler ddim --steps 50 --num-samples 10000 --ref-images 10000
  python -m model.evaluate CKPT --sweep --metrics classifier --num-samples 500             # DDIM's Table 1
  python -m model.evaluate checkpoints/ddpm-cifar10-32 --sampler ddpm --steps 1000 -n 50000 --dataset cifar10

CKPT is a checkpoint file of this project or a diffusers model folder (model.diffusers_models); a
diffusers model samples, unless told otherwise, as its scheduler config says (clipping, spacing, variance).

Samplers: `ddpm` (ancestral, σ²=β; on fewer steps the respaced chain, DDIM's σ̂ row), `ddim` (η from
--eta) or `ddim<η>` (ddim0, ddim1, ddim0.5). Samples come from the checkpoint's EMA weights, are
quantized to uint8 like a saved PNG, and are compared with the un-augmented training images.

Every score is reported with its N and beside its floor: the same score for N real *test* images
(true labels as the conditioning), which is what a perfect model would get with that N.
  fid       FID in Inception pool3 space (2048-d) against M training images (cached as .npz)
  cls_acc   how often a sample conditioned on class k is read as k by the classifier
  cls_fd    the Fréchet distance in the classifier's 128-d feature space, against M training images
  class_tv  total variation between the predicted-class histogram and the training class frequencies
  min_share the rarest predicted class's share × K (1 = every class as common as the uniform share)
The run folder (--out) gets results.md (one DDIM-style table per score, cells "score (s/image)"),
results.csv (one row per sampler and steps, and the floor) and a grid of each cell's first samples.
"""

from __future__ import annotations

import argparse
import csv
import re
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from model.checkpoint import Checkpoint, CheckpointError, atomic_write
from model.classifier import (
    ClassifierCheckpoint,
    ClassifierError,
    classify,
    dataset_tensors,
    default_classifier_path,
    load_classifier,
)
from model.cli import HelpFormatter
from model.data import DATASETS
from model.diffusers_models import DiffusersUNet, load_model
from model.fid import (
    CACHE_DIR,
    FeatureFn,
    InceptionFeatures,
    InceptionWeightsMissing,
    Stats,
    build_inception,
    cached_stats,
    extract_features,
    frechet_distance,
    load_inception_weights,
)
from model.samplers import (
    SPACINGS,
    VARIANCES,
    StepGenerator,
    ddim_steps,
    ddim_timesteps,
    ddpm_steps,
    guided_eps,
    initial_noise,
    make_generator,
    sample,
)
from model.visualize import save_sample_grid

SWEEP_SAMPLERS = ("ddpm", "ddim0", "ddim1")
SWEEP_STEPS = (10, 20, 50, 100, 1000)
# each score's title (with the direction that is better) and how it is written
FORMATS = {
    "fid": ("FID ↓", "{:.2f}"),
    "cls_acc": ("classifier accuracy of class-conditional samples ↑", "{:.2%}"),
    "cls_fd": ("Fréchet distance in the classifier's feature space ↓", "{:.3f}"),
    "class_tv": ("class histogram: total variation from the training frequencies ↓", "{:.3f}"),
    "min_share": ("rarest class share × K ↑", "{:.2f}"),
}


# --- samplers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSpec:
    kind: str  # "ddpm" or "ddim"
    eta: float = 0.0

    @property
    def label(self) -> str:
        return "DDPM" if self.kind == "ddpm" else f"DDIM η={self.eta:g}"

    @property
    def key(self) -> str:
        return "ddpm" if self.kind == "ddpm" else f"ddim{self.eta:g}"


def parse_sampler(text: str, eta: float = 0.0) -> SamplerSpec:
    """ "ddpm", "ddim" (η = `eta`) or "ddim<η>" such as ddim0, ddim1, ddim0.5."""
    match = re.fullmatch(r"(ddpm|ddim)([0-9.]*)", text.lower())
    if not match or (match[1] == "ddpm" and match[2]):
        raise ValueError(f"unknown sampler {text!r}: use ddpm, ddim, or ddim<η> such as ddim0 or ddim1")
    spec = SamplerSpec(match[1], float(match[2]) if match[2] else eta if match[1] == "ddim" else 0.0)
    if not 0 <= spec.eta <= 1:
        raise ValueError(f"sampler {text!r}: η must be in [0, 1]")
    return spec


def sampling_run(
    ckpt: Checkpoint,
    spec: SamplerSpec,
    steps: int,
    x: torch.Tensor,
    generator: torch.Generator,
    spacing: str = "leading",
    variance: str = "fixed_large",
    clip_x0: bool = False,
) -> StepGenerator:
    """The step generator of one sampler over `steps` steps, starting from the noise x."""
    if spec.kind == "ddpm":
        return ddpm_steps(ckpt.schedule, x, steps, variance, generator, clip_x0)
    timesteps = ddim_timesteps(ckpt.schedule.num_timesteps, steps, spacing, ckpt.schedule.sampling.steps_offset)
    return ddim_steps(ckpt.schedule, x, timesteps, spec.eta, generator, clip_x0)


# --- samples -----------------------------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → uint8 [0, 255], rounded as save_image rounds: what a PNG of the image holds."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass
class Samples:
    images: torch.Tensor  # uint8 (N, C, H, W), on the CPU
    labels: torch.Tensor | None  # the class each sample was conditioned on, None if unconditional
    seconds: float  # wall-clock time of sampling alone


@torch.inference_mode()
def generate(
    ckpt: Checkpoint,
    spec: SamplerSpec,
    steps: int,
    num_samples: int,
    batch_size: int = 250,
    conditional: bool = True,
    guidance: float = 1.0,
    seed: int = 0,
    spacing: str = "leading",
    variance: str = "fixed_large",
    clip_x0: bool = False,
    progress: bool = True,
) -> Samples:
    """N samples in batches, on the checkpoint's device. Conditional samples cycle through the classes
    (sample i is conditioned on i mod K), so every class gets the same share."""
    device = ckpt.schedule.device
    cfg = ckpt.config
    conditional = conditional and cfg.num_classes > 0
    generator = make_generator(seed, device)
    images, labels, seconds = [], [], 0.0
    bar = tqdm(total=num_samples, desc=f"{spec.label}, {steps} steps", disable=not progress, dynamic_ncols=True)
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        y = torch.arange(start, start + b, device=device) % cfg.num_classes if conditional else None
        tick = time.perf_counter()
        x = initial_noise((b, cfg.in_channels, cfg.image_size, cfg.image_size), generator, device)
        run = sampling_run(ckpt, spec, steps, x, generator, spacing, variance, clip_x0)
        x0 = sample(run, lambda x_t, t, y=y: guided_eps(ckpt.unet, x_t, t, y, guidance))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - tick
        images.append(to_uint8(x0).cpu())
        if y is not None:
            labels.append(y.cpu())
        bar.update(b)
    bar.close()
    return Samples(torch.cat(images), torch.cat(labels) if labels else None, seconds)


class RealImages:
    """A dataset's un-augmented train and test images as uint8, each split in one fixed shuffled
    order, so that the first n of a split are a random subset that is the same in every run."""

    def __init__(self, dataset: str, root: str | Path, image_size: int):
        self.dataset, self.root, self.image_size = dataset, Path(root), image_size
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def size(self, split: str) -> int:
        return len(self._load(split)[0])

    def get(self, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self._load(split)
        return images[:n], labels[:n]

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._splits:
            x, y = dataset_tensors(self.dataset, self.root, split == "train", self.image_size)
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
            self._splits[split] = to_uint8(x[order]), y[order]
        return self._splits[split]


# --- judges: each scores a set of images and, the same way, N real test images -------------------


class FIDJudge:
    """FID against the first M training images; the floor is N test images against the same M."""

    title = "FID"

    def __init__(
        self,
        features: FeatureFn,
        real: RealImages,
        ref_images: int | None,
        cache_dir: Path | None,
        batch_size: int = 100,
        progress: bool = True,
    ):
        self.features, self.real, self.cache_dir, self.batch_size = features, real, cache_dir, batch_size
        self.progress = progress
        self.m = min(ref_images or real.size("train"), real.size("train"))
        self.train = self._stats("train", self.m)

    def _stats(self, split: str, n: int) -> Stats:
        key = f"{self.real.dataset}-{split}-{self.real.image_size}px-{n}-{getattr(self.features, 'name', 'features')}"
        images = lambda: self.real.get(split, n)[0]  # noqa: E731 (read only on a cache miss)
        return cached_stats(key, images, self.features, self.cache_dir, self.batch_size, self.progress)

    def score(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        desc = "FID features" if self.progress else None
        feats = extract_features(images, self.features, self.batch_size, desc)
        return {"fid": frechet_distance(Stats.of(feats), self.train)}

    def floor(self, n: int, conditional: bool) -> dict[str, float]:
        return {"fid": frechet_distance(self._stats("test", n), self.train)}


class ClassifierJudge:
    """The project classifier's reading of the samples: accuracy given the conditioning, the class
    histogram, and the Fréchet distance of its features to those of M training images."""

    title = "classifier"

    def __init__(self, classifier: ClassifierCheckpoint, real: RealImages, ref_images: int | None):
        self.classifier, self.real = classifier, real
        self.m = min(ref_images or real.size("train"), real.size("train"))
        _, feats = classify(classifier.model, real.get("train", self.m)[0])
        self.train = Stats.of(feats)
        k = len(classifier.class_names)
        self.train_freq = torch.bincount(real.get("train")[1], minlength=k).double() / real.size("train")

    def score(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        preds, feats = classify(self.classifier.model, images)
        shares = torch.bincount(preds, minlength=len(self.train_freq)).double() / len(preds)
        out = {
            "cls_fd": frechet_distance(Stats.of(feats), self.train),
            "class_tv": 0.5 * (shares - self.train_freq).abs().sum().item(),
            "min_share": shares.min().item() * len(shares),
        }
        if labels is not None:
            out["cls_acc"] = (preds == labels).double().mean().item()
        out.update({f"share_{k}": s for k, s in enumerate(shares.tolist())})
        return out

    def floor(self, n: int, conditional: bool) -> dict[str, float]:
        images, labels = self.real.get("test", n)
        return self.score(images, labels if conditional else None)


def classifier_judge(ckpt: Checkpoint, real: RealImages, args: argparse.Namespace, device: torch.device):
    classifier = load_classifier(args.classifier or default_classifier_path(ckpt.dataset), device)
    cfg, ccfg = ckpt.config, classifier.model.config
    if classifier.dataset != ckpt.dataset or (ccfg.in_channels, ccfg.image_size) != (cfg.in_channels, cfg.image_size):
        raise ClassifierError(
            f"{classifier.path}: a {classifier.dataset} classifier of {ccfg.image_size}px images cannot judge "
            f"a {ckpt.dataset} model of {cfg.image_size}px images"
        )
    return ClassifierJudge(classifier, real, args.ref_images)


# --- tables ------------------------------------------------------------------------------------


def scalar_metrics(rows: list[dict]) -> list[str]:
    return [m for m in FORMATS if any(m in r for r in rows)]


def markdown_report(rows: list[dict], floor: dict, header: list[str], class_names: list[str]) -> str:
    """One DDIM-style table per score (rows = sampler, columns = steps, cells = score (s/image)),
    each with its real-data floor, then the per-class shares of every cell."""
    lines = [*header, ""]
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    cells = {(r["sampler"], r["steps"]): r for r in rows}
    for metric in scalar_metrics(rows):
        title, fmt = FORMATS[metric]
        lines += [f"### {title} (`{metric}`)", ""]
        lines.append("| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |")
        lines.append("|---|" + "---:|" * len(steps))
        for name in samplers:
            values = []
            for s in steps:
                r = cells.get((name, s))
                values.append(f"{fmt.format(r[metric])} ({r['seconds_per_image']:.3g} s)" if r and metric in r else "")
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        if metric in floor:
            lines.append(
                f"\nReal-data floor ({floor['n']} test images, scored the same way): {fmt.format(floor[metric])}"
            )
        lines.append("")
    if class_names and any("share_0" in r for r in rows):
        lines += ["### Share of samples the classifier reads as each class", ""]
        lines.append("| | " + " | ".join(class_names) + " |")
        lines.append("|---|" + "---:|" * len(class_names))
        for r in [*rows, floor]:
            name = f"{r['sampler']}, {r['steps']} steps" if "steps" in r else f"real test images (N={r['n']})"
            lines.append(f"| {name} | " + " | ".join(f"{r[f'share_{k}']:.1%}" for k in range(len(class_names))) + " |")
        lines.append("")
    return "\n".join(lines)


def write_reports(out: Path, rows: list[dict], floor: dict, header: list[str], class_names: list[str]) -> None:
    atomic_write(
        out / "results.md", lambda tmp: Path(tmp).write_text(markdown_report(rows, floor, header, class_names))
    )
    all_rows = [*rows, {"sampler": "real test images", **floor}]
    fields = list(dict.fromkeys(k for r in all_rows for k in r))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(all_rows)

    atomic_write(out / "results.csv", write_csv)


def summary_line(row: dict, floor: dict) -> str:
    parts = [f"{row['sampler']}, {row['steps']} steps, N={row['n']}:"]
    for metric in scalar_metrics([row]):
        _, fmt = FORMATS[metric]
        parts.append(f"{metric} {fmt.format(row[metric])} (floor {fmt.format(floor[metric])})")
    parts.append(f"{row['seconds_per_image']:.3g} s/image")
    return "  ".join(parts)


# --- the command -------------------------------------------------------------------------------


def best_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="FID and classifier scores of a checkpoint's samples, for one sampler or a sweep.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", type=Path)
    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", nargs="+", help="ddpm, ddim, ddim<η> such as ddim0, ddim1 (default: ddpm)")
    g.add_argument("--steps", type=int, nargs="+", help="sampling steps (default: all T of the schedule)")
    g.add_argument(
        "--sweep",
        action="store_true",
        help=f"DDIM's Table 1: samplers {' '.join(SWEEP_SAMPLERS)} × steps {' '.join(map(str, SWEEP_STEPS))} "
        "(unless --sampler/--steps are given)",
    )
    g.add_argument("--eta", type=float, default=0.0, help="η of the plain `ddim` sampler")
    g.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance w (1: plain conditional)")
    g.add_argument(
        "--conditioning",
        choices=["class", "none"],
        help="class: sample i conditioned on i mod K; none: the null label (default: class if the model has classes)",
    )
    g.add_argument("--spacing", choices=SPACINGS, help="DDIM timestep spacing (default: the model's, else leading)")
    g.add_argument("--variance", choices=VARIANCES, help="DDPM's σ²: β or β̃ (default: the model's, else fixed_large)")
    g.add_argument(
        "--clip-x0",
        action=argparse.BooleanOptionalAction,
        help="clip the predicted x0 to [-1, 1] at each step (default: as the model's scheduler says, else not)",
    )
    g.add_argument("-n", "--num-samples", type=int, default=50_000, help="samples per cell (the papers use 50,000)")
    g.add_argument("--batch-size", type=int, default=250)
    g.add_argument("--seed", type=int, default=0, help="every cell starts from the same noise")
    g = p.add_argument_group("scores")
    g.add_argument(
        "--metrics",
        nargs="+",
        choices=["fid", "classifier"],
        help="default: fid, and classifier where checkpoints/classifiers/ has one for the dataset",
    )
    g.add_argument("--data-root", type=Path, default=Path("data"), help="where the dataset's files are")
    g.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help="the model's training data, for the reference images (default: the checkpoint's)",
    )
    g.add_argument("--ref-images", type=int, help="training images the samples are compared with (default: all)")
    g.add_argument("--classifier", type=Path, help="default: checkpoints/classifiers/<dataset>.safetensors")
    g.add_argument(
        "--inception-weights", type=Path, help="pt_inception-2015-12-05-6726825d.pth (or $FID_INCEPTION_WEIGHTS)"
    )
    g.add_argument("--fid-cache", type=Path, default=CACHE_DIR, help="where reference statistics are kept (.npz)")
    g.add_argument("--fid-batch-size", type=int, default=100, help="images per Inception forward")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, help="results folder (default: runs/eval/<checkpoint name>)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device")
    g.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    g.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.command = shlex.join(sys.argv[1:] if argv is None else argv)  # for the report
    args.sampler = args.sampler or list(SWEEP_SAMPLERS if args.sweep else ["ddpm"])
    args.steps = args.steps or (list(SWEEP_STEPS) if args.sweep else None)
    return args


def report_header(
    args: argparse.Namespace, ckpt: Checkpoint, judges: list, conditional: bool, n_floor: int, device: torch.device
) -> list[str]:
    """What a number depends on: the model, how it was sampled, what it was compared with, the command."""
    sampling = (
        f"class-conditional (sample i ↦ class i mod K), guidance w={args.guidance:g}"
        if conditional
        else "unconditional"
    )
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    return [
        f"# Evaluation of `{args.checkpoint}`",
        "",
        f"- model: {ckpt.dataset}, {ckpt.config.image_size}px, "
        + (
            f"{ckpt.unet.description}, "
            if isinstance(ckpt.unet, DiffusersUNet)
            else f"trained {ckpt.step} steps, {'EMA' if ckpt.ema else 'raw (not EMA!)'} weights, "
        )
        + f"{ckpt.schedule.name} schedule, T={ckpt.schedule.num_timesteps}",
        f"- samples: N={args.num_samples} per cell, {sampling}; seed {args.seed}; DDIM spacing {args.spacing}; "
        f"DDPM variance {args.variance}; clip x0: {args.clip_x0}",
        f"- reference: {', '.join(f'{j.title} against M={j.m} training images' for j in judges)}; "
        f"floor: N={n_floor} real test images",
        f"- seconds per image: sampling alone, batch {args.batch_size}, on {device} ({hardware})",
        f"- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: `python -m model.evaluate {args.command}`",
    ]


def evaluate(args: argparse.Namespace, fid_features: FeatureFn | None = None) -> tuple[list[dict], dict]:
    """Sample and score every (sampler, steps) cell; write the reports after each; return (rows, floor).

    `fid_features` replaces the Inception network (tests measure the plumbing with a small one)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = best_device(args.device)
    specs = [parse_sampler(s, args.eta) for s in args.sampler]
    ckpt = load_model(args.checkpoint, device)
    ckpt.dataset = args.dataset or ckpt.dataset
    own = ckpt.schedule.sampling  # how the model's own scheduler samples, where it says
    args.spacing = args.spacing or own.spacing
    args.variance = args.variance or own.variance
    args.clip_x0 = bool(own.clip) if args.clip_x0 is None else args.clip_x0
    steps_list = args.steps or [ckpt.schedule.num_timesteps]
    conditional = (args.conditioning or "class") == "class" and ckpt.config.num_classes > 0
    if args.conditioning == "class" and not ckpt.config.num_classes:
        raise ValueError(f"{args.checkpoint} is unconditional: use --conditioning none")
    if ckpt.config.num_classes and ckpt.unet.null_label is None and (args.conditioning == "none" or args.guidance != 1):
        raise ValueError(f"{args.checkpoint} has no unconditional class: sample it with labels and --guidance 1")
    out = args.out or Path("runs/eval") / args.checkpoint.stem
    has_classifier = bool(DATASETS.get(ckpt.dataset, DATASETS["folder"]).class_names)
    metrics = args.metrics or ["fid"] + (
        ["classifier"] if (args.classifier or default_classifier_path(ckpt.dataset)).is_file() else []
    )
    if "classifier" in metrics and not has_classifier:
        raise ValueError(f"{ckpt.dataset} has no labels: the classifier scores need MNIST or Fashion-MNIST")

    real = RealImages(ckpt.dataset, args.data_root, ckpt.config.image_size)
    judges = []
    if "fid" in metrics:
        if fid_features is None:
            fid_features = InceptionFeatures(build_inception(load_inception_weights(args.inception_weights)), device)
        cache = args.fid_cache if isinstance(fid_features, InceptionFeatures) else None
        judges.append(FIDJudge(fid_features, real, args.ref_images, cache, args.fid_batch_size, not args.no_progress))
    if "classifier" in metrics:
        judges.append(classifier_judge(ckpt, real, args, device))
    n_floor = min(args.num_samples, real.size("test"))
    floor = {"n": n_floor}
    for judge in judges:
        floor.update(judge.floor(n_floor, conditional))

    header = report_header(args, ckpt, judges, conditional, n_floor, device)
    if not ckpt.ema:
        print(
            f"warning: {args.checkpoint} holds raw weights, not EMA ones; the papers sample from the EMA",
            file=sys.stderr,
        )
    print("\n".join(header[2:]))
    rows = []
    for spec in specs:
        for steps in steps_list:
            samples = generate(
                ckpt, spec, steps, args.num_samples, args.batch_size, conditional=conditional, guidance=args.guidance,
                seed=args.seed, spacing=args.spacing, variance=args.variance, clip_x0=args.clip_x0,
                progress=not args.no_progress,
            )  # fmt: skip
            save_sample_grid(
                samples.images[:100].float() / 127.5 - 1,
                out / f"samples_{spec.key}_{steps}.png",
                nrow=10 if conditional else None,
            )
            row = {
                "sampler": spec.label,
                "eta": spec.eta if spec.kind == "ddim" else "",
                "steps": steps,
                "n": args.num_samples,
                "seconds_per_image": samples.seconds / args.num_samples,
            }
            for judge in judges:
                row.update(judge.score(samples.images, samples.labels))
            rows.append(row)
            print(summary_line(row, floor), flush=True)
            write_reports(out, rows, floor, header, DATASETS[ckpt.dataset].class_names if has_classifier else [])
    print(f"\n{markdown_report(rows, floor, [], [])}\nwritten: {out / 'results.md'}, {out / 'results.csv'}")
    return rows, floor


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        evaluate(args)
    except InceptionWeightsMissing as e:
        sys.exit(f"error: {e} (Or score with the classifier alone: --metrics classifier.)")
    except (FileNotFoundError, CheckpointError, ClassifierError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
