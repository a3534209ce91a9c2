"""From stored uint8 images to model inputs. The same numbers serve training and prediction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.data.pixels import check_pixels
from cnnkit.data.stored_images import StoredImages
from cnnkit.runtime.constants import PIXEL_FORMATS, UINT8_NHWC

# Images whose histograms are counted at a time by ``Normalization.from_images``.
_STATISTICS_CHUNK = 1000


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(pixel / 255 - mean) / std``; stored in every checkpoint."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> Normalization:
        return cls(mean=tuple(values["mean"]), std=tuple(values["std"]))

    @classmethod
    def for_recipe(cls, kind: str, images: torch.Tensor) -> Normalization:
        """``"scale"``: pixels / 255 (the tutorial); ``"standardize"``: statistics of ``images``."""
        return cls.from_images(images) if kind == "standardize" else cls()

    @classmethod
    def from_images(cls, images: torch.Tensor | StoredImages, sample_limit: int = 10_000) -> Normalization:
        """Channel statistics of uint8 ``(N, H, W, 3)`` images (of at most ``sample_limit`` of them,
        evenly spaced), in memory or stored.

        Counted as one 256-bin histogram per channel, a chunk of images at a time: exact, and the
        memory it takes stays at a chunk (the whole sample in float64 was 1 GB at 64 px).
        """
        positions = torch.arange(0, len(images), max(1, len(images) // sample_limit))
        counts = torch.zeros(3, 256, dtype=torch.float64)
        for start in range(0, len(positions), _STATISTICS_CHUNK):
            pixels = images[positions[start : start + _STATISTICS_CHUNK]].reshape(-1, 3)
            for channel in range(3):
                counts[channel] += torch.bincount(pixels[:, channel], minlength=256).double()
        values = torch.arange(256, dtype=torch.float64) / 255
        total = counts[0].sum()
        mean = (counts * values).sum(1) / total
        variance = (counts * (values - mean[:, None]) ** 2).sum(1) / (total - 1)  # unbiased, as torch.std
        return cls(mean=tuple(mean.tolist()), std=tuple(variance.sqrt().clamp_min(1e-3).tolist()))


def center_crop_images(images: torch.Tensor | StoredImages, size: int) -> torch.Tensor | StoredImages:
    """The centre ``size`` square of uint8 ``(N, H, W, 3)`` images, as a view; themselves if that size.

    The same offsets as ``cnnkit.data.decode.center_crop``, which prediction decodes with.
    """
    height, width = images.shape[1:3]
    if (height, width) == (size, size):
        return images
    if size > min(height, width):
        raise ValueError(f"Cannot crop {size} px from {height}x{width} images.")
    top, left = (height - size) // 2, (width - size) // 2
    if isinstance(images, StoredImages):  # cropped as each batch is read
        return images.crop(top, left, size, size)
    return images[:, top : top + size, left : left + size]


class InputTransform(nn.Module):
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in channels_last memory, normalised.

    Permuting NHWC to NCHW *is* the channels_last layout, so no copy happens until the float
    conversion, and convolutions on CPU (oneDNN) and CUDA (cuDNN) are fastest in that layout.
    The per-channel scale and shift are built once: per step they were a dozen tiny ops.
    ``pixel_format=FLOAT_NCHW`` takes float ``(N, 3, H, W)`` in [0, 1] instead (an export option).
    """

    def __init__(
        self, normalization: Normalization, device: torch.device | str = "cpu", pixel_format: str = UINT8_NHWC
    ) -> None:
        super().__init__()
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"Unknown pixel format. Received: pixel_format={pixel_format!r}")
        self.pixel_format = pixel_format
        mean = torch.tensor(normalization.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(normalization.std, device=device).view(1, 3, 1, 1)
        pixel_scale = 255.0 if pixel_format == UINT8_NHWC else 1.0
        # (x / 255 - mean) / std  ==  x * scale + shift, one fused multiply-add.
        self.register_buffer("scale", 1.0 / (pixel_scale * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pixel_format == UINT8_NHWC:
            if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):  # shapes are symbolic there
                check_pixels(images)
            images = images.to(self.scale.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return torch.addcmul(self.shift, images, self.scale).contiguous(memory_format=torch.channels_last)


class InputChunks:
    """``images`` (uint8, NHWC) made model-ready by ``transform`` a chunk at a time, every time
    it is iterated: the float copy of a large sample (4x its pixels: ~1 GB for 5,000 images at
    128 px) is never held whole. A sample within ``chunk_bytes`` is one chunk."""

    def __init__(self, images: torch.Tensor, transform: nn.Module, chunk_bytes: int = 256 * 2**20) -> None:
        self.images, self.transform = images, transform
        self.chunk = max(1, chunk_bytes // max(1, 4 * images[0].numel()))

    def __iter__(self):
        for part in torch.split(self.images, self.chunk):
            yield self.transform(part)
