"""Samples in [-1, 1] → PNG bytes and base64 strings. Called from a thread pool, never from the
sampling thread or the event loop: encoding is CPU work that would stall either."""

from __future__ import annotations

import base64
import io
import math
import struct

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

GRID_PADDING = 2


def grid_nrow(n: int) -> int:
    """Images per row of a grid: ceil(√n), so 16 images make a 4×4 square and 10 a 4+4+2 block."""
    return math.ceil(math.sqrt(n))


def pixels(images: torch.Tensor) -> np.ndarray:
    """A batch (N, C, H, W) in [-1, 1] as (N, H, W, C) bytes. In NumPy, on the calling thread: a torch
    op here would wake torch's thread pool (the sampling loop's) for a few kilobytes of work."""
    unit = np.clip((images.detach().cpu().float().numpy() + 1) / 2, 0, 1)  # model.visualize.to_unit
    return (unit * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def png(array: np.ndarray) -> bytes:
    """One image (H, W, C) of bytes, C = 1 (grey) or 3 (RGB), as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def grid(array: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) as one (H', W', C) grid: ceil(√N) a row, GRID_PADDING black pixels around
    and between them (torchvision's make_grid layout; one image is its own grid)."""
    n, h, w, c = array.shape
    if n == 1:
        return array[0]
    columns = grid_nrow(n)
    rows = math.ceil(n / columns)
    out = np.zeros((rows * (h + GRID_PADDING) + GRID_PADDING, columns * (w + GRID_PADDING) + GRID_PADDING, c), np.uint8)
    for i, image in enumerate(array):
        y, x = divmod(i, columns)
        top, left = y * (h + GRID_PADDING) + GRID_PADDING, x * (w + GRID_PADDING) + GRID_PADDING
        out[top : top + h, left : left + w] = image
    return out


def grid_png(images: torch.Tensor) -> bytes:
    """A batch (N, C, H, W) in [-1, 1] as one PNG grid."""
    return png(grid(pixels(images)))


@torch.inference_mode()
def downscale(images: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """A batch (N, C, H, W) shrunk to at most `max_side` pixels a side (the aspect kept), averaging
    the pixels each new one covers: a preview of a large image costs a fraction of its bytes."""
    side = max(images.shape[-2:])
    if max_side is None or side <= max_side:
        return images
    size = [max(1, round(s * max_side / side)) for s in images.shape[-2:]]
    return F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


def grid_and_images_b64(images: torch.Tensor) -> tuple[str, list[str]]:
    """The grid and each image of a batch (N, C, H, W) in [-1, 1], as base64 PNGs."""
    array = pixels(images)
    return b64(png(grid(array))), [b64(png(image)) for image in array]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- images a request sends (init_image, mask) ----------------------------------------------------

DATA_URL_PREFIX = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(text: str, max_bytes: int, size: int, what: str) -> Image.Image:
    """A base64 PNG (a data:image/png;base64, prefix allowed) of size × size (for model `what`) as an
    unloaded PIL image, or ValueError saying why not. Its size is read from its header (IHDR) before
    PIL looks at it: a decompression bomb is refused unopened."""
    if text.startswith(DATA_URL_PREFIX):
        text = text[len(DATA_URL_PREFIX) :]
    if len(text) > 4 * math.ceil(max_bytes / 3) + 4:  # before decoding: the base64 of max_bytes, and some padding
        raise ValueError(f"is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ValueError("is not base64") from None
    if len(data) > max_bytes:
        raise ValueError(f"is larger than {max_bytes} bytes ({len(data)})")
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        raise ValueError("is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    if (width, height) != (size, size):
        raise ValueError(f"must be {size}×{size} for model {what}, not {width}×{height}")
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except Exception:  # PIL raises many kinds for a broken header
        raise ValueError("is not a readable PNG") from None
    return image


def image_array(image: Image.Image, channels: int) -> np.ndarray:
    """A PNG from decode_png (its size already checked) as (channels, H, W) float32 in [0, 1]: converted
    to grey (L) or RGB; transparency composited on black. ValueError for unreadable pixels. NumPy, not
    torch: this runs on the event loop's thread, which must run no parallel torch kernel (server.loop)."""
    try:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit grey (or float): to 8 bits
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8))
        rgba = image.convert("RGBA")
    except Exception:
        raise ValueError("is not a readable PNG (its pixels could not be decoded)") from None
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    flat = Image.alpha_composite(black, rgba).convert("L" if channels == 1 else "RGB")
    array = np.asarray(flat, dtype=np.float32).reshape(flat.height, flat.width, channels)
    return array.transpose(2, 0, 1) / np.float32(255)
