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


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with the scale frozen at 1 (only the bias learns), a tiny eps, fast statistics."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12) -> None:
        # momentum in PyTorch's convention: the weight of the newest batch (airbench's 0.6 = 1 - 0.4).
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU; ``residual`` adds airbench96's third
    conv -> BN -> GELU and a skip connection around the last two convs."""

    def __init__(self, channels_in: int, channels_out: int, momentum: float, residual: bool = False) -> None:
        super().__init__()
        self.conv1 = dirac_conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, momentum)
        self.conv2 = dirac_conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, momentum)
        self.residual = residual
        if residual:
            self.conv3 = dirac_conv(channels_out, channels_out)
            self.norm3 = BatchNorm(channels_out, momentum)

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
    ) -> None:
        """``logit_scale`` None divides the logits by the last width (the Muon variant's head);
        ``unit_head`` starts the head's weights at unit standard deviation; ``residual`` gives
        each group a third conv and a skip connection (airbench96); ``stem_stride`` > 1 (or
        ``"auto"``) whitens non-overlapping patches of that side (a patchify stem)."""
        super().__init__()
        if image_size < 16:
            raise ValueError(
                f"The fast network pools three times, so image_size must be >= 16. "
                f"Received: image_size={image_size}"
            )
        stride = stem_stride_for(image_size) if stem_stride == "auto" else stem_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or image_size // stride < 8:
            raise ValueError(
                f"stem_stride must be 'auto' or an integer >= 1 leaving maps of 8 px or more. "
                f"Received: stem_stride={stem_stride!r} at image_size={image_size}"
            )
        self.resolved_arguments = {"stem_stride": stride}  # what "auto" became, for checkpoints
        # Stride 1 is airbench's 2x2 layer (overlapping); a stride s > 1 whitens s x s patches.
        kernel = 2 if stride == 1 else stride
        whitening_width = 2 * min(3 * kernel * kernel, WHITENING_FILTERS)  # eigen-filters and negatives
        self.whiten = nn.Conv2d(3, whitening_width, kernel_size=kernel, stride=stride, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.groups = nn.Sequential(
            ConvGroup(whitening_width, widths[0], batchnorm_momentum, residual),
            ConvGroup(widths[0], widths[1], batchnorm_momentum, residual),
            ConvGroup(widths[1], widths[2], batchnorm_momentum, residual),
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
    def initialize_from_data(
        self, images: torch.Tensor | Iterable[torch.Tensor], epsilon: float = 5e-4
    ) -> None:
        """Set the first layer to whiten 2x2 patches of ``images`` (normalised, ``(N, 3, H, W)``,
        or an iterable of such chunks that can be iterated more than once).

        Each filter is an eigenvector of the patch covariance scaled by 1/sqrt(eigenvalue + eps),
        so the layer's outputs on training patches are decorrelated with unit variance; the
        negated copies let the following GELU pass both signs.
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
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first
        kept = len(weight) // 2
        filters = eigenvectors[:kept] / torch.sqrt(eigenvalues[:kept].clamp_min(0) + epsilon)[:, None]
        filters = filters.reshape(-1, *weight.shape[1:]).to(weight.dtype)
        weight.copy_(torch.cat([filters, -filters]))


# Float64 patches a slice of the whitening sample may hold (a 5,000-image sample at 32 px: 0.46 GB).
WHITENING_SLICE_BYTES = 512 * 2**20


def _images_per_slice(images: torch.Tensor, kernel: int, stride: int) -> int:
    rows, columns = ((side - kernel) // stride + 1 for side in images.shape[2:])
    return max(1, WHITENING_SLICE_BYTES // (8 * images.shape[1] * kernel * kernel * rows * columns))


@register_model
def fast(
    num_classes: int = 10,
    image_size: int = 32,
    widths: tuple[int, int, int] = (64, 256, 256),
    logit_scale: float | None = None,
    unit_head: bool = True,
    residual: bool = False,
    stem_stride: int | str = "auto",
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
    )
