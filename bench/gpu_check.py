"""The GPU check: one command for a machine with one CUDA GPU, no internet and nothing outside this
checkout (synthetic data, the shipped checkpoints). Sized for about 5 minutes on an H100 (8 at most), it

  1. runs the CUDA-only tests (`pytest -m cuda`: bf16, channels-last, torch.compile, NCCL under torchrun,
     the server on the GPU);
  2. trains DDPM's CIFAR-10 model (the `ddpm-cifar10` preset, 35.7M parameters) on synthetic 32×32 images
     with `python -m model.train`, in bf16 and channels-last, eager and with --compile: images/s and model
     FLOPs utilisation (MFU);
  3. samples DDIM-50 at batch 256 with that model: images/s, eager fp32, bf16, and compiled bf16;
  4. starts the server on the GPU (`python -m server`, the shipped checkpoints) and drives 64 WebSocket
     clients streaming as the page does: images/s, latency, time to first frame;

and writes gpu_check.json and gpu_check.md under --out, after each part (a later hang leaves the earlier
figures). docs/performance.md ("The GPU check") describes both files. Exit status 1 if a part failed.

    python bench/gpu_check.py --out gpu-check
    python bench/gpu_check.py --cpu-dry-run --out /tmp/gpu-check     # every size shrunk, on the CPU
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import REPO, command_line, cpu_name, markdown_table, timed
from bench_clients import level, one_request
from bench_sampling import EpsFn, run_ours
from torch.utils.flop_counter import FlopCounterMode

from model.checkpoint import load_checkpoint
from model.samplers import initial_noise, make_generator
from model.schedule import NoiseSchedule
from model.unet import UNet, build_unet

FORMAT = 1
PRESET = "ddpm-cifar10"
PARTS = ("tests", "train", "sampling", "server")
# Dense bf16 tensor-core peaks from NVIDIA's data sheets, in TFLOP/s: first match in the device name wins
PEAK_BF16_TFLOPS = [
    ("B200", 2250.0), ("H200", 989.4), ("H100 PCIe", 756.5), ("H100", 989.4), ("A100", 312.0),
    ("L40S", 362.1), ("L4", 121.0), ("RTX 4090", 165.2),
]  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """Everything the check makes, sized for the GPU or shrunk for the CPU dry run."""

    device: str
    threads: int | None  # of PyTorch in the training and server processes (None: its default)
    model_overrides: dict  # UNetConfig fields on top of the preset
    image_size: int
    train_batch: int
    train_steps: int
    log_every: int
    train_flags: tuple[str, ...]
    compile: bool
    workers: int
    sample_batch: int
    sample_steps: int
    sample_variants: tuple[tuple[str, ...], ...]  # bench_sampling.EpsFn options
    clients: int
    request: dict = field(default_factory=dict)
    rounds: int = 1
    timeout_s: int = 240  # at most, of each subprocess and of the clients' run
    budget_s: int = 480  # of the whole check: a part that would run past it is stopped


GPU = Sizes(
    device="cuda", threads=None, model_overrides={}, image_size=32, train_batch=128, train_steps=300, log_every=50,
    train_flags=("--bf16", "--channels-last"), compile=True, workers=4,
    sample_batch=256, sample_steps=50, sample_variants=((), ("bf16",), ("compile", "bf16")),
    clients=64, request={"sampler": "ddim", "steps": 50, "n": 16, "every": 1}, rounds=3,
)  # fmt: skip
CPU_DRY_RUN = Sizes(
    device="cpu", threads=1,
    model_overrides={"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "attention_resolutions": (8,)},
    image_size=16, train_batch=8, train_steps=4, log_every=2, train_flags=("--bf16", "--channels-last"),
    compile=False, workers=0, sample_batch=4, sample_steps=5, sample_variants=((),),
    clients=4, request={"sampler": "ddim", "steps": 5, "n": 2, "every": 1}, rounds=1, timeout_s=120, budget_s=600,
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every size shrunk, on the CPU")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, where the table lacks it")
    args = parser.parse_args(argv)
    args.parts = [part for part in args.parts.split(",") if part]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = CPU_DRY_RUN if args.cpu_dry_run else GPU
    if sizes.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (--cpu-dry-run runs the check, shrunk, on the CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "format": FORMAT,
        "command": command_line().removeprefix("command: "),
        "dry_run": args.cpu_dry_run,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(sizes.device, args.peak_tflops),
        "sizes": asdict(sizes),
        "parts": {},
    }
    started = time.perf_counter()
    budget = Budget(sizes.budget_s, sizes.timeout_s)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        checks = {
            "tests": functools.partial(cuda_tests, Path(work), budget),
            "train": functools.partial(train, Path(work), sizes, budget, report["machine"]["peak_bf16_tflops"]),
            "sampling": functools.partial(sampling, Path(work), sizes),
            "server": functools.partial(server, sizes, budget),
        }
        for name in args.parts:
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            report["parts"][name] = run_part(checks[name])
            report["seconds"] = round(time.perf_counter() - started, 1)
            write(report, args.out)
    print((args.out / "gpu_check.md").read_text())
    if any(part["status"] == "failed" for part in report["parts"].values()):
        sys.exit(1)


class Budget:
    """The check's time: each subprocess or wait gets at most `cap_s`, and never more than what is left."""

    def __init__(self, seconds: float, cap_s: float):
        self.ends, self.cap_s = time.monotonic() + seconds, cap_s

    def timeout(self) -> float:
        left = self.ends - time.monotonic()
        if left < 5:
            raise TimeoutError("the check's time budget is spent")
        return min(self.cap_s, left)


