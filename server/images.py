"""Samples in [-1, 1] → PNG bytes and base64 strings. Called from a thread pool, never from the
sampling thread or the event loop: encoding is CPU work that would stall either."""

from __future__ import annotations

import base64
import io
import math
import struct
import zlib

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


# --- images a request sends (init_image, mask, and those of a branch's "from") ----------------------

DATA_URL_PREFIX = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # by colour type (PNG, 11.2.2)
CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")
# What the decoder is given: the critical chunks and transparency. Other ancillary chunks (text, ICC
# profiles, APNG frames) change nothing here, and some would be decompressed or obeyed by PIL: dropped unread.
KEPT = (*CRITICAL, b"tRNS")


def decode_image(text: str, max_bytes: int, size: int, channels: int, what: str) -> np.ndarray:
    """Any image of a request, a base64 PNG (a data:image/png;base64, prefix allowed), as (channels, size,
    size) float32 in [0, 1], or ValueError saying why not (`what`: the model). Its chunks are checked before
    the decoder sees any, and the decoder's reading of its size before it decodes a pixel: the work and
    memory of a request's image are bounded by the model's size, whatever its bytes say."""
    text = text.removeprefix(DATA_URL_PREFIX)
    if len(text) > 4 * math.ceil(max_bytes / 3) + 4:  # before decoding: the base64 of max_bytes, and some padding
        raise ValueError(f"is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ValueError("is not base64") from None
    if len(data) > max_bytes:
        raise ValueError(f"is larger than {max_bytes} bytes ({len(data)})")
    chunks = png_chunks(data)
    width, height = struct.unpack(">II", chunks[0][1][:8])
    if (width, height) != (size, size):
        raise ValueError(f"must be {size}×{size} for model {what}, not {width}×{height}")
    _check_pixel_data(chunks)
    kept = b"".join(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
                    for kind, body in chunks if kind in KEPT)  # fmt: skip
    try:
        image = Image.open(io.BytesIO(PNG_SIGNATURE + kept), formats=["PNG"])
    except Exception:  # PIL raises many kinds for a header it cannot read
        raise ValueError("is not a readable PNG") from None
    if image.size != (size, size):  # the decoder's reading, which decides the memory it will take
        raise ValueError(f"must be {size}×{size} for model {what}, not {image.width}×{image.height} as decoded")
    return _pixels(image, channels, size)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) chunks of a PNG file, or ValueError: each whole, with a valid type and CRC, in the
    order and number the specification allows (_check_order), IHDR well-formed, nothing after IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("is not a PNG")
    chunks, position = [], len(PNG_SIGNATURE)
    while not chunks or chunks[-1][0] != b"IEND":
        if len(data) - position < 12:
            raise ValueError("is not a whole PNG (it ends before its IEND chunk)")
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 12 + length
        if end > len(data):  # within the specification's bound (2^31 - 1), as the data is smaller
            raise ValueError("is not a valid PNG (a chunk's length runs past the end of the data)")
        if not kind.isalpha():  # bytes: ASCII letters only
            raise ValueError(f"is not a valid PNG (a chunk type {kind!r})")
        body = data[position + 8 : end - 4]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise ValueError(f"is not a valid PNG (chunk {kind.decode()} fails its CRC)")
        chunks.append((kind, body))
        position = end
    if position != len(data):
        raise ValueError("is not a valid PNG (data after its IEND chunk)")
    _check_order([kind for kind, _ in chunks])
    _check_header(chunks[0][1])
    return chunks


def _check_order(kinds: list[bytes]) -> None:
    if kinds[0] != b"IHDR":
        raise ValueError(f"is not a valid PNG (its first chunk is {kinds[0].decode()}, not IHDR)")
    for kind in (b"IHDR", b"PLTE", b"tRNS", b"IEND"):
        if kinds.count(kind) > 1:
            raise ValueError(f"is not a valid PNG (more than one {kind.decode()} chunk)")
    unknown = [kind for kind in kinds if kind[:1].isupper() and kind not in CRITICAL]
    if unknown:
        raise ValueError(f"is not a valid PNG (an unknown critical chunk {unknown[0].decode()})")
    idats = [i for i, kind in enumerate(kinds) if kind == b"IDAT"]
    if not idats:
        raise ValueError("is not a valid PNG (no IDAT chunk)")
    if idats != list(range(idats[0], idats[-1] + 1)):
        raise ValueError("is not a valid PNG (its IDAT chunks are not consecutive)")
    if any(kind in (b"PLTE", b"tRNS") for kind in kinds[idats[0] :]):
        raise ValueError("is not a valid PNG (PLTE or tRNS after IDAT)")
    if b"PLTE" in kinds and b"tRNS" in kinds and kinds.index(b"tRNS") < kinds.index(b"PLTE"):
        raise ValueError("is not a valid PNG (tRNS before PLTE)")


def _check_header(header: bytes) -> None:
    if len(header) != 13:
        raise ValueError("is not a valid PNG (its IHDR chunk is not 13 bytes)")
    depth, colour, compression, filtering, interlace = header[8:]
    if depth not in BIT_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        raise ValueError("is not a valid PNG (its IHDR has an invalid bit depth, colour type or method)")


SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples a pixel, by colour type
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_pixel_data(chunks: list[tuple[bytes, bytes]]) -> None:
    """The IDATs must inflate to one whole zlib stream of exactly the bytes the header calls for (each
    row's filter byte and pixels, per interlace pass): PIL would fill missing rows with black, and
    never looks at extra data. Inflated at most one byte past that size, so a zlib bomb stops there."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    bits = depth * SAMPLES[colour]
    expected = 0
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        columns, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if columns and rows:
            expected += rows * (1 + (columns * bits + 7) // 8)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"), expected + 1)
    except zlib.error:
        raise ValueError("is not a valid PNG (its pixel data is not a zlib stream)") from None
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        raise ValueError(f"is not a valid PNG (its pixel data is not the {expected} bytes its header calls for)")


def _pixels(image: Image.Image, channels: int, size: int) -> np.ndarray:
    """An opened PNG of size × size as (channels, H, W) float32 in [0, 1]: converted to grey (L) or RGB;
    transparency composited on black. ValueError for unreadable pixels. NumPy, not torch: this runs on
    the event loop's thread, which must run no parallel torch kernel (server.loop)."""
    try:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit grey (or float): to 8 bits
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8))
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        flat = Image.alpha_composite(black, image.convert("RGBA")).convert("L" if channels == 1 else "RGB")
    except Exception:  # PIL's messages are its own: the client hears only that the pixels are bad
        raise ValueError("is not a readable PNG (its pixels could not be decoded)") from None
    if flat.size != (size, size):
        raise ValueError(f"is not a {size}×{size} image once decoded")
    array = np.asarray(flat, dtype=np.float32).reshape(size, size, channels)
    return array.transpose(2, 0, 1) / np.float32(255)
