"""Pictures of samples and of the denoising process, drawn with torchvision's make_grid/save_image."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from model.checkpoint import atomic_write
from model.samplers import Step


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped: the range image writers expect."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def save_sample_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Images in [-1, 1] as one grid PNG."""
    nrow = nrow or max(1, round(len(images) ** 0.5))
    atomic_write(path, lambda tmp: save_image(to_unit(images), tmp, nrow=nrow, padding=2, format="png"))
    return Path(path)


def denoising_strip(steps: list[Step], columns: int = 10, with_x0: bool = True) -> torch.Tensor:
    """A grid image (C, H, W) in [0, 1]: one row per sample, `columns` chosen steps from noise to
    image; with_x0 adds, below each sample's row, the row of its predicted x0 at the same steps."""
    picks = [steps[round(i * (len(steps) - 1) / max(1, columns - 1))] for i in range(columns)]
    rows = []
    for b in range(picks[0].x_t.shape[0]):
        rows.append(torch.stack([s.x_t[b] for s in picks]))
        if with_x0:
            rows.append(torch.stack([s.x0[b] if s.x0 is not None else torch.zeros_like(s.x_t[b]) for s in picks]))
    return make_grid(to_unit(torch.cat(rows).cpu()), nrow=columns, padding=1)


def save_denoising_strip(steps: list[Step], path: str | Path, columns: int = 10, with_x0: bool = True) -> Path:
    grid = denoising_strip(steps, columns, with_x0)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
    return Path(path)
