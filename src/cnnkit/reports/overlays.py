"""Heatmaps over images (Grad-CAM's, ``cnnkit.runtime.explanation``): numpy and Pillow only.

The colours are the 'jet' map Grad-CAM's paper and most tools draw with (cold blue, through
cyan, green and yellow, to hot dark red), written out here as a 256-entry table so that no
plotting library is needed to draw one.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from cnnkit.fileio import atomic_write_bytes
from cnnkit.messages import short_repr

DEFAULT_ALPHA = 0.45  # the heatmap's share of each pixel: the image stays readable under it


def _jet_table() -> np.ndarray:
    """(256, 3) uint8: matplotlib's 'jet' as piecewise-linear ramps, each colour channel a
    trapezoid over [0, 1] (blue peaks at 1/4, green at 1/2, red at 3/4; the ends dark)."""
    levels = np.linspace(0.0, 1.0, 256)
    channels = [np.clip(1.5 - np.abs(4 * levels - centre), 0, 1) for centre in (3, 2, 1)]  # red, green, blue
    return np.rint(np.stack(channels, axis=1) * 255).astype(np.uint8)


JET = _jet_table()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """A 2-D map of values in [0, 1] (clipped) as uint8 RGB ``(H, W, 3)`` in the jet colours."""
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    return JET[np.rint(np.clip(values, 0, 1) * 255).astype(np.intp)]


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """``image`` (uint8 ``(H, W, 3)``) under ``heatmap`` (``(h, w)`` values in [0, 1], resized to
    the image bilinearly), coloured and blended with weight ``alpha``: uint8 ``(H, W, 3)``."""
    image = np.asarray(image)
    heatmap = np.asarray(heatmap)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3). Received: dtype={image.dtype}, shape={image.shape}")
    if heatmap.ndim != 2 or heatmap.size == 0 or not np.issubdtype(heatmap.dtype, np.number):
        raise ValueError(f"heatmap must be a 2-D array of numbers. Received: shape={heatmap.shape}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={short_repr(alpha)}")
    height, width = image.shape[:2]
    values = np.nan_to_num(heatmap.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if values.shape != (height, width):
        # A float32 array is a mode "F" image: it resizes the values themselves, not 8-bit levels of them.
        resized = Image.fromarray(values).resize((width, height), Image.Resampling.BILINEAR)
        values = np.asarray(resized, dtype=np.float32)
    colours = colorize(values).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_overlay(
    path: str | os.PathLike, image: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA
) -> Path:
    """Write ``heatmap_overlay(image, heatmap, alpha)`` to ``path`` atomically (the format from its
    suffix: ``.png``, ``.jpg``, ...; PNG when it names none Pillow knows); the path written."""
    path = Path(path)
    overlay = heatmap_overlay(image, heatmap, alpha)
    extension = path.suffix.lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        Image.init()  # Pillow registers its plug-ins' extensions lazily
        image_format = Image.registered_extensions().get(extension, "PNG")
    buffer = io.BytesIO()
    Image.fromarray(overlay).save(buffer, format=image_format)
    atomic_write_bytes(path, buffer.getvalue())
    return path