def run_command(command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own, killed with everything it started if it times out
    (a hung torchrun worker would otherwise hold the GPU for the parts that follow)."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise TimeoutError(f"{' '.join(command[:4])} ... took longer than {timeout_s:.0f} s") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_part(check) -> dict:
    started = time.perf_counter()
    try:
        result = {"status": "ok", **check()}
    except Exception as e:  # a part that fails is reported, and the others still run
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def machine(device: str, peak_tflops: float | None) -> dict:
    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": None,
        "cuda": None,
        "gpu_memory_gib": None,
        "peak_bf16_tflops": peak_tflops,
    }
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        info.update(gpu=name, cuda=torch.version.cuda, gpu_memory_gib=round(memory, 1))
        info["peak_bf16_tflops"] = peak_tflops or peak_bf16_tflops(name)
    return info


def peak_bf16_tflops(gpu_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in gpu_name), None)


# --- 1. the CUDA-only tests ---------------------------------------------------------------------


def cuda_tests(work: Path, budget: Budget) -> dict:
    """pytest -m cuda over the test files that hold such tests (collecting only those keeps it quick)."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    junit = work / "cuda-tests.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    result = run_command([*command, *files], budget.timeout())
    suite = ET.parse(junit).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}.{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {
        "status": "failed" if result.returncode not in (0, 5) or failed else "ok",  # 5: nothing collected
        "files": files,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": failed,
        "skipped": counts["skipped"],
        "output_tail": result.stdout[-2000:] if failed or result.returncode not in (0, 5) else "",
    }


# --- 2. training --------------------------------------------------------------------------------


def train(work: Path, sizes: Sizes, budget: Budget, peak_tflops: float | None) -> dict:
    runs = [train_run(work / "eager", sizes, sizes.train_flags, budget)]
    if sizes.compile:
        runs.append(train_run(work / "compiled", sizes, (*sizes.train_flags, "--compile"), budget))
    else:
        runs.append({"flags": [*sizes.train_flags, "--compile"], "status": "skipped", "reason": "not on the CPU"})
    unet = preset_unet(sizes)
    flops = forward_flops(unet)
    for entry in runs:
        if "images_per_s" in entry:  # a training step: the forward and a backward of twice its cost
            entry["mfu"] = entry["images_per_s"] * 3 * flops / (peak_tflops * 1e12) if peak_tflops else None
    return {
        "status": "failed" if any(entry["status"] == "failed" for entry in runs) else "ok",
        "preset": PRESET,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "image_size": sizes.image_size,
        "batch": sizes.train_batch,
        "steps": sizes.train_steps,
        "forward_gflops_per_image": flops / 1e9,
        "runs": runs,
    }


def preset_unet(sizes: Sizes) -> UNet:
    """The UNet the check trains (3 channels, unconditional), with fresh weights, on the CPU."""
    return build_unet(PRESET, in_channels=3, image_size=sizes.image_size, num_classes=0, **sizes.model_overrides)


def train_run(out: Path, sizes: Sizes, flags: tuple[str, ...], budget: Budget) -> dict:
    """`python -m model.train` on the synthetic data; images/s is the median of its logged windows after
    the first (which holds the warm-up, and the compilation with --compile)."""
    command = [sys.executable, "-m", "model.train", "--dataset", "synthetic", "--no-conditional",
               "--preset", PRESET, *option_flags(sizes.model_overrides), "--image-size", str(sizes.image_size),
               "--batch-size", str(sizes.train_batch), "--steps", str(sizes.train_steps),
               "--log-every", str(sizes.log_every), "--sample-every", "0", "--workers", str(sizes.workers),
               "--device", sizes.device, "--no-progress", "--out", str(out), *flags]  # fmt: skip
    if sizes.threads:
        command += ["--threads", str(sizes.threads)]
    started = time.perf_counter()
    try:
        result = run_command(command, budget.timeout())
    except TimeoutError as e:
        return {"flags": list(flags), "status": "failed", "error": str(e)}
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        return {"flags": list(flags), "status": "failed", "error": result.stderr[-2000:] or result.stdout[-2000:]}
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "flags": list(flags),
        "status": "ok",
        "images_per_s": statistics.median(entry["images_per_s"] for entry in logged[1:] or logged),
        "first_window_images_per_s": logged[0]["images_per_s"],
        "final_loss": logged[-1]["loss"],
        "wall_s": round(seconds, 1),
    }


def option_flags(options: dict) -> list[str]:
    """{"channel_mults": (1, 2)} → ["--channel-mults", "1", "2"]"""
    flags = []
    for name, value in options.items():
        flags += ["--" + name.replace("_", "-"), *map(str, value if isinstance(value, tuple) else (value,))]
    return flags


def forward_flops(unet: UNet) -> float:
    """FLOPs of one image's forward (convolutions and matrix products), counted by PyTorch on the CPU."""
    config = unet.config
    x = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet.float()(x, torch.zeros(1, dtype=torch.long), None)
    return float(counter.get_total_flops())


