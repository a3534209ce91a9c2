"""The one check of image arrays handed to cnnkit: uint8 RGB pixels, (N, H, W, 3).

Works on NumPy arrays and torch tensors alike, and imports neither (the ONNX path is torch-free).
"""

from __future__ import annotations

from typing import Any


def check_pixels(images: Any, image_size: int | None = None, name: str = "images") -> None:
    """Raise ``ValueError`` unless ``images`` are uint8 (N, H, W, 3); H = W = ``image_size`` if given."""
    dtype = str(getattr(images, "dtype", type(images).__name__)).removeprefix("torch.")
    if dtype != "uint8":
        raise ValueError(
            f"{name} must hold uint8 pixels (0-255); cnnkit scales them itself, so don't divide by 255. "
            f"Received: dtype={dtype}"
        )
    shape = tuple(getattr(images, "shape", ()))
    expected = "(N, height, width, 3)" if image_size is None else f"(N, {image_size}, {image_size}, 3)"
    if (
        len(shape) != 4
        or shape[-1] != 3
        or (image_size is not None and shape[1:3] != (image_size, image_size))
    ):
        raise ValueError(f"{name} must have shape {expected}. Received: shape={shape}")
