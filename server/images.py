"""Samples in [-1, 1] → PNG bytes and base64 strings. Called from a thread pool, never from the
sampling thread or the event loop: encoding is CPU work that would stall either."""

from __future__ import annotations

import base64
import io
import math

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from model.visualize import to_unit

GRID_PADDING = 2


def grid_nrow(n: int) -> int:
    """Images per row of a grid: ceil(√n), so 16 images make a 4×4 square and 10 a 4+4+2 block."""
    return math.ceil(math.sqrt(n))


@torch.inference_mode()
def png(image: torch.Tensor) -> bytes:
    """One image (C, H, W) in [0, 1], C = 1 (grey) or 3 (RGB), as PNG bytes."""
    array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@torch.inference_mode()
def grid_png(images: torch.Tensor) -> bytes:
    """A batch (N, C, H, W) in [-1, 1] as one PNG grid, ceil(√N) images a row, 2 px apart."""
    grid = make_grid(to_unit(images.cpu()), nrow=grid_nrow(len(images)), padding=GRID_PADDING)
    return png(grid[: images.shape[1]])  # make_grid turns 1 channel into 3 identical ones


@torch.inference_mode()
def downscale(images: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """A batch (N, C, H, W) shrunk to at most `max_side` pixels a side (the aspect kept), averaging
    the pixels each new one covers: a preview of a large image costs a fraction of its bytes."""
    side = max(images.shape[-2:])
    if max_side is None or side <= max_side:
        return images
    size = [max(1, round(s * max_side / side)) for s in images.shape[-2:]]
    return F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


@torch.inference_mode()
def image_pngs(images: torch.Tensor) -> list[bytes]:
    return [png(image) for image in to_unit(images.cpu())]


def grid_and_images_b64(images: torch.Tensor) -> tuple[str, list[str]]:
    return b64(grid_png(images)), [b64(data) for data in image_pngs(images)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