# --- 3. sampling --------------------------------------------------------------------------------


def sampling(work: Path, sizes: Sizes, repeats: int = 3) -> dict:
    """DDIM with the model the train part made, or random weights of the same size without it (timing
    does not depend on the weights); unconditional, one x_T."""
    device = torch.device(sizes.device)
    trained = work / "eager" / "model.safetensors"
    if trained.is_file():
        checkpoint = load_checkpoint(trained, device)
        unet, schedule, weights = checkpoint.unet, checkpoint.schedule, "trained by the train part"
    else:
        unet = preset_unet(sizes).to(device).eval()
        schedule, weights = NoiseSchedule.from_name("linear").to(device), "random"
    shape = (sizes.sample_batch, unet.config.in_channels, unet.config.image_size, unet.config.image_size)
    x_T = initial_noise(shape, make_generator(0, device), device)
    rows = []
    with torch.inference_mode():
        for variant in sizes.sample_variants:
            eps_fn = EpsFn(unet, None, None, variant)
            run = functools.partial(run_ours, schedule, x_T, "ddim", sizes.sample_steps, eps_fn, 1)
            run_ours(schedule, x_T, "ddim", 2, eps_fn, 1)  # warm-up, and compilation
            seconds = statistics.median(timed(run, device)[0] for _ in range(repeats))
            rows.append({
                "variant": " + ".join(variant) or "eager fp32",
                "seconds": seconds,
                "ms_per_step": seconds / sizes.sample_steps * 1000,
                "images_per_s": sizes.sample_batch / seconds,
            })  # fmt: skip
    return {
        "sampler": "ddim",
        "steps": sizes.sample_steps,
        "batch": sizes.sample_batch,
        "weights": weights,
        "rows": rows,
    }


# --- 4. the server under WebSocket clients ------------------------------------------------------


def server(sizes: Sizes, budget: Budget) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
    command = [sys.executable, "-m", "server", "--port", "0", "--device", sizes.device,
               "--checkpoints", str(REPO / "checkpoints"), "--max-jobs", str(sizes.clients),
               "--log-level", "warning", "--env-file", os.devnull]  # fmt: skip
    if sizes.threads:
        command += ["--threads", str(sizes.threads)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = announced_url(process, budget.timeout())
        ws_url = re.sub(r"^http", "ws", url) + "/ws/sample"

        async def measure():
            await one_request(ws_url, {**sizes.request, "seed": 0})  # warm-up
            return await level(ws_url, sizes.request, sizes.clients, sizes.rounds)

        row = asyncio.run(asyncio.wait_for(measure(), budget.timeout()))
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"request": sizes.request, "rounds": sizes.rounds, **row}


