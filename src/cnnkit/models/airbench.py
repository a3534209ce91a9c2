"""The fast network of the airbench CIFAR-10 speed records (Keller Jordan, 2024), as cnnkit's default.

    conv 2x2 "whitening" (3 -> 24, frozen weights) -> GELU
    -> 3 groups [conv3x3 -> maxpool2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU]
    -> global max-pool -> linear (no bias) -> x 1/9

Above CIFAR's 32 px the cost of the full-resolution first groups grows with the pixels (at 128 px
a step costs ~18x the 32-px one). ``stem_stride`` makes the whitening layer a patchify stem:
non-overlapping s x s patches, whitened, so the groups run on maps of at most ~48 px whatever
the input size (``"auto"``, the default: see ``stem_stride_for``; up to 48 px it is airbench's
own 2x2 layer, so the CIFAR-10 network is unchanged).

Written for cnnkit from the published description. The first layer is initialised from the
training data (``initialize_from_data``), which is why the engine passes it a sample of images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.models.registry import register_model

# BatchNorm's eps (Keras's default). airbench's 1e-12 turns a channel with no variance in a batch
# into a gain of 1e6 on its gradient and, at evaluation, on any image that differs there: on images
# with flat backgrounds (strokes on black, outlines on white) a max-pooled channel is often one
# constant across a batch, and the first steps' gradients grew to 1e13 and the loss to NaN by
# step 3. PyTorch's 1e-5 (gain 316) still left outlines on white at chance with a validation loss
# of 1e6; 1e-3 (gain 32) learns them. CIFAR-10's channel variances are 1e-2 to 1: see
# docs/benchmarks.md for its accuracy and time before and after. Checkpoints from before keep 1e-12.
BATCHNORM_EPS = 1e-3


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with the scale frozen at 1 (only the bias learns), fast statistics."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = BATCHNORM_EPS) -> None:
        # momentum in PyTorch's convention: the weight of the newest batch (airbench's 0.6 = 1 - 0.4).
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU; ``residual`` adds airbench96's third
    conv -> BN -> GELU and a skip connection around the last two convs."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        momentum: float,
        residual: bool = False,
        eps: float = BATCHNORM_EPS,
    ) -> None:
        super().__init__()
        self.conv1 = dirac_conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, momentum, eps)
        self.conv2 = dirac_conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, momentum, eps)
        self.residual = residual
        if residual:
            self.conv3 = dirac_conv(channels_out, channels_out)
            self.norm3 = BatchNorm(channels_out, momentum, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.pool(self.conv1(x))))
        if not self.residual:
            return F.gelu(self.norm2(self.conv2(x)))
        shortcut = x
        x = F.gelu(self.norm2(self.conv2(x)))
        return shortcut + F.gelu(self.norm3(self.conv3(x)))


def dirac_conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    """A 3x3 conv without bias whose first ``channels_in`` filters start as the identity.

    The identity start makes each group begin as an implicit residual connection (fewer epochs).
    """
    conv = nn.Conv2d(channels_in, channels_out, kernel_size=3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(channels_in, channels_out)])
    return conv


# Three 2x pools leave 2x2 maps at 16 px: the smallest input the network takes. A run on smaller
# images upsamples them to it (runs.choices).
MINIMUM_IMAGE_SIZE = 16
# The groups' largest map side with an automatic stem stride: 32 px costs 1x, 48 px 2.25x.
STEM_MAP_LIMIT = 48
# Whitening filters kept per sign: all 12 of 2x2 patches; the 24 largest-variance directions
# of larger patches (the rest is fine detail a strided stem discards anyway).
WHITENING_FILTERS = 24


def stem_stride_for(image_size: int) -> int:
    """The automatic stem stride: 1 up to 48 px, else the smallest leaving maps of at most 48 px
    (64 -> 2, 96 -> 2, 128 -> 3, 160 -> 4, 224 -> 5). A fixed rule: checkpoints rebuild with it."""
    return max(1, math.ceil(image_size / STEM_MAP_LIMIT))


class FastNet(nn.Module):
    """The airbench network for any square input size and number of classes."""

    head_name = "head"  # the classifier layer, which fine-tuning replaces for new classes
    # What Grad-CAM explains (``cnnkit.runtime.explanation``): the last group's output, before the
    # global max-pool (3x3 maps at 32 px; 4x4 at 64 px, with the automatic stem stride of 2).
    feature_layer_names = ("groups",)

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        widths: tuple[int, int, int] = (64, 256, 256),
        batchnorm_momentum: float = 0.4,
        logit_scale: float | None = 1 / 9,
        unit_head: bool = False,
        residual: bool = False,
        stem_stride: int | str = "auto",
        batchnorm_eps: float = BATCHNORM_EPS,
    ) -> None:
        """``logit_scale`` None divides the logits by the last width (the Muon variant's head);
        ``unit_head`` starts the head's weights at unit standard deviation; ``residual`` gives
        each group a third conv and a skip connection (airbench96); ``stem_stride`` > 1 (or
        ``"auto"``) whitens non-overlapping patches of that side (a patchify stem); ``batchnorm_eps``:
        see ``BATCHNORM_EPS``."""
        super().__init__()
        if image_size < MINIMUM_IMAGE_SIZE:
            raise ValueError(
                f"The fast network pools three times, so image_size must be >= {MINIMUM_IMAGE_SIZE}. "
                f"Received: image_size={image_size}"
            )
        stride = stem_stride_for(image_size) if stem_stride == "auto" else stem_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or image_size // stride < 8:
            raise ValueError(
                f"stem_stride must be 'auto' or an integer >= 1 leaving maps of 8 px or more. "
                f"Received: stem_stride={stem_stride!r} at image_size={image_size}"
            )
        if not isinstance(batchnorm_eps, int | float) or not 0 < batchnorm_eps < 1:
            raise ValueError(f"batchnorm_eps must be in (0, 1). Received: batchnorm_eps={batchnorm_eps!r}")
        # What "auto" became, and the eps, for checkpoints (rebuilt exactly whatever the defaults).
        self.resolved_arguments = {"stem_stride": stride, "batchnorm_eps": float(batchnorm_eps)}
        # Stride 1 is airbench's 2x2 layer (overlapping); a stride s > 1 whitens s x s patches.
        kernel = 2 if stride == 1 else stride
        whitening_width = 2 * min(3 * kernel * kernel, WHITENING_FILTERS)  # eigen-filters and negatives
        self.whiten = nn.Conv2d(3, whitening_width, kernel_size=kernel, stride=stride, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.groups = nn.Sequential(
            ConvGroup(whitening_width, widths[0], batchnorm_momentum, residual, batchnorm_eps),
            ConvGroup(widths[0], widths[1], batchnorm_momentum, residual, batchnorm_eps),
            ConvGroup(widths[1], widths[2], batchnorm_momentum, residual, batchnorm_eps),
        )
        # A global max-pool instead of airbench's MaxPool2d(3): the same on 32x32 inputs (3x3 maps
        # by then) and it adapts to any input size.
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        if unit_head:
            with torch.no_grad():
                self.head.weight /= self.head.weight.std()
        self.logit_scale = 1 / widths[2] if logit_scale is None else logit_scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.whiten(images))
        x = self.pool(self.groups(x)).flatten(1)
        return self.head(x) * self.logit_scale

    def set_first_layer_bias_trainable(self, trainable: bool) -> None:
        """airbench trains the whitening bias for the first epochs only, then freezes it."""
        self.whiten.bias.requires_grad_(trainable)

    @torch.no_grad()
    def initialize_from_data(self, images: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Set the first layer to whiten 2x2 patches of ``images`` (normalised, ``(N, 3, H, W)``,
        or an iterable of such chunks that can be iterated more than once).

        Each filter is an eigenvector of the patch covariance scaled by 1/sqrt(eigenvalue + floor),
        so the layer's outputs on training patches are decorrelated with unit variance; the
        negated copies let the following GELU pass both signs. See ``whitening_filters`` for the
        floor and for directions the data does not have (greyscale images, flat colours).
        """
        weight = self.whiten.weight
        kernel, stride = self.whiten.kernel_size[0], self.whiten.stride[0]
        products, count = [], 0
        for chunk in [images] if isinstance(images, torch.Tensor) else images:
            # The patches in float64 are up to 27x the chunk's pixels: at 128 px and more, a
            # 5,000-image sample's would be gigabytes, so they are summed a slice at a time.
            # (At 32 px the whole sample is one slice: the same sums as ever.)
            for part in torch.split(chunk, _images_per_slice(chunk, kernel, stride)):
                patches = part.float().unfold(2, kernel, stride).unfold(3, kernel, stride)  # N,C,H',W',k,k
                patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, weight[0].numel()).double()
                products.append(patches.T @ patches)
                count += len(patches)
        covariance = (products[0] if len(products) == 1 else torch.stack(products).sum(0)) / count
        filters = whitening_filters(covariance, len(weight) // 2)
        weight.copy_(torch.cat([filters, -filters]).reshape(weight.shape).to(weight.dtype))


# The whitening's eigenvalue floor, relative to the largest eigenvalue: scale-free, unlike
# airbench's absolute 5e-4, which it equals on CIFAR-10 (largest eigenvalue 10.1 of 2x2 patches
# normalised per channel). Directions below it are whitened to less than unit variance (noise,
# JPEG rounding), instead of being amplified as much as the image's content.
WHITENING_FLOOR = 5e-5
# A direction with less variance than this share of the largest does not exist in the data
# (greyscale images: their 2x2 patches span 4 of 12 directions, the other 8 eigenvalues are
# float rounding, 1e-16). CIFAR-10's weakest direction is 1.2e-5 of its largest.
WHITENING_DEAD = 1e-7


def whitening_filters(covariance: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` whitening filters (rows, float64) for patches of this covariance, largest first.

    A filter for a direction the data does not have would output a constant on every image: a
    dead channel, which each BatchNorm downstream (eps 1e-12) divides by a zero deviation, so
    the first steps' gradients grow a millionfold a layer along the groups' identity-initialised
    convs (measured on white digits on black: whitening-bias gradient 2.9e12 at step 1, NaN at
    step 3). Such filters are replaced by random unit mixtures of the live whitening filters,
    which see real variance (about unit) on the data: every channel carries signal.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first
    largest = eigenvalues[0].clamp_min(1e-6)  # all-constant images: no division by ~0
    floor = WHITENING_FLOOR * largest
    filters = eigenvectors[:count] / torch.sqrt(eigenvalues[:count].clamp_min(0) + floor)[:, None]
    live = int((eigenvalues[:count] > WHITENING_DEAD * largest).sum().clamp_min(1))
    if live < count:
        generator = torch.Generator().manual_seed(0)  # the same layer for the same data, every run
        mixtures = torch.randn(count - live, live, generator=generator, dtype=filters.dtype)
        mixtures /= mixtures.norm(dim=1, keepdim=True)
        filters[live:] = mixtures @ filters[:live]
    return filters


# Float64 patches a slice of the whitening sample may hold (a 5,000-image sample at 32 px: 0.46 GB).
WHITENING_SLICE_BYTES = 512 * 2**20


def _images_per_slice(images: torch.Tensor, kernel: int, stride: int) -> int:
    rows, columns = ((side - kernel) // stride + 1 for side in images.shape[2:])
    return max(1, WHITENING_SLICE_BYTES // (8 * images.shape[1] * kernel * kernel * rows * columns))


# Values the annotations allow that build no network: checked before building, in one line.
FAST_ARGUMENT_CHECKS = {
    "widths": ("3 integers >= 1", lambda widths: all(width >= 1 for width in widths)),
    "logit_scale": ("null or > 0", lambda scale: scale is None or scale > 0),
}


@register_model(checks=FAST_ARGUMENT_CHECKS)
def fast(
    num_classes: int = 10,
    image_size: int = 32,
    widths: tuple[int, int, int] = (64, 256, 256),
    logit_scale: float | None = None,
    unit_head: bool = True,
    residual: bool = False,
    stem_stride: int | str = "auto",
    batchnorm_eps: float = BATCHNORM_EPS,
) -> FastNet:
    """airbench94's network, 1.97M parameters at the default widths, with the head of its Muon
    variant (cnnkit's default recipe); airbench94's own head is ``logit_scale=1/9, unit_head=False``."""
    return FastNet(
        num_classes,
        image_size,
        tuple(widths),
        logit_scale=logit_scale,
        unit_head=unit_head,
        residual=residual,
        stem_stride=stem_stride,
        batchnorm_eps=batchnorm_eps,
    )


fast.minimum_image_size = MINIMUM_IMAGE_SIZE
