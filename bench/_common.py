"""What the benchmarks share: the device, the model to time, the machine line and the table."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` from anywhere, without installing the project
    sys.path.insert(0, str(REPO))

from model import formats  # noqa: E402
from model.checkpoint import Checkpoint  # noqa: E402
from model.device import synchronize  # noqa: E402
from model.schedule import NoiseSchedule  # noqa: E402
from model.unet import build_unet  # noqa: E402

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "mnist.safetensors"
GPU_ONLY = ("compile", "bf16", "cuda_graphs")


def add_common_args(parser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda, mps or cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each row (the median is reported)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")


def gpu_options(args, device: torch.device, names: tuple[str, ...] = GPU_ONLY) -> list[str]:
    """The GPU-only options asked for (--compile, --bf16, --cuda-graphs, ...); on the CPU they are
    dropped with a note, so that one command line serves both."""
    asked = [name for name in names if getattr(args, name, False)]
    if asked and device.type != "cuda":
        flags = ", ".join("--" + name.replace("_", "-") for name in asked)
        print(f"note: {flags}: for CUDA devices only; ignored on {device.type}", file=sys.stderr)
        return []
    return asked


def variants(options: list[str]) -> list[tuple[str, ...]]:
    """Plain first, then each option on its own, then all of them together."""
    return [(), *((option,) for option in options)] + ([tuple(options)] if len(options) > 1 else [])


def load_model(path: Path, device: torch.device) -> tuple[Checkpoint, str]:
    """The model at `path` (model.formats), or, while it does not exist yet, a random 'tiny' conditional
    model of the MNIST architecture (the timing does not depend on the weights). Returns it and a note."""
    if path.exists():
        checkpoint = formats.load_model(path, device)
        return checkpoint, f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} (step {checkpoint.step})"
    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=1, image_size=28, num_classes=10)
    with torch.no_grad():  # the zero-initialised output layers would make ε ≡ 0 and the comparisons trivial
        for p in unet.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    checkpoint = Checkpoint(unet.to(device).eval(), NoiseSchedule.from_name("linear", 1000).to(device), "random")
    return checkpoint, f"random 'tiny' model of the MNIST architecture ({path.name} was not there yet)"


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds fn() took, including the device's queued work, and what it returned)"""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result


def median(values) -> float:
    return statistics.median(values)


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        hardware = f"GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        hardware = f"CPU {cpu_name()}, {os.cpu_count()} cores"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"machine: {hardware}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}{load}"
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line() -> str:
    return "command: python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [header, *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)) + " |" for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