def announced_url(process: subprocess.Popen, timeout_s: float) -> str:
    """The address the server prints once its models are loaded, or an error after `timeout_s`."""
    lines: list[str] = []
    threading.Thread(target=lambda: [lines.append(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if match := re.search(r"^Open (http://\S+) in your browser$", "".join(lines), re.MULTILINE):
            return match.group(1)
        time.sleep(0.1)
    raise RuntimeError("the server did not start:\n" + "".join(lines[-30:]))


# --- the two files ------------------------------------------------------------------------------


def write(report: dict, out: Path) -> None:
    for name, text in (("gpu_check.json", json.dumps(report, indent=2) + "\n"), ("gpu_check.md", markdown(report))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        temporary.replace(out / name)


def markdown(report: dict) -> str:
    m, parts = report["machine"], report["parts"]
    hardware = f"{m['gpu']}, CUDA {m['cuda']}, {m['gpu_memory_gib']} GiB" if m["gpu"] else "no GPU (CPU dry run)"
    lines = [
        "# GPU check" + (" (CPU dry run: every size shrunk)" if report["dry_run"] else ""),
        "",
        f"`{report['command']}`, started {report['started']}, {report.get('seconds', 0):.0f} s in all",
        "",
        f"machine: {hardware}; CPU {m['cpu']}, {m['cores']} cores; torch {m['torch']}, Python {m['python']}",
        "",
        markdown_table(["part", "status", "seconds", "result"], [
            [name, part["status"], part["seconds"], summary(name, part)] for name, part in parts.items()
        ]),
    ]  # fmt: skip
    train, sampling, server = parts.get("train", {}), parts.get("sampling", {}), parts.get("server", {})
    if train.get("runs"):
        peak = f"{m['peak_bf16_tflops']:g} TFLOP/s" if m["peak_bf16_tflops"] else "unknown (--peak-tflops)"
        lines += [
            "",
            f"## Training: {train['preset']}, {train['parameters'] / 1e6:.3g}M parameters, "
            f"{train['image_size']}×{train['image_size']} synthetic images, batch {train['batch']}, "
            f"{train['steps']} steps",
            "",
            f"{train['forward_gflops_per_image']:.2f} GFLOPs per image forward; a step counts 3×; bf16 peak {peak}",
            "",
            markdown_table(["flags", "status", "images/s", "MFU", "first window images/s", "final loss", "wall s"], [
                [" ".join(run["flags"]), run["status"], run.get("images_per_s", "–"), percent(run.get("mfu")),
                 run.get("first_window_images_per_s", "–"), run.get("final_loss", "–"), run.get("wall_s", "–")]
                for run in train["runs"]
            ]),
        ]  # fmt: skip
    if sampling.get("rows"):
        lines += [
            "",
            f"## Sampling: DDIM-{sampling['steps']}, batch {sampling['batch']}, unconditional",
            "",
            markdown_table(
                ["variant", "seconds", "ms/step", "images/s"],
                [[row["variant"], row["seconds"], row["ms_per_step"], row["images_per_s"]] for row in sampling["rows"]],
            ),
        ]
    if "images_per_s" in server:
        request = server["request"]
        lines += [
            "",
            f"## Server: {server['clients']} WebSocket clients, {server['rounds']} requests each, "
            f"{request['sampler']}-{request['steps']}, n={request['n']}, a frame every {request['every']} steps",
            "",
            markdown_table(
                ["images/s", "latency p50 s", "latency p95 s", "first frame p50 s", "frames/s", "refused"],
                [[server[key] for key in ("images_per_s", "latency_p50_s", "latency_p95_s", "first_frame_p50_s",
                                          "frames_per_s", "refused")]],
            ),
        ]  # fmt: skip
    failures = [(name, part) for name, part in parts.items() if part["status"] == "failed"]
    for name, part in failures:
        detail = part.get("error") or part.get("output_tail") or json.dumps(part.get("failed"))
        lines += ["", f"## {name} failed", "", "```", detail.strip(), "```"]
    return "\n".join(lines) + "\n"


def summary(name: str, part: dict) -> str:
    if part["status"] == "failed" and "error" in part:
        return part["error"].strip().splitlines()[-1][:100]
    if name == "tests":
        return f"{part['passed']} passed, {len(part['failed'])} failed, {part['skipped']} skipped"
    if name == "train":
        runs = part["runs"]
        rates = [f"{run['images_per_s']:.0f} images/s" if "images_per_s" in run else run["status"] for run in runs]
        return ", ".join(f"{' '.join(run['flags'])}: {rate}" for run, rate in zip(runs, rates, strict=True))
    if name == "sampling":
        return ", ".join(f"{row['variant']}: {row['images_per_s']:.0f} images/s" for row in part["rows"])
    return f"{part['images_per_s']:.1f} images/s, first frame p50 {part['first_frame_p50_s']:.2f} s"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
