"""Pictures of samples and of the denoising process, drawn with torchvision's make_grid/save_image
and Pillow.

  python -m model.visualize grid CKPT --out grid.png                 a grid of samples (a row holds every class)
  python -m model.visualize process CKPT --out process.png           x_t | predicted x0: rows = samples, columns = steps
  python -m model.visualize gif CKPT --out sampling.gif              one sampling run, frame by frame
  python -m model.visualize forward --dataset mnist --out fwd.png    q(x_t | x_0) of real images at chosen t
  python -m model.visualize loss runs/mnist runs/fashion-mnist --out loss.png   training curves from metrics.jsonl
  python -m model.visualize nfe runs/eval/mnist-solvers/results.csv --out nfe.png   quality against model evaluations
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid, save_image

from model.checkpoint import Checkpoint, CheckpointError, atomic_write
from model.cli import HelpFormatter, add_sampler_arguments, sampler_params, unused_sampler_flags
from model.data import load_dataset
from model.device import add_device_argument, resolve_device
from model.formats import load_model
from model.samplers import SAMPLERS, Step, denoise, get_sampler, guided_eps, initial_noise, make_generator, sampling_run
from model.schedule import SCHEDULES, NoiseSchedule

HEADER = 16  # pixels of the band that holds column labels
GAP = 6  # pixels between the x_t and the x0 panels


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped: the range image writers expect."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def save_sample_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Images in [-1, 1] as one grid PNG."""
    nrow = nrow or max(1, round(len(images) ** 0.5))
    atomic_write(path, lambda tmp: save_image(to_unit(images), tmp, nrow=nrow, padding=2, format="png"))


def pick_steps(steps: list[Step], columns: int) -> list[Step]:
    """`columns` steps evenly spread from the first to the last."""
    return [steps[round(i * (len(steps) - 1) / max(1, columns - 1))] for i in range(columns)]


def denoising_strip(steps: list[Step], columns: int = 10) -> torch.Tensor:
    """A grid image (C, H, W) in [0, 1]: for each sample, a row of `columns` chosen steps from noise to
    image and below it the row of its predicted x0 at the same steps."""
    picks = pick_steps(steps, columns)
    x_t = torch.stack([s.x_t for s in picks], 1)
    x0 = torch.stack([s.x0 if s.x0 is not None else torch.zeros_like(s.x_t) for s in picks], 1)
    rows = torch.stack([x_t, x0], 1).flatten(0, 2)  # sample b's x_t row, then its x0 row
    return make_grid(to_unit(rows.cpu()), nrow=columns, padding=1)


def save_denoising_strip(steps: list[Step], path: str | Path, columns: int = 10) -> None:
    atomic_write(path, lambda tmp: save_image(denoising_strip(steps, columns), tmp, format="png"))


# --- pictures with labelled columns ------------------------------------------------------------


def upscale(image: Image.Image, scale: int) -> Image.Image:
    """Nearest-neighbour enlargement: 28-pixel digits stay sharp."""
    return image if scale == 1 else image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def with_column_labels(grid: Image.Image, labels: list[str], cell: int, offset: int = 0) -> Image.Image:
    """The grid below a white band that names each column; columns are `cell` pixels apart from `offset`."""
    out = Image.new("RGB", (grid.width, grid.height + HEADER), "white")
    out.paste(grid.convert("RGB"), (0, HEADER))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(size=10)
    for i, text in enumerate(labels):
        draw.text((offset + i * cell + cell / 2, HEADER / 2), text, fill="black", font=font, anchor="mm")
    return out


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    out = Image.new("RGB", (left.width + GAP + right.width, max(left.height, right.height)), "white")
    out.paste(left.convert("RGB"), (0, 0))
    out.paste(right.convert("RGB"), (left.width + GAP, 0))
    return out


def grid_image(images: torch.Tensor, nrow: int, scale: int = 1, padding: int = 1) -> Image.Image:
    """Images in [-1, 1] (N, C, H, W) as a Pillow grid, enlarged `scale` times."""
    return upscale(to_pil_image(make_grid(to_unit(images.cpu()), nrow=nrow, padding=padding, pad_value=1)), scale)


