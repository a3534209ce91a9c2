"""From stored uint8 images to model inputs. The same numbers serve training and prediction."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    def from_images(cls, images: torch.Tensor, sample_limit: int = 10_000) -> Normalization:
        """Channel statistics of uint8 ``(N, H, W, 3)`` images (of at most ``sample_limit`` of them)."""
        sample = images[:: max(1, len(images) // sample_limit)].reshape(-1, 3).double() / 255
        return cls(mean=tuple(sample.mean(0).tolist()), std=tuple(sample.std(0).clamp_min(1e-3).tolist()))


class InputTransform:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in channels_last memory, normalised.

    Permuting NHWC to NCHW *is* the channels_last layout, so no copy happens until the float
    conversion, and convolutions on CPU (oneDNN) and CUDA (cuDNN) are fastest in that layout.
    The per-channel scale and shift are built once: per step they were a dozen tiny ops.
    """

    def __init__(self, normalization: Normalization, device: torch.device) -> None:
        mean = torch.tensor(normalization.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(normalization.std, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift, one fused multiply-add.
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"Images must be uint8 of shape (N, H, W, 3). Received: dtype={images.dtype}, "
                f"shape={tuple(images.shape)}"
            )
        images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return torch.addcmul(self.shift, images.float(), self.scale).contiguous(
            memory_format=torch.channels_last
        )
