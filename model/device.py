"""The device: the one choice that every tool and the server make from a --device name, and waiting for it."""

import argparse

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


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU, so that a time taken after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
