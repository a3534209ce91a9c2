"""Training-time augmentation on normalised ``(N, 3, H, W)`` batches: flips, translations, cutout."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomDraw:
    """The random numbers of one global batch: translations and cutout positions (or None).

    Drawn once for the global batch so that distributed ranks, each taking its share, keep their
    generators in step; cutout corners are fractions of the free range, whatever the image size.
    """

    shifts: torch.Tensor | None = None
    cutout_corners: torch.Tensor | None = None

    def __getitem__(self, share: slice | torch.Tensor) -> RandomDraw:
        return RandomDraw(
            None if self.shifts is None else self.shifts[share],
            None if self.cutout_corners is None else self.cutout_corners[share],
        )


class Augmenter:
    """Flips, random translations and cutout, drawn from one seeded generator.

    ``alternating`` flip (airbench): each image is flipped at random in epoch 0, and in every
    odd epoch it is flipped relative to that first choice, so over two epochs every image is
    seen both ways: more diversity than independent coin flips, at no cost.
    """

    def __init__(
        self, count: int, flip: str, translate: int, generator: torch.Generator, cutout: int = 0
    ) -> None:
        self.flip = flip
        self.translate = translate
        self.cutout = cutout
        self.generator = generator
        self.first_flips = torch.rand(count, generator=generator) < 0.5

    def flips_for_epoch(self, epoch: int) -> torch.Tensor:
        """Which images (by index into the training set) are mirrored in ``epoch`` (0-based)."""
        if self.flip == "alternating":
            return self.first_flips ^ bool(epoch % 2)
        if self.flip == "random":
            return torch.rand(len(self.first_flips), generator=self.generator) < 0.5
        return torch.zeros(len(self.first_flips), dtype=torch.bool)

    def draw(self, count: int) -> RandomDraw:
        """Random ``(dy, dx)`` shifts and cutout corners for ``count`` images (None where unused)."""
        shifts = corners = None
        if self.translate:
            shifts = torch.randint(-self.translate, self.translate + 1, (count, 2), generator=self.generator)
        if self.cutout:
            corners = torch.rand(count, 2, generator=self.generator)
        return RandomDraw(shifts, corners)

    def __call__(
        self, inputs: torch.Tensor, flips: torch.Tensor, draw: RandomDraw | None = None
    ) -> torch.Tensor:
        """Augment a batch; ``flips`` holds the batch's rows of ``flips_for_epoch``.

        ``draw`` (from ``draw``, sliced to this rank's share) lets distributed ranks share one
        draw for the global batch; by default it is drawn here.
        """
        draw = self.draw(len(inputs)) if draw is None else draw
        if self.flip != "none":
            mask = flips.to(inputs.device).view(-1, 1, 1, 1)
            inputs = torch.where(mask, inputs.flip(-1), inputs)
        if self.translate:
            inputs = translate(inputs, draw.shifts.to(inputs.device), self.translate)
        if self.cutout:
            inputs = cutout(inputs, draw.cutout_corners.to(inputs.device), self.cutout)
        return inputs


def translate(inputs: torch.Tensor, shifts: torch.Tensor, limit: int) -> torch.Tensor:
    """Shift each image by ``shifts[i] = (dy, dx)`` pixels (|d| <= limit), reflecting at the edges.

    One masked copy per distinct shift: (2 * limit + 1)^2 vectorised copies instead of a Python
    loop over images.
    """
    height, width = inputs.shape[-2:]
    padded = F.pad(inputs, (limit,) * 4, mode="reflect")
    output = torch.empty_like(inputs)
    for dy in range(-limit, limit + 1):
        for dx in range(-limit, limit + 1):
            mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if mask.any():
                top, left = limit + dy, limit + dx
                output[mask] = padded[mask, :, top : top + height, left : left + width]
    return output


def cutout(inputs: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square inside each image (DeVries & Taylor, 2017; airbench96).

    ``corners[i]`` in [0, 1)^2 places image i's square anywhere it fits whole. Zero is the
    per-channel mean once inputs are standardised, so the square carries no signal.
    """
    height, width = inputs.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"cutout must be at most the image size ({height}x{width}). Received: cutout={size}")
    top = (corners[:, 0] * (height - size + 1)).long().view(-1, 1, 1)
    left = (corners[:, 1] * (width - size + 1)).long().view(-1, 1, 1)
    rows = torch.arange(height, device=inputs.device).view(1, -1, 1)
    columns = torch.arange(width, device=inputs.device).view(1, 1, -1)
    inside = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
    return inputs.masked_fill(inside.unsqueeze(1), 0)
