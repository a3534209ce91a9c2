"""Training-time augmentation on normalised ``(N, 3, H, W)`` batches: flips and translations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Augmenter:
    """Flips and random translations, drawn from one seeded generator.

    ``alternating`` flip (airbench): each image is flipped at random in epoch 0, and in every
    odd epoch it is flipped relative to that first choice, so over two epochs every image is
    seen both ways: more diversity than independent coin flips, at no cost.
    """

    def __init__(self, count: int, flip: str, translate: int, generator: torch.Generator) -> None:
        self.flip = flip
        self.translate = translate
        self.generator = generator
        self.first_flips = torch.rand(count, generator=generator) < 0.5

    def flips_for_epoch(self, epoch: int) -> torch.Tensor:
        """Which images (by index into the training set) are mirrored in ``epoch`` (0-based)."""
        if self.flip == "alternating":
            return self.first_flips ^ bool(epoch % 2)
        if self.flip == "random":
            return torch.rand(len(self.first_flips), generator=self.generator) < 0.5
        return torch.zeros(len(self.first_flips), dtype=torch.bool)

    def draw_shifts(self, count: int) -> torch.Tensor | None:
        """Random ``(dy, dx)`` shifts for ``count`` images (None without translation)."""
        if not self.translate:
            return None
        return torch.randint(-self.translate, self.translate + 1, (count, 2), generator=self.generator)

    def __call__(
        self, inputs: torch.Tensor, flips: torch.Tensor, shifts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Augment a batch; ``flips`` holds the batch's rows of ``flips_for_epoch``.

        ``shifts`` (from ``draw_shifts``) lets distributed ranks share one draw for the global
        batch, so the generator stays in step on every rank; by default they are drawn here.
        """
        if self.flip != "none":
            mask = flips.to(inputs.device).view(-1, 1, 1, 1)
            inputs = torch.where(mask, inputs.flip(-1), inputs)
        if self.translate:
            shifts = self.draw_shifts(len(inputs)) if shifts is None else shifts
            inputs = translate(inputs, shifts.to(inputs.device), self.translate)
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
