"""The checkpoint folder, loaded: every diffusion checkpoint in it, once, on the serving device."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint

log = logging.getLogger(__name__)

PREFERRED_DEFAULT = "mnist"


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda if there is one, else cpu. Asking for CUDA where there is none is an error:
    silently running a GPU deployment on the CPU would only look like a very slow server."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device auto or cpu")
    return device


@dataclass
class LoadedModel:
    """A checkpoint ready to sample from; `name` is its file name without .safetensors. A model may
    name the sampler (and its steps) that a request for it gets when it names none, as a distilled
    model needs its own: server.validation prefers these to the server's defaults."""

    name: str
    checkpoint: Checkpoint
    device: torch.device
    default_sampler: str | None = None
    default_steps: int | None = None

    @property
    def unet(self):
        return self.checkpoint.unet

    @property
    def schedule(self):
        return self.checkpoint.schedule

    @property
    def num_classes(self) -> int:
        return self.checkpoint.config.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        config = self.checkpoint.config
        return (config.in_channels, config.image_size, config.image_size)

    def info(self) -> dict:
        config = self.checkpoint.config
        return {
            "name": self.name,
            "dataset": self.checkpoint.dataset,
            "image_size": config.image_size,
            "channels": config.in_channels,
            "num_classes": config.num_classes,
            "class_names": self.checkpoint.class_names,
            "timesteps": self.schedule.num_timesteps,
            "schedule": self.schedule.name,
            "device": str(self.device),
            "default_sampler": self.default_sampler,
            "default_steps": self.default_steps,
        }


class ModelRegistry:
    def __init__(self, models: dict[str, LoadedModel], default: str | None = None):
        self.models = models
        if default is not None and default not in models:
            raise ValueError(f"default model {default!r} is not loaded; loaded: {sorted(models)}")
        self.default = default or (PREFERRED_DEFAULT if PREFERRED_DEFAULT in models else next(iter(models), None))

    @classmethod
    def load(cls, folder: Path, device: torch.device, default: str | None = None) -> ModelRegistry:
        """Load every *.safetensors directly inside `folder` (subfolders such as classifiers/ are
        not looked at). A file that cannot be loaded is logged and skipped; the others still serve."""
        models = {}
        paths = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not paths:
            log.error("no checkpoints (*.safetensors) in %s: nothing to serve", folder.resolve())
        for path in paths:
            started = time.perf_counter()
            try:
                checkpoint = load_checkpoint(path, device)
            except (CheckpointError, OSError, RuntimeError) as e:  # RuntimeError: out of memory, most likely
                log.warning("skipping a checkpoint: %s", e)
                continue
            model = LoadedModel(path.stem, checkpoint, device)
            warm_up(model)
            models[model.name] = model
            log.info(
                "loaded %s from %s on %s in %.1f s: %s",
                model.name,
                path,
                device,
                time.perf_counter() - started,
                describe(checkpoint),
            )
        if default is not None and default not in models:
            log.warning("default model %r is not loaded; using the first one instead", default)
            default = None
        return cls(models, default)

    def get(self, name: str | None) -> LoadedModel | None:
        return self.models.get(name or self.default)


def describe(checkpoint: Checkpoint) -> str:
    config = checkpoint.config
    classes = f"{config.num_classes} classes" if config.num_classes else "unconditional"
    weights = "EMA weights" if checkpoint.ema else "raw weights (not EMA)"
    schedule = f"{checkpoint.schedule.name} schedule, T = {checkpoint.schedule.num_timesteps}"
    shape = f"{config.in_channels}×{config.image_size}×{config.image_size}"
    return f"{checkpoint.dataset}, {shape}, {classes}, {schedule}, step {checkpoint.step}, {weights}"


@torch.inference_mode()
def warm_up(model: LoadedModel) -> None:
    """One forward at the batch shape of a guided request, so the first user does not pay for lazy
    initialisation (cuDNN autotuning, allocator growth, the first-call overhead of each kernel)."""
    x = torch.zeros(2, *model.image_shape, device=model.device)
    t = torch.full((2,), model.schedule.num_timesteps - 1, device=model.device)
    labels = torch.full((2,), model.unet.null_label, device=model.device) if model.num_classes else None
    model.unet(x, t, labels)
