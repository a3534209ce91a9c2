"""Decoding one image file into an RGB uint8 array, resized by one fixed policy.

Pure functions: no I/O besides the bytes given, so callers can decide how to treat failures.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageChops, ImageOps

from cnnkit.data.errors import ImageDecodeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_ALLOWED = ", ".join(IMAGE_EXTENSIONS)
# Larger images are refused before decoding: 64 megapixels (8000 x 8000) covers phone and camera
# photos, while a small file claiming far more pixels is how a decompression bomb starts.
MAX_IMAGE_PIXELS = 64_000_000
# Pillow shrinks in integer steps first and resamples only the final factor-of-3 stretch:
# much faster when downscaling large photos, visually the same.
_REDUCING_GAP = 3.0


def is_image_name(name: str) -> bool:
    """Whether ``name`` has one of the supported image extensions (any letter case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(
    data: bytes, image_size: int | None, name: str, resize_size: int | None = None
) -> np.ndarray:
    """Decode image file bytes into an (H, W, 3) uint8 RGB array.

    Every Pillow mode becomes RGB (see ``to_rgb``): transparent images are composited on white,
    16-bit and float images are scaled to 8 bits, CMYK is inverted per its Adobe marker. EXIF
    orientation is applied; of an animated GIF or a multi-page TIFF, the first frame is used.
    With ``image_size``, an image of another size has its shorter side resized to ``image_size``
    (bilinear) and is then center-cropped to an ``image_size`` square. With ``resize_size`` (>=
    ``image_size``), the shorter side is resized to ``resize_size`` instead, and the centre
    ``image_size`` square of that is kept (``center_crop``): the evaluation transform of models
    trained on random crops, which keeps the middle ``image_size / resize_size`` of the view.

    Args:
        data: the encoded file content.
        image_size: side of the square output, or ``None`` to keep the image's own size.
        resize_size: the square the image is resized to before the centre crop (default: ``image_size``).
        name: file name used in error messages.

    Raises:
        ImageDecodeError: the bytes are not a decodable image (empty, truncated, corrupt, or
            of an unknown format); the message names ``name``, ``reason`` is the short cause.
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)", f"{name} is an empty file (0 bytes)")
    if resize_size is not None and image_size is not None and resize_size != image_size:
        return center_crop(decode_image(data, resize_size, name), image_size)
    try:
        with open_header(data) as image:
            _check_pixel_count(image, name)
            if image_size is not None and image.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the target is much smaller.
                image.draft("RGB", (image_size, image_size))
            # A truncated file raises here: ImageFile.LOAD_TRUNCATED_IMAGES stays False, as a
            # half-grey photo would be silently wrong training data.
            image.load()
            _apply_exif_orientation(image)
            rgb = to_rgb(image)
            if image_size is not None and rgb.size != (image_size, image_size):
                rgb = resize_to_square(rgb, image_size)
            return np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception as error:
        # Pillow's format plugins meet malformed bytes with many exception types (OSError,
        # SyntaxError, struct.error, IndexError, ZeroDivisionError, ...): for one file's bytes
        # each means the same thing, that this file is not a usable image.
        detail = _decoder_detail(error)
        raise ImageDecodeError(
            name,
            f"cannot decode ({detail})",
            f"Cannot decode {name} as an image ({detail}); supported formats: {_ALLOWED}",
        ) from error


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` square of an ``(H, W, ...)`` array (a view; offsets rounded down).

    Training stores images at the resize size and crops them with this very slice, so that the
    pixels a model is scored on in training are those ``decode_image`` gives it later.
    """
    height, width = image.shape[:2]
    if size > min(height, width):
        raise ValueError(f"Cannot crop {size} px from a {height}x{width} image.")
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def image_pixels(data: bytes) -> int | None:
    """Width x height from the file's header alone (no decoding), or None if it is no image."""
    try:
        with open_header(data) as image:
            width, height = image.size
    except Exception:
        return None
    return width * height


def open_header(data: bytes) -> Image.Image:
    """``data`` opened by Pillow, header read, nothing decoded (no decompression-bomb warning)."""
    # Pillow warns (DecompressionBombWarning) from 89 megapixels on; the pixel count is checked
    # here instead, with one message, so nothing reaches the user's stderr.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _check_pixel_count(image: Image.Image, name: str) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        reason = f"too many pixels ({width} x {height}; the limit is {MAX_IMAGE_PIXELS / 1e6:g} megapixels)"
        raise ImageDecodeError(name, reason, f"{name} has {reason}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded Pillow image of any mode to RGB, keeping what a viewer would show.

    - 16-bit grey (``I;16``, ``I;16B``, and ``I`` as Pillow opens 16-bit PNGs and TIFFs) is
      scaled from 0-65535 to 0-255 (divided by 257), not clipped at 255.
    - float (``F``): values in [0, 1] are scaled by 255; an image with larger values is taken
      to be in 0-255 (what Pillow itself makes of 8-bit data); NaN becomes 0.
    - alpha (``RGBA``, ``LA``, ``PA``, palette or grey with a transparent colour) is composited
      on white; CMYK JPEGs without an Adobe marker are un-inverted (Pillow assumes one).
    - everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) via Pillow.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return Image.fromarray(_sixteen_bit_to_eight(np.asarray(image))).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_eight(np.asarray(image))).convert("RGB")
    if mode == "CMYK" and image.format == "JPEG" and "adobe" not in image.info:
        # Pillow reads every CMYK JPEG as Adobe's inverted CMYK; without the marker the
        # file holds plain CMYK, so undo that inversion.
        image = ImageChops.invert(image)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image if mode == "RGB" else image.convert("RGB")
    # Transparent pixels carry arbitrary colour; white is what viewers show behind them.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


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


def _apply_exif_orientation(image: Image.Image) -> None:
    # Broken EXIF metadata is no reason to lose a photo whose pixels decode: keep it as stored.
    with contextlib.suppress(Exception):
        # In place: a copy of every image would double the cost of small ones.
        ImageOps.exif_transpose(image, in_place=True)


def _sixteen_bit_to_eight(values: np.ndarray) -> np.ndarray:
    # 65535 / 257 = 255 exactly; adding half the divisor rounds to the nearest level.
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _float_to_eight(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _decoder_detail(error: Exception) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        # Pillow's message names the in-memory buffer (with its address): useless to the user.
        return "unknown image format"
    if isinstance(error, Image.DecompressionBombError):  # past twice Pillow's own limit, at open
        return f"too many pixels (the limit is {MAX_IMAGE_PIXELS / 1e6:g} megapixels)"
    # One line, whatever the decoder wrote: skipped-file lists hold one file a line.
    message = " ".join(str(error).replace("\0", " ").split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
