"""Image files in every format and mode the decoder accepts, and the broken files it must skip."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

CYAN = (0, 255, 255)


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def sixteen_bit(values: list[list[int]], format: str = "PNG", mode: str = "I;16") -> bytes:
    """A 16-bit grey image (``I;16`` little- or ``I;16B`` big-endian, or 32-bit ``I``)."""
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    array = np.array(values, dtype=dtype)
    image = Image.frombytes(mode, (array.shape[1], array.shape[0]), array.tobytes())
    return encode(image, format)


def float_tiff(values: list[list[float]]) -> bytes:
    return encode(Image.fromarray(np.array(values, dtype=np.float32), "F"), "TIFF")


def cmyk_jpeg_without_adobe_marker(cmyk: tuple[int, int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    """A plain (non-inverted) CMYK JPEG, as some non-Adobe software writes them.

    libjpeg always writes Adobe's marker and inverted values for CMYK; saving the inverted colour
    and dropping the marker leaves the plain values in a file that does not claim inversion.
    """
    inverted = tuple(255 - value for value in cmyk)
    data = encode(Image.new("CMYK", size, inverted), "JPEG", quality=100)
    return remove_jpeg_segment(data, b"\xff\xee")


def remove_jpeg_segment(data: bytes, marker: bytes) -> bytes:
    position = 2  # after SOI
    while position < len(data) and data[position : position + 2] != b"\xff\xda":
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if data[position : position + 2] == marker:
            return data[:position] + data[position + 2 + length :]
        position += 2 + length
    raise AssertionError(f"no {marker.hex()} segment before the scan")


def exif_rotated_jpeg() -> bytes:
    """8 wide x 4 tall, left half red, right half blue, EXIF orientation 6 (turn clockwise to view)."""
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, :4] = (255, 0, 0)
    pixels[:, 4:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=100)


def animated_gif() -> bytes:
    """Two frames, red then blue: the first one counts."""
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def palette_png(transparent: bool) -> bytes:
    """Left pixel palette index 0 (red), right pixel index 1 (green); index 1 transparent if asked."""
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    return encode(image, "PNG", **({"transparency": 1} if transparent else {}))


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def photo(width: int = 32, height: int = 24, seed: int = 0, format: str = "JPEG") -> bytes:
    """A smooth colour gradient (JPEG-friendly) with a seed-dependent tint."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, seed % 256)], -1
    )
    return encode(Image.fromarray(pixels.astype(np.uint8)), format)


def random_bytes(count: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8).tobytes()