def step_label(step: Step) -> str:
    return f"t={step.t}" if step.t >= 0 else "x0"


def denoising_panels(steps: list[Step], columns: int = 8, scale: int = 2) -> Image.Image:
    """x_t (left) and the predicted x0 (right) side by side: one row per sample, `columns` steps from
    noise to image, each column headed by the timestep of its x_t."""
    picks = pick_steps(steps, columns)
    x_t = torch.stack([s.x_t for s in picks], 1).flatten(0, 1)  # row b: sample b at each pick
    x0 = torch.stack([s.x0 if s.x0 is not None else torch.zeros_like(s.x_t) for s in picks], 1).flatten(0, 1)
    cell = (picks[0].x_t.shape[-1] + 1) * scale  # an image and make_grid's padding, enlarged
    left = with_column_labels(grid_image(x_t, columns, scale), [step_label(s) for s in picks], cell, scale)
    right = with_column_labels(grid_image(x0, columns, scale), ["x0 pred."] * columns, cell, scale)
    return side_by_side(left, right)


def forward_noising(
    schedule: NoiseSchedule, x0: torch.Tensor, timesteps: list[int], seed: int = 0, scale: int = 2
) -> Image.Image:
    """q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I): one row per image, its x_0 then x_t at each t, all with
    the same ε, so each row shows one image drowning in one noise."""
    x0 = x0.to(schedule.device)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(schedule.device)
    t_of = lambda t: torch.full((len(x0),), t, device=schedule.device)  # noqa: E731
    columns = [x0] + [schedule.q_sample(x0, t_of(t), noise) for t in timesteps]
    images = torch.stack(columns, 1).flatten(0, 1)
    cell = (x0.shape[-1] + 1) * scale
    labels = ["x0"] + [f"t={t}" for t in timesteps]
    return with_column_labels(grid_image(images, len(columns), scale), labels, cell, scale)


def save_sampling_gif(steps: list[Step], path: Path, frames: int, scale: int, with_x0: bool, frame_ms: int) -> None:
    """One frame per chosen step of a run (the grid of x_t, and beside it the predicted x0); the last holds 2 s."""
    nrow = max(1, round(steps[0].x_t.shape[0] ** 0.5))
    pictures = []
    for s in pick_steps(steps, min(frames, len(steps))):
        image = grid_image(s.x_t, nrow, scale)
        if with_x0:  # before the first step there is no prediction yet: a grey panel
            image = side_by_side(image, grid_image(s.x0 if s.x0 is not None else torch.zeros_like(s.x_t), nrow, scale))
        caption = f"step {s.index}/{s.total}  {step_label(s)}" + ("   |   predicted x0" if with_x0 else "")
        pictures.append(with_column_labels(image, [caption], image.width))
    durations = [frame_ms] * (len(pictures) - 1) + [2000]
    animation = {"save_all": True, "append_images": pictures[1:], "duration": durations, "loop": 0}
    atomic_write(path, lambda tmp: pictures[0].save(tmp, format="GIF", **animation))


