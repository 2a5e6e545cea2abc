"""The device: the one choice that every tool and the server make from a --device name, and waiting for it."""

import argparse
import sys

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → cuda if there is one, else mps (Apple's GPU), else cpu. Asking for CUDA where there is
    none is an error: silently running a GPU job on the CPU would only look like a very slow one."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device auto or cpu")
    return device


def add_device_argument(parser, default: str = "auto") -> None:
    """Every tool's --device: a name this machine can run on, checked as the command line is read, so that
    a wrong one is a usage error, not a traceback from deep in a run. The tool resolves it (resolve_device)."""

    def checked(name: str) -> str:
        try:
            resolve_device(name)
        except RuntimeError as e:  # CUDA asked for where there is none, or no device of that name at all
            raise argparse.ArgumentTypeError(str(e)) from None
        return name

    parser.add_argument("--device", type=checked, default=default, help="auto (cuda, mps, cpu), cpu, cuda or cuda:N")


def bf16_autocast(device: torch.device, asked: bool) -> bool:
    """Whether to autocast to bf16: as asked, where the device computes bf16 natively (CUDA's own check;
    on the CPU, AVX512-BF16 or AMX). Elsewhere oneDNN emulates it, which made a CIFAR-10 training step 12×
    slower than float32 on an AVX2 CPU: then float32, said once, so that a config written for another
    machine does not silently crawl on this one."""
    if not asked:
        return False
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":  # torch's own probes (private: a torch without them is trusted to be fine)
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        native = any(probe() for probe in probes if probe) or not any(probes)
    else:
        native = True
    if not native:
        print(f"bf16 autocast asked for, but {device} has no native bf16, where it runs many times slower than "
              "float32: computing in float32", file=sys.stderr)  # fmt: skip
    return native


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU, so that a time taken after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
