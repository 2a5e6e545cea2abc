"""The model formats, in one table: how each is recognised on disk, the name it is served under, and
how it is loaded. Whatever loads a model (the server, evaluation, pictures, distillation, benchmarks)
calls load_model; a new format is one entry in FORMATS."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import Checkpoint, load_checkpoint
from model.diffusers_models import is_diffusers_folder, load_diffusers_model


@dataclass(frozen=True)
class ModelFormat:
    recognise: Callable[[Path], bool]  # whether a path holds a model of this format
    name: Callable[[Path], str]  # the model's name: its file name without the suffix, or its folder's
    load: Callable[[Path, torch.device | str], Checkpoint]  # CheckpointError names the path and the problem
    extra: str | None = None  # the optional package that loads it, installed by the pip extra of its name

    @property
    def installed(self) -> bool:
        return self.extra is None or importlib.util.find_spec(self.extra) is not None


CHECKPOINT = ModelFormat(lambda path: path.suffix == ".safetensors", lambda path: path.stem, load_checkpoint)
DIFFUSERS = ModelFormat(is_diffusers_folder, lambda path: path.name, load_diffusers_model, extra="diffusers")
FORMATS = (CHECKPOINT, DIFFUSERS)  # in the order a path is tried


def model_format(path: Path) -> ModelFormat | None:
    return next((kind for kind in FORMATS if kind.recognise(path)), None)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """The model at `path` on `device`, ready to sample (eval mode). A path no format recognises goes to
    the loader that says best why it is not a model: a folder to diffusers', anything else to ours."""
    path = Path(path)
    return (model_format(path) or (DIFFUSERS if path.is_dir() else CHECKPOINT)).load(path, device)