def save_picture(image: Image.Image, path: str | Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# --- the training curve ------------------------------------------------------------------------

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def read_metrics(path: str | Path, key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of one key from a run's metrics.jsonl (a run folder works too), by step."""
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest = {r["step"]: float(r[key]) for r in rows if key in r}  # a resumed run logs its last steps again
    return sorted(latest.items())


def smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** (i + 1)))
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round numbers (1, 2 or 5 × 10^k apart) covering [lo, hi]."""
    raw = (hi - lo) / max(1, count) or abs(hi) or 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    width: int = 800,
    height: int = 450,
    log_y: bool = True,
    smooth: float | None = 0.6,
    title: str = "training loss",
    x_label: str = "step",
    floor: float | None = None,
) -> Image.Image:
    """A line chart, log or linear y. With `smooth`, each series' raw values are faint and their
    moving average solid (training curves); without, its points are dots joined by a line. `floor`
    draws a dashed horizontal line (the real data's score, say)."""
    left, right, top, bottom = 64, 16, 28, 40
    points = [p for s in series.values() for p in s if not log_y or p[1] > 0]
    if floor is not None and (floor > 0 or not log_y):
        points.append((points[0][0] if points else 0, floor))
    if not points:
        raise ValueError("no values to draw")
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_of = math.log10 if log_y else float
    y_lo, y_hi = min(y_of(p[1]) for p in points), max(y_of(p[1]) for p in points)
    x_hi, y_hi = max(x_hi, x_lo + 1), max(y_hi, y_lo + 1e-9)

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x_lo) / (x_hi - x_lo) * (width - left - right)
        y = top + (y_hi - y_of(value)) / (y_hi - y_lo) * (height - top - bottom)
        return x, y

    image = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=11)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for step in nice_ticks(x_lo, x_hi, 6):
        x, _ = xy(step, 10**y_lo if log_y else y_lo)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x, height - bottom + 6), f"{step:g}", fill="black", font=font, anchor="mt")
    for value in y_ticks(y_lo, y_hi, log_y):
        _, y = xy(x_lo, value)
        draw.line([left, y, width - right, y], fill="#e6e6e6")
        draw.text((left - 6, y), f"{value:.3g}", fill="black", font=font, anchor="rm")
    if floor is not None and (floor > 0 or not log_y):
        _, y = xy(x_lo, floor)
        for x in range(left, width - right, 8):
            draw.line([x, y, min(x + 4, width - right), y], fill="black")
        draw.text((left + 4, y - 2), f"real data {floor:.3g}", fill="black", font=font, anchor="ld")
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        legend = draw_series(draw, xy, [p for p in pts if not log_y or p[1] > 0], colour, smooth, name)
        draw.text((width - right - 8, top + 8 + 14 * i), legend, fill=colour, font=font, anchor="ra")
    scale = "log scale" if log_y else "linear scale"
    note = f"; solid: moving average {smooth:g}" if smooth is not None else ""
    draw.text((left, top / 2), f"{title} ({scale}{note})", fill="black", font=font, anchor="lm")
    draw.text(((left + width - right) / 2, height - 12), x_label, fill="black", font=font, anchor="mm")
    return image


def y_ticks(lo: float, hi: float, log_y: bool) -> list[float]:
    """The y axis' ticks between lo and hi (log10 of the values on a log axis): 1, 2 and 5 × 10^k on a log
    axis (at least its ends), round numbers on a linear one."""
    if not log_y:
        return nice_ticks(lo, hi, 5)
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    ticks = [m * 10.0**d for d in decades for m in (1, 2, 5) if lo <= math.log10(m * 10.0**d) <= hi]
    return ticks if len(ticks) >= 2 else [10**v for v in (lo, hi)]


def draw_series(draw: ImageDraw.ImageDraw, xy, pts: list[tuple[float, float]], colour: str, smooth, name: str) -> str:
    """One series' (step, value) points, placed by `xy` and drawn as line_chart says; returns its legend."""
    if smooth is None:
        if len(pts) > 1:
            draw.line([xy(*p) for p in pts], fill=colour, width=2)
        for p in pts:
            x, y = xy(*p)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        return name
    faint = tuple(round(255 - (255 - c) * 0.3) for c in ImageColor.getrgb(colour))  # 30% of the colour
    if len(pts) > 1:
        draw.line([xy(*p) for p in pts], fill=faint, width=1)
        avg = smoothed([v for _, v in pts], smooth)
        draw.line([xy(s, v) for (s, _), v in zip(pts, avg, strict=True)], fill=colour, width=2)
    return f"{name} ({pts[-1][1]:.4g} at {pts[-1][0]})"


# metric of model.evaluate's results.csv → (title, log scale)
QUALITY_METRICS = {
    "cls_acc": ("classifier accuracy ↑", False),
    "cls_fd": ("Fréchet distance, classifier features ↓", True),
    "fid": ("FID ↓", True),
}


