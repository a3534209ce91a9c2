"""Decoding one image file into an RGB uint8 array, resized by one fixed policy.

Pure functions: no I/O besides the bytes given, so callers can decide how to treat failures.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from cnnkit.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_ALLOWED = ", ".join(IMAGE_EXTENSIONS)
# Pillow shrinks in integer steps first and resamples only the final factor-of-3 stretch:
# much faster when downscaling large photos, visually the same.
_REDUCING_GAP = 3.0


def is_image_name(name: str) -> bool:
    """Whether ``name`` has one of the supported image extensions (any letter case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: bytes, image_size: int | None, name: str) -> np.ndarray:
    """Decode image file bytes into an (H, W, 3) uint8 RGB array.

    Transparent images are composited on white and EXIF orientation is applied. With
    ``image_size``, an image of another size has its shorter side resized to ``image_size``
    (bilinear) and is then center-cropped to an ``image_size`` square.

    Args:
        data: the encoded file content.
        image_size: side of the square output, or ``None`` to keep the image's own size.
        name: file name used in error messages.

    Raises:
        DataError: the bytes are not a decodable image; the message names ``name``.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image_size is not None and image.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the target is much smaller.
                image.draft("RGB", (image_size, image_size))
            image.load()
            # In place: a copy of every image would double the cost of small ones.
            ImageOps.exif_transpose(image, in_place=True)
            rgb = _to_rgb(image)
            if image_size is not None and rgb.size != (image_size, image_size):
                rgb = resize_to_square(rgb, image_size)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise DataError(
            f"Cannot decode {name} as an image ({type(error).__name__}: {error}); "
            f"supported formats: {_ALLOWED}"
        ) from error


def resize_to_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side of ``image`` to ``size`` (bilinear) and center-crop a square."""
    width, height = image.size
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    # Resizing only the centered square box equals resize-then-crop, in one resampling pass.
    return image.resize(
        (size, size),
        Image.Resampling.BILINEAR,
        box=(left, top, left + side, top + side),
        reducing_gap=_REDUCING_GAP,
    )


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
    """Apply ``resize_to_square`` to an (H, W, 3) uint8 array."""
    return np.asarray(resize_to_square(Image.fromarray(image), size), dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    # Transparent pixels carry arbitrary colour; white is what viewers show behind them.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
