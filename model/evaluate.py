"""Judge a checkpoint by its samples: FID (pytorch-fid) and, for MNIST/Fashion-MNIST, the project's
classifier; one sampler or a sweep of samplers × steps like DDIM's Table 1 or the solvers' NFE curves.

  python -m model.evaluate checkpoints/mnist.safetensors --data-root ../shared/data        # DDPM, T steps, N=50,000
  python -m model.evaluate CKPT --sampler ddim --steps 50 --num-samples 10000 --ref-images 10000
  python -m model.evaluate CKPT --sweep --metrics classifier --num-samples 500             # DDIM's Table 1
  python -m model.evaluate CKPT --sampler-sweep --guidance 1 3 --metrics classifier -n 2000  # quality against NFE
  python -m model.evaluate checkpoints/ddpm-cifar10-32 --sampler ddpm --steps 1000 -n 50000 --dataset cifar10

CKPT is a checkpoint file of this project or a diffusers model folder (model.diffusers_models); a
diffusers model samples, unless told otherwise, as its scheduler config says (clipping, spacing, variance).

Samplers are the names of the sampler table (model.samplers.SAMPLERS: ddpm, ddim, dpm-solver++, unipc,
…), each optionally with parameters of its own, `ddim:eta=1` or `unipc:order=3,spacing=karras`; flags
such as --eta or --thresholding set a parameter for every chosen sampler that takes it. Samples come from
the checkpoint's EMA weights, are quantized to uint8 like a saved PNG, and are compared with the
un-augmented training images.

Every score is reported with its N and beside its floor: the same score for N real *test* images
(true labels as the conditioning), which is what a perfect model would get with that N.
  fid       FID in Inception pool3 space (2048-d) against M training images (cached as .npz)
  cls_acc   how often a sample conditioned on class k is read as k by the classifier
  cls_fd    the Fréchet distance in the classifier's 128-d feature space, against M training images
            (with cls_fd_se, its bootstrap standard error over the N samples)
  class_tv  total variation between the predicted-class histogram and the training class frequencies
  min_share the rarest predicted class's share × K (1 = every class as common as the uniform share)
The run folder (--out) gets results.md (one DDIM-style table per score, cells "score (s/image)"),
results.csv (one row per sampler and steps, and the floor) and a grid of each cell's first samples.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
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
from model.cli import HelpFormatter, add_sampler_arguments, sampler_params, unused_sampler_flags
from model.data import DATASETS
from model.device import add_device_argument, resolve_device, synchronize
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
from model.formats import load_model
from model.samplers import (
    SAMPLERS,
    Sampler,
    get_sampler,
    guided_eps,
    initial_noise,
    make_generator,
    sample,
    sampling_run,
)
from model.visualize import save_sample_grid

SWEEP_SAMPLERS = ("ddpm", "ddim:eta=0", "ddim:eta=1")
SWEEP_STEPS = (10, 20, 50, 100, 1000)
SOLVER_SWEEP_SAMPLERS = ("ddim", "dpm-solver++", "unipc")
SOLVER_SWEEP_NFE = (4, 6, 8, 10, 15, 20, 50)
BOOTSTRAP_DRAWS = 20
# each score's title (with the direction that is better) and how it is written
FORMATS = {
    "fid": ("FID ↓", "{:.2f}"),
    "cls_acc": ("classifier accuracy of class-conditional samples ↑", "{:.2%}"),
    "cls_fd": ("Fréchet distance in the classifier's feature space ↓", "{:.3f}"),
    "class_tv": ("class histogram: total variation from the training frequencies ↓", "{:.3f}"),
    "min_share": ("rarest class share × K ↑", "{:.2f}"),
    "spread": ("variety: mean distance between the classifier's features of two samples of a class ↑", "{:.3f}"),
}


@dataclass(frozen=True)
class SamplerChoice:
    """A sampler of the table with the parameters chosen for it; the others keep their defaults."""

    name: str
    given: tuple[tuple[str, object], ...] = ()

    @property
    def sampler(self) -> Sampler:
        return get_sampler(self.name)

    @property
    def params(self) -> dict:
        return self.sampler.resolve(dict(self.given))

    @property
    def label(self) -> str:
        return " ".join(
            [self.sampler.title, *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.given)]
        )

    @property
    def key(self) -> str:
        return "_".join([self.name, *(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in self.given)])


def parse_sampler(text: str, args: argparse.Namespace | None = None) -> SamplerChoice:
    """`name` or `name:param=value,param=value` (ddim:eta=1); parameters also come from the flags in
    `args` that this sampler takes, which the ones written here override."""
    name, _, inline = text.partition(":")
    sampler = get_sampler(name.lower())
    given = sampler_params(args, sampler) if args is not None else {}
    for item in filter(None, inline.split(",")):
        key, equals, value = item.partition("=")
        param = sampler.param(key.strip())
        if not equals or param is None:
            takes = ", ".join(p.name for p in sampler.params) or "none"
            raise ValueError(f"sampler {text!r}: write name:param=value with a parameter of {sampler.name} ({takes})")
        given[param.name] = param.parse(value.strip())
    return SamplerChoice(sampler.name, tuple(given.items()))


def parse_samplers(args: argparse.Namespace) -> list[SamplerChoice]:
    samplers = [parse_sampler(s, args) for s in args.sampler]
    if unused := unused_sampler_flags(args, [choice.sampler for choice in samplers]):
        raise ValueError(f"{', '.join(unused)}: none of the samplers {', '.join(args.sampler)} takes it")
    return samplers


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
    sampler: SamplerChoice | str,
    steps: int,
    num_samples: int,
    batch_size: int = 250,
    conditional: bool = True,
    guidance: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> Samples:
    """N samples in batches, on the checkpoint's device, by a sampler of the table (a name: at its
    default parameters). Conditional samples cycle through the classes (sample i is conditioned on i
    mod K), so every class gets the same share."""
    sampler = SamplerChoice(sampler) if isinstance(sampler, str) else sampler
    device = ckpt.schedule.device
    cfg = ckpt.config
    conditional = conditional and cfg.num_classes > 0
    generator = make_generator(seed, device)
    # the table's defaults, then the model's own (its files'), then those chosen here
    params = {**ckpt.sampler_defaults().get(sampler.name, {}), **dict(sampler.given)}
    images, seconds = [], 0.0
    bar = tqdm(total=num_samples, desc=f"{sampler.label}, {steps} steps", disable=not progress, dynamic_ncols=True)
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        y = torch.arange(start, start + b, device=device) % cfg.num_classes if conditional else None
        tick = time.perf_counter()
        x = initial_noise((b, cfg.in_channels, cfg.image_size, cfg.image_size), generator, device)
        run = sampling_run(sampler.name, ckpt.schedule, x, steps, generator, **params)
        x0 = sample(run, lambda x_t, t, y=y: guided_eps(ckpt.unet, x_t, t, y, guidance))
        synchronize(device)
        seconds += time.perf_counter() - tick
        images.append(to_uint8(x0).cpu())
        bar.update(b)
    bar.close()
    labels = torch.arange(num_samples) % cfg.num_classes if conditional else None  # as y, batch by batch
    return Samples(torch.cat(images), labels, seconds)


class RealImages:
    """A dataset's un-augmented train and test images as uint8, each split in one fixed shuffled
    order, so that the first n of a split are a random subset that is the same in every run."""

    def __init__(self, dataset: str, root: str | Path, image_size: int):
        self.dataset, self.root, self.image_size = dataset, Path(root), image_size
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._splits:
            x, y = dataset_tensors(self.dataset, self.root, split == "train", self.image_size)
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
            self._splits[split] = to_uint8(x[order]), y[order]
        images, labels = self._splits[split]
        return images[:n], labels[:n]


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
        self.m = len(real.get("train", ref_images or None)[0])
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
        reference, labels = real.get("train", ref_images or None)[0], real.get("train")[1]
        self.m = len(reference)
        self.train = Stats.of(classify(classifier.model, reference)[1])
        self.train_freq = torch.bincount(labels, minlength=len(classifier.class_names)).double() / len(labels)

    def score(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        preds, feats = classify(self.classifier.model, images)
        shares = torch.bincount(preds, minlength=len(self.train_freq)).double() / len(preds)
        out = {
            "cls_fd": frechet_distance(Stats.of(feats), self.train),
            "cls_fd_se": self._bootstrap_se(feats.numpy()),
            "class_tv": 0.5 * (shares - self.train_freq).abs().sum().item(),
            "min_share": shares.min().item() * len(shares),
        }
        if (spread := within_class_spread(feats, preds if labels is None else labels)) is not None:
            out["spread"] = spread
        if labels is not None:
            accuracy = (preds == labels).double().mean().item()
            out["cls_acc"], out["cls_acc_se"] = accuracy, (accuracy * (1 - accuracy) / len(preds)) ** 0.5
        out.update({f"share_{k}": s for k, s in enumerate(shares.tolist())})
        return out

    def floor(self, n: int, conditional: bool) -> dict[str, float]:
        images, labels = self.real.get("test", n)
        return self.score(images, labels if conditional else None)

    def _bootstrap_se(self, feats: np.ndarray) -> float:
        """The spread of the Fréchet distance over resamples (with replacement) of the N samples: how much
        of a difference between two cells the sampling of N images alone would make."""
        rng = np.random.default_rng(0)
        draws = [frechet_distance(Stats.of(feats[rng.integers(0, len(feats), len(feats))]), self.train)
                 for _ in range(BOOTSTRAP_DRAWS)]  # fmt: skip
        return float(np.std(draws, ddof=1))


def within_class_spread(feats: torch.Tensor, classes: torch.Tensor) -> float | None:
    """Mean pairwise distance of the features within each class, averaged over the classes: how much the
    samples of one class differ (a model that draws one image a class scores 0; compare with real images);
    None where no class has two samples."""
    spreads = [torch.pdist(feats[classes == c].double()).mean() for c in classes.unique() if (classes == c).sum() > 1]
    return torch.stack(spreads).mean().item() if spreads else None


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
                values.append(f"{_value(r, metric, fmt)} ({r['seconds_per_image']:.3g} s)" if r and metric in r else "")
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


def _value(row: dict, metric: str, fmt: str) -> str:
    se = row.get(f"{metric}_se")
    return fmt.format(row[metric]) + (f" ± {fmt.format(se)}" if se is not None else "")


def _number(text: str):
    for kind in (int, float):
        with suppress(ValueError):
            return kind(text)
    return text


def write_reports(out: Path, rows: list[dict], floor: dict, header: list[str], class_names: list[str]) -> None:
    report = markdown_report(rows, floor, header, class_names)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(report))
    all_rows = [*rows, {"sampler": "real test images", **floor}]
    table = io.StringIO()
    writer = csv.DictWriter(table, list(dict.fromkeys(k for r in all_rows for k in r)))
    writer.writeheader()
    writer.writerows(all_rows)
    atomic_write(out / "results.csv", lambda tmp: Path(tmp).write_text(table.getvalue(), newline=""))


def summary_line(row: dict, floor: dict) -> str:
    parts = [f"{row['sampler']}, {row['steps']} steps, N={row['n']}:"]
    for metric in scalar_metrics([row]):
        _, fmt = FORMATS[metric]
        parts.append(f"{metric} {_value(row, metric, fmt)} (floor {fmt.format(floor[metric])})")
    parts.append(f"{row['seconds_per_image']:.3g} s/image")
    return "  ".join(parts)


# --- the command -------------------------------------------------------------------------------


def add_sampling_arguments(g: argparse._ArgumentGroup) -> None:
    """The cells to sample (samplers × steps or NFE, the sweeps, guidance weights) and how (N, batch, seed)."""
    g.add_argument(
        "--sampler",
        nargs="+",
        help=f"one or more of {', '.join(SAMPLERS)}, each optionally with parameters: ddim:eta=1 (default: ddpm)",
    )
    g.add_argument("--steps", type=int, nargs="+", help="sampling steps (default: each sampler's own)")
    g.add_argument("--nfe", type=int, nargs="+", help="model evaluations a run, instead of --steps")
    g.add_argument(
        "--sweep",
        action="store_true",
        help=f"DDIM's Table 1: samplers {' '.join(SWEEP_SAMPLERS)} × steps {' '.join(map(str, SWEEP_STEPS))} "
        "(unless --sampler/--steps are given)",
    )
    g.add_argument(
        "--sampler-sweep",
        action="store_true",
        help=f"quality against model evaluations: samplers {' '.join(SOLVER_SWEEP_SAMPLERS)} × NFE "
        f"{' '.join(map(str, SOLVER_SWEEP_NFE))} (unless --sampler/--nfe are given)",
    )
    g.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[1.0],
        help="classifier-free guidance w (1: plain conditional); several: every cell at each",
    )
    g.add_argument(
        "--conditioning",
        choices=["class", "none"],
        help="class: sample i conditioned on i mod K; none: the null label (default: class if the model has classes)",
    )
    g.add_argument("-n", "--num-samples", type=int, default=50_000, help="samples per cell (the papers use 50,000)")
    g.add_argument("--batch-size", type=int, default=250)
    g.add_argument("--seed", type=int, default=0, help="every cell starts from the same noise")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="FID and classifier scores of a checkpoint's samples, for one sampler or a sweep.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", type=Path)
    add_sampling_arguments(p.add_argument_group("sampling"))
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
    add_device_argument(g)
    g.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument(
        "--resume",
        action="store_true",
        help="keep the cells already in --out's results.csv and sample only the others (a sweep in several sittings)",
    )
    add_sampler_arguments(p)
    args = p.parse_args(argv)
    args.command = shlex.join(sys.argv[1:] if argv is None else argv)  # for the report
    if args.steps and args.nfe:
        p.error("give --steps or --nfe, not both")
    default_samplers = SWEEP_SAMPLERS if args.sweep else SOLVER_SWEEP_SAMPLERS if args.sampler_sweep else ["ddpm"]
    args.sampler = args.sampler or list(default_samplers)
    args.steps = args.steps or (list(SWEEP_STEPS) if args.sweep and not args.nfe else None)
    args.nfe = args.nfe or (list(SOLVER_SWEEP_NFE) if args.sampler_sweep and not args.steps else None)
    return args


def sweep_cells(
    args: argparse.Namespace, samplers: list[SamplerChoice], num_timesteps: int
) -> list[tuple[SamplerChoice, int]]:
    """(sampler, steps) of every cell: the steps asked for, or the steps that cost the NFE asked for,
    or each sampler's default."""
    out = []
    for choice in samplers:
        if args.nfe:
            steps_list = [nfe // choice.sampler.evals_per_step for nfe in args.nfe]
        else:
            steps_list = args.steps or [choice.sampler.steps_for(num_timesteps)]
        out += [(choice, steps) for steps in steps_list]
    return out


def report_header(
    args: argparse.Namespace, ckpt: Checkpoint, judges: list, conditional: bool, n_floor: int, device: torch.device
) -> list[str]:
    """What a number depends on: the model, how it was sampled, what it was compared with, the command."""
    sampling = (
        f"class-conditional (sample i ↦ class i mod K), guidance w={', '.join(f'{w:g}' for w in args.guidance)}"
        if conditional
        else "unconditional"
    )
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    return [
        f"# Evaluation of `{args.checkpoint}`",
        "",
        f"- model: {ckpt.dataset}, {ckpt.config.image_size}px, {ckpt.weights}, "
        f"{ckpt.schedule.name} schedule, T={ckpt.schedule.num_timesteps}",
        f"- samples: N={args.num_samples} per cell, {sampling}; seed {args.seed}; each sampler at its "
        "default parameters (the model's own where its files state them) unless its name says otherwise "
        "(model/samplers.py: SAMPLERS)",
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
    device = resolve_device(args.device)
    samplers = parse_samplers(args)
    ckpt = load_model(args.checkpoint, device)
    ckpt.dataset = args.dataset or ckpt.dataset
    conditional = conditioning(args, ckpt)
    out = args.out or Path("runs/eval") / args.checkpoint.stem
    class_names = list(DATASETS.get(ckpt.dataset, DATASETS["folder"]).class_names)
    real = RealImages(ckpt.dataset, args.data_root, ckpt.config.image_size)
    judges = make_judges(args, ckpt, real, device, fid_features)
    floor = {"n": len(real.get("test", args.num_samples)[0])}
    for judge in judges:
        floor.update(judge.floor(floor["n"], conditional))
    header = report_header(args, ckpt, judges, conditional, floor["n"], device)
    if not ckpt.ema:
        print(
            f"warning: {args.checkpoint} holds raw weights, not EMA ones; the papers sample from the EMA",
            file=sys.stderr,
        )
    print("\n".join(header[2:]))
    rows = resumed_rows(args, out)
    done = {(r["sampler"], r["steps"]) for r in rows}
    several_w = conditional and len(args.guidance) > 1
    for guidance in args.guidance if conditional else [1.0]:
        for choice, steps in sweep_cells(args, samplers, ckpt.schedule.num_timesteps):
            label = choice.label + (f", w={guidance:g}" if several_w else "")
            if (label, steps) in done:
                continue
            samples = generate(
                ckpt, choice, steps, args.num_samples, args.batch_size, conditional=conditional, guidance=guidance,
                seed=args.seed, progress=not args.no_progress,
            )  # fmt: skip
            save_sample_grid(
                samples.images[:100].float() / 127.5 - 1,
                out / f"samples_{choice.key}_{steps}{f'_w{guidance:g}' if several_w else ''}.png",
                nrow=10 if conditional else None,
            )
            row = {
                "sampler": label,
                "name": choice.name,
                **{f"param_{k}": v for k, v in choice.params.items()},
                "guidance": guidance if conditional else "",
                "steps": steps,
                "nfe": steps * choice.sampler.evals_per_step,
                "n": args.num_samples,
                "seed": args.seed,
                "seconds_per_image": samples.seconds / args.num_samples,
            }
            for judge in judges:
                row.update(judge.score(samples.images, samples.labels))
            rows.append(row)
            print(summary_line(row, floor), flush=True)
            write_reports(out, rows, floor, header, class_names)
    print(f"\n{markdown_report(rows, floor, [], [])}\nwritten: {out / 'results.md'}, {out / 'results.csv'}")
    return rows, floor


def conditioning(args: argparse.Namespace, ckpt: Checkpoint) -> bool:
    """Whether the samples are conditioned on classes (--conditioning, else whether the model has any),
    checked against what the model can do."""
    if args.conditioning == "class" and not ckpt.config.num_classes:
        raise ValueError(f"{args.checkpoint} is unconditional: use --conditioning none")
    guided = args.conditioning == "none" or set(args.guidance) != {1}  # both need the unconditional class
    if ckpt.config.num_classes and ckpt.unet.null_label is None and guided:
        raise ValueError(f"{args.checkpoint} has no unconditional class: sample it with labels and --guidance 1")
    return (args.conditioning or "class") == "class" and ckpt.config.num_classes > 0


def make_judges(
    args: argparse.Namespace, ckpt: Checkpoint, real: RealImages, device: torch.device, fid_features: FeatureFn | None
) -> list:
    """The judges of --metrics (default: FID, and the classifier where there is one for the dataset)."""
    classifier_path = args.classifier or default_classifier_path(ckpt.dataset)
    metrics = args.metrics or ["fid"] + (["classifier"] if classifier_path.is_file() else [])
    if "classifier" in metrics and not DATASETS.get(ckpt.dataset, DATASETS["folder"]).class_names:
        raise ValueError(f"{ckpt.dataset} has no labels: the classifier scores need MNIST or Fashion-MNIST")
    judges = []
    if "fid" in metrics:
        if fid_features is None:
            fid_features = InceptionFeatures(build_inception(load_inception_weights(args.inception_weights)), device)
        cache = args.fid_cache if isinstance(fid_features, InceptionFeatures) else None
        judges.append(FIDJudge(fid_features, real, args.ref_images, cache, args.fid_batch_size, not args.no_progress))
    if "classifier" in metrics:
        clf = load_classifier(classifier_path, device)
        cfg, ccfg = ckpt.config, clf.model.config
        if clf.dataset != ckpt.dataset or (ccfg.in_channels, ccfg.image_size) != (cfg.in_channels, cfg.image_size):
            raise ClassifierError(
                f"{clf.path}: a {clf.dataset} classifier of {ccfg.image_size}px images cannot judge "
                f"a {ckpt.dataset} model of {cfg.image_size}px images"
            )
        judges.append(ClassifierJudge(clf, real, args.ref_images))
    return judges


def resumed_rows(args: argparse.Namespace, out: Path) -> list[dict]:
    """With --resume, the cells of --out's results.csv sampled with this run's N and seed (not its floor,
    which is scored again), with numbers as numbers."""
    if not args.resume or not (out / "results.csv").is_file():
        return []
    with open(out / "results.csv", newline="") as f:
        rows = [{k: _number(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    rows = [r for r in rows if r["sampler"] != "real test images"]
    if stale := [r for r in rows if (r["n"], r.get("seed", args.seed)) != (args.num_samples, args.seed)]:
        print(f"--resume: sampling {len(stale)} cells again (their N or seed differs from this run's)", file=sys.stderr)
    return [r for r in rows if r not in stale]


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