def quality_against_nfe(tables: dict[str, list[dict]], metrics: list[str], size=(560, 340)) -> Image.Image:
    """Quality against model evaluations as the solver papers draw it, from model.evaluate's results.csv
    files (name → rows): a row of panels (one per metric) for each table and guidance weight, one line per
    sampler, the real test images' score dashed."""
    charts = []
    for table_name, rows in tables.items():
        floor = next((r for r in rows if r["sampler"] == "real test images"), {})
        cells = [r for r in rows if r["sampler"] != "real test images"]
        for w in dict.fromkeys(r["guidance"] for r in cells):
            for metric in metrics:
                series: dict[str, list[tuple[float, float]]] = {}
                for r in cells:
                    if r["guidance"] == w and r.get(metric) not in (None, ""):
                        name = r["sampler"].split(", w=")[0]
                        series.setdefault(name, []).append((float(r["nfe"]), float(r[metric])))
                title, log_y = QUALITY_METRICS[metric]
                heading = f"{table_name}, w={w}: {title}" if w != "" else f"{table_name}: {title}"
                floor_value = float(floor[metric]) if floor.get(metric) not in (None, "") else None
                charts.append(line_chart(series, *size, log_y, None, heading, "model evaluations (NFE)", floor_value))
    width, height = charts[0].size
    out = Image.new("RGB", (width * len(metrics), height * math.ceil(len(charts) / len(metrics))), "white")
    for i, chart in enumerate(charts):
        out.paste(chart, (i % len(metrics) * width, i // len(metrics) * height))
    return out


@torch.inference_mode()
def sampling_steps(ckpt: Checkpoint, args: argparse.Namespace) -> list[Step]:
    """Every state, from x_T to x_0, of the sampling run the flags ask for (by default the model's own
    sampler, steps and parameters, else DDIM's); a conditional model's sample i is conditioned on class
    i mod K, or on --class for all."""
    own = ckpt.sampling or {}  # a distilled student's sampler and steps, which it needs
    sampler = get_sampler(args.sampler or own.get("sampler", "ddim"))
    if unused := unused_sampler_flags(args, [sampler]):
        raise ValueError(f"{', '.join(unused)}: {sampler.name} takes no such parameter")
    params = {**ckpt.sampler_defaults().get(sampler.name, {}), **sampler_params(args, sampler)}
    steps = args.steps or (own.get("steps") if sampler.name == own.get("sampler") else None)
    device, cfg = ckpt.schedule.device, ckpt.config
    generator = make_generator(args.seed, device)
    x = initial_noise((args.n, cfg.in_channels, cfg.image_size, cfg.image_size), generator, device)
    labels = None
    if cfg.num_classes:
        labels = torch.arange(args.n) if args.label is None else torch.full((args.n,), args.label)
        labels = labels.to(device) % cfg.num_classes
    run = sampling_run(sampler.name, ckpt.schedule, x, steps, generator, **params)
    eps = lambda x_t, t: guided_eps(ckpt.unet, x_t, t, labels, args.guidance)  # noqa: E731
    return list(denoise(run, eps, include_start=True))  # the pure noise first: pictures start from it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("checkpoint", type=Path)
    sampling.add_argument("--sampler", choices=list(SAMPLERS), help="default: the model's own (a student's), else ddim")
    sampling.add_argument("--steps", type=int, help="default: the model's own, else the sampler's (DDIM 50, …)")
    sampling.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance w")
    sampling.add_argument("--class", dest="label", type=int, help="condition every sample on this class")
    sampling.add_argument("--seed", type=int, default=0)
    add_device_argument(sampling, default="cpu")
    add_sampler_arguments(sampling)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, required=True)
    common.add_argument("--scale", type=int, default=2, help="enlarge every pixel this many times")

    defaults = HelpFormatter
    g = sub.add_parser("grid", parents=[sampling, common], formatter_class=defaults, help="a grid of samples")
    g.add_argument("-n", type=int, default=100)
    g.add_argument("--nrow", type=int, help="images per row (default: K for a conditional model, else √n)")
    g = sub.add_parser("process", parents=[sampling, common], formatter_class=defaults,
                       help="x_t and predicted x0 from noise to image")  # fmt: skip
    g.add_argument("-n", type=int, default=4, help="samples (rows)")
    g.add_argument("--columns", type=int, default=8, help="steps shown, noise to image")
    g.add_argument("--layout", choices=["side", "rows"], default="side",
                   help="side: x_t | x0 panels; rows: each x0 row under its x_t row")  # fmt: skip
    g = sub.add_parser("gif", parents=[sampling, common], formatter_class=defaults, help="one sampling run, animated")
    g.add_argument("-n", type=int, default=16)
    g.add_argument("--frames", type=int, default=60, help="at most this many frames, evenly spread over the steps")
    g.add_argument("--frame-ms", type=int, default=80)
    g.add_argument("--no-x0", action="store_true", help="x_t alone, without the predicted x0 beside it")
    g = sub.add_parser("forward", parents=[common], formatter_class=defaults, help="real images noised at chosen t")
    g.add_argument("--dataset", default="mnist")
    g.add_argument("--data-root", type=Path, default=Path("data"))
    g.add_argument("-n", type=int, default=4, help="images (rows)")
    g.add_argument("--t", type=int, nargs="+", default=[0, 50, 100, 200, 300, 500, 700, 999])
    g.add_argument("--checkpoint", type=Path, help="take the noise schedule from this checkpoint")
    g.add_argument("--schedule", choices=SCHEDULES, default="linear")
    g.add_argument("--timesteps", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("loss", formatter_class=defaults, help="training curves from metrics.jsonl files")
    g.add_argument("metrics", type=Path, nargs="+", help="metrics.jsonl files or run folders")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--key", default="loss", help="loss, lr, grad_norm or images_per_s")
    g.add_argument("--smooth", type=float, default=0.6, help="moving-average weight per logged point, 0 to 1")
    g.add_argument("--log-y", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--size", type=int, nargs=2, default=[800, 450], metavar=("WIDTH", "HEIGHT"))
    g = sub.add_parser("nfe", formatter_class=defaults, help="quality against NFE from model.evaluate results")
    g.add_argument("results", type=Path, nargs="+", help="results.csv files of model.evaluate (--sampler-sweep)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--metrics", nargs="+", choices=list(QUALITY_METRICS), default=["cls_acc", "cls_fd"])
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    if args.command == "loss":
        series = {(m.parent.name if m.suffix == ".jsonl" else m.name): read_metrics(m, args.key) for m in args.metrics}
        return save_picture(line_chart(series, *args.size, args.log_y, args.smooth, args.key), args.out)
    if args.command == "nfe":
        tables = {path.parent.name: list(csv.DictReader(path.read_text().splitlines())) for path in args.results}
        return save_picture(quality_against_nfe(tables, args.metrics), args.out)
    if args.command == "forward":
        if args.checkpoint:
            schedule = load_model(args.checkpoint).schedule
        else:
            schedule = NoiseSchedule.from_name(args.schedule, args.timesteps)
        if bad := [t for t in args.t if not 0 <= t < schedule.num_timesteps]:
            raise ValueError(f"--t {bad}: timesteps go from 0 to {schedule.num_timesteps - 1}")
        data = load_dataset(args.dataset, args.data_root, train=False, augment=False)
        x0 = torch.stack([data[i][0] for i in range(args.n)])
        return save_picture(forward_noising(schedule, x0, args.t, args.seed, args.scale), args.out)

    ckpt = load_model(args.checkpoint, resolve_device(args.device))
    steps = sampling_steps(ckpt, args)
    if args.command == "grid":
        conditional = ckpt.config.num_classes and args.label is None
        nrow = args.nrow or (ckpt.config.num_classes if conditional else max(1, round(args.n**0.5)))
        return save_picture(grid_image(steps[-1].x_t, nrow, args.scale, padding=2), args.out)
    if args.command == "process":
        if args.layout == "rows":
            return save_picture(upscale(to_pil_image(denoising_strip(steps, args.columns)), args.scale), args.out)
        return save_picture(denoising_panels(steps, args.columns, args.scale), args.out)
    return save_sampling_gif(steps, args.out, args.frames, args.scale, not args.no_x0, args.frame_ms)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, CheckpointError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
