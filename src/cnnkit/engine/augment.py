"""Training-time augmentation on normalised ``(N, 3, H, W)`` batches: random-resized crops, flips,
translations, cutout."""

from __future__ import annotations

import math
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
    crop_boxes: torch.Tensor | None = None  # (N, 4): width, height, centre x, centre y as fractions

    def __getitem__(self, share: slice | torch.Tensor) -> RandomDraw:
        return RandomDraw(
            None if self.shifts is None else self.shifts[share],
            None if self.cutout_corners is None else self.cutout_corners[share],
            None if self.crop_boxes is None else self.crop_boxes[share],
        )


@dataclass(frozen=True)
class RandomCrops:
    """Random-resized crops (Inception's augmentation): a crop of ``scale`` of the image's area with
    aspect ratio in ``ratio``, anywhere it fits, resized to ``size`` x ``size`` (bilinear)."""

    scale: tuple[float, float]
    ratio: tuple[float, float]
    size: int

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``(count, 4)`` boxes: width and height as fractions of the side, and the centre."""
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(count, generator=generator)
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(low + (high - low) * torch.rand(count, generator=generator))
        width = torch.sqrt(area * aspect).clamp(max=1.0)
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        centre = torch.rand(count, 2, generator=generator)
        centre_x = width / 2 + centre[:, 0] * (1 - width)
        centre_y = height / 2 + centre[:, 1] * (1 - height)
        return torch.stack([width, height, centre_x, centre_y], dim=1)

    def __call__(self, inputs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Each image's box of ``inputs`` ``(N, 3, H, W)``, resampled to ``(N, 3, size, size)``."""
        boxes = boxes.to(inputs.device, inputs.dtype)
        theta = torch.zeros(len(inputs), 2, 3, device=inputs.device, dtype=inputs.dtype)
        # affine_grid's coordinates run from -1 to 1 across the image: a box of width w centred
        # at c (fractions) maps the output's [-1, 1] onto [2c - 1 - w, 2c - 1 + w].
        theta[:, 0, 0], theta[:, 0, 2] = boxes[:, 0], 2 * boxes[:, 2] - 1
        theta[:, 1, 1], theta[:, 1, 2] = boxes[:, 1], 2 * boxes[:, 3] - 1
        grid = F.affine_grid(theta, [len(inputs), inputs.shape[1], self.size, self.size], align_corners=False)
        crops = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return crops.contiguous(memory_format=torch.channels_last)


class Augmenter:
    """Flips, random translations and cutout, drawn from one seeded generator.

    ``alternating`` flip (airbench): each image is flipped at random in epoch 0, and in every
    odd epoch it is flipped relative to that first choice, so over two epochs every image is
    seen both ways: more diversity than independent coin flips, at no cost.
    """

    def __init__(
        self,
        count: int,
        flip: str,
        translate: int,
        generator: torch.Generator,
        cutout: int = 0,
        crops: RandomCrops | None = None,
    ) -> None:
        self.flip = flip
        self.translate = translate
        self.cutout = cutout
        self.crops = crops
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
        shifts = corners = boxes = None
        if self.crops is not None:
            boxes = self.crops.draw(count, self.generator)
        if self.translate:
            shifts = torch.randint(-self.translate, self.translate + 1, (count, 2), generator=self.generator)
        if self.cutout:
            corners = torch.rand(count, 2, generator=self.generator)
        return RandomDraw(shifts, corners, boxes)

    def __call__(
        self, inputs: torch.Tensor, flips: torch.Tensor, draw: RandomDraw | None = None
    ) -> torch.Tensor:
        """Augment a batch; ``flips`` holds the batch's rows of ``flips_for_epoch``.

        ``draw`` (from ``draw``, sliced to this rank's share) lets distributed ranks share one
        draw for the global batch; by default it is drawn here.
        """
        draw = self.draw(len(inputs)) if draw is None else draw
        if self.crops is not None:  # first: the other augmentations work at the model's input size
            inputs = self.crops(inputs, draw.crop_boxes)
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


def crops_for(recipe, stored_side: int, input_size: int) -> RandomCrops | None:
    """Random-resized crops from the recipe, or random crops of the input size from images stored
    larger (the same scale as the centre crop evaluation sees); None for neither."""
    if recipe.random_crops:
        return RandomCrops(recipe.crop_scale, recipe.crop_ratio, input_size)
    if stored_side > input_size:
        share = (input_size / stored_side) ** 2
        return RandomCrops((share, share), (1.0, 1.0), input_size)
    return None
