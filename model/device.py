"""The device: the one choice that every tool and the server make from a --device name, and waiting for it."""

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


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU, so that a time taken after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
