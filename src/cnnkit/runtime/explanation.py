"""Grad-CAM (Selvaraju et al., ICCV 2017): where in an image a network found a class.

For a chosen class c and the feature maps A_k of a layer (the last convolutional block's output),

    weights w_k = spatial mean of d logit_c / d A_k,    map = ReLU(sum_k w_k A_k),

upsampled bilinearly to the input's size and scaled to [0, 1] per image (a map with no positive
evidence stays all zero). Each model names the layer(s) in its ``feature_layer_names`` attribute
(see ``cnnkit.models.registry``); an ensemble names every member's, and its map is the sum of its
members' maps (each weighted by the averaged logit's gradient), scaled as one.

A forward hook keeps each feature layer's output; the gradients come from ``torch.autograd.grad``
on those outputs, not ``backward``: the parameters' ``.grad`` and ``requires_grad`` are never
touched, so explaining a model in training or fine-tuning leaves its optimiser state alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data.pixels import check_pixels
from cnnkit.data.stored_images import StoredImages
from cnnkit.messages import short_repr
from cnnkit.runtime.normalization import InputTransform, Normalization

ClassIndices = int | Sequence[int] | np.ndarray | torch.Tensor | None


def feature_layers(network: nn.Module) -> list[nn.Module]:
    """The modules whose outputs Grad-CAM explains: ``network.feature_layer_names`` resolved."""
    names = getattr(network, "feature_layer_names", None)
    model = getattr(network, "model_name", type(network).__name__)
    if not names or isinstance(names, str):
        raise ValueError(
            f"Model {model!r} names no feature layer to explain: give it a feature_layer_names tuple "
            f"of submodule names (its last convolutional block). Received: feature_layer_names={names!r}"
        )
    layers = []
    for name in names:
        try:
            layers.append(network.get_submodule(name))
        except AttributeError:
            raise ValueError(
                f"Model {model!r} has no feature layer named {name!r}. Received: {name!r}"
            ) from None
    return layers


def grad_cam(
    network: nn.Module, images_normalized: torch.Tensor, class_indices: ClassIndices = None
) -> torch.Tensor:
    """Grad-CAM maps of normalised images ``(N, C, H, W)`` (any memory format): float32
    ``(N, H, W)`` in [0, 1] on the network's device.

    ``class_indices``: the class (a multi-label model: the label) explained, one for all or one an
    image; None explains each image's largest logit. Runs in eval mode in float32 with autocast off
    and gradients on (also under a caller's ``torch.no_grad()`` or ``inference_mode``); the
    network's train / eval modes are put back and its hooks removed, also when this raises.
    """
    if not isinstance(images_normalized, torch.Tensor) or images_normalized.ndim != 4:
        shape = tuple(getattr(images_normalized, "shape", ()))
        raise ValueError(f"grad_cam takes normalised images (N, C, H, W). Received: shape={shape}")
    if not images_normalized.is_floating_point():
        raise ValueError(
            f"grad_cam takes normalised float images; explain_pixels takes uint8 pixels. "
            f"Received: dtype={images_normalized.dtype}"
        )
    layers = feature_layers(network)
    device = _device_of(network)
    outputs: list[list[torch.Tensor]] = [[] for _ in layers]
    modes = [(module, module.training) for module in network.modules()]
    handles = []
    try:
        for layer, kept in zip(layers, outputs, strict=True):  # one at a time: all removed whatever fails
            handles.append(layer.register_forward_hook(_keeper(kept)))
        network.eval()  # BatchNorm in training mode would mix the batch's images into each map
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device.type, enabled=False),
        ):
            # An input that needs its gradient gives the feature maps one even where every weight
            # before them is frozen (a fine-tuned trunk, the fast network's whitening).
            inputs = images_normalized.detach().to(device, torch.float32).clone().requires_grad_(True)
            logits = network(inputs)
            chosen = _chosen_classes(logits, class_indices, len(inputs))
            score = logits.gather(1, chosen[:, None]).sum()  # images are independent in eval mode
            features = [_last_output(kept, layer) for kept, layer in zip(outputs, layers, strict=True)]
            gradients = torch.autograd.grad(score, features, allow_unused=True)
        return _combine(features, gradients, tuple(images_normalized.shape[2:]))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:  # each module's own flag: a frozen, eval-mode part stays so
            module.training = training


def explain_pixels(
    network: nn.Module,
    pixels: np.ndarray | torch.Tensor | StoredImages,
    normalization: Normalization,
    class_indices: ClassIndices = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Grad-CAM maps of uint8 ``(N, H, W, 3)`` pixels, normalised as the network was trained
    (``normalization``), ``batch_size`` images at a time: float32 ``(N, H, W)`` in [0, 1].

    The pixels are what the network sees: crop them first as prediction does
    (``Classifier.model_view``). ``class_indices`` as in ``grad_cam``."""
    check_pixels(pixels, name="pixels")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={short_repr(batch_size)}")
    images = pixels if isinstance(pixels, StoredImages) else torch.as_tensor(pixels)
    count, height, width = len(images), images.shape[1], images.shape[2]
    indices = None if class_indices is None else _per_image(class_indices, count)
    transform = InputTransform(normalization, device=_device_of(network))
    maps = np.zeros((count, height, width), dtype=np.float32)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        batch = transform(images[start:stop])
        chosen = None if indices is None else indices[start:stop]
        maps[start:stop] = grad_cam(network, batch, chosen).cpu().numpy()
    return maps


def _keeper(kept: list[torch.Tensor]):
    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"A feature layer must output one tensor to be explained. Received: {type(output).__name__}"
            )
        kept.append(output)
        # The network goes on with a copy: an in-place op after the layer (a ReLU(inplace=True))
        # would otherwise change the maps kept here and the graph their gradients come from.
        return output.clone()

    return keep


def _last_output(kept: list[torch.Tensor], layer: nn.Module) -> torch.Tensor:
    if not kept:
        raise ValueError(f"The feature layer {type(layer).__name__} did not run in the network's forward.")
    return kept[-1]


def _chosen_classes(logits: torch.Tensor, class_indices: ClassIndices, count: int) -> torch.Tensor:
    """The class explained for each image, checked against the logits' classes."""
    if logits.ndim != 2 or len(logits) != count:
        raise ValueError(f"grad_cam needs (N, classes) logits. Received: shape={tuple(logits.shape)}")
    if class_indices is None:
        # The largest logit is the top class under softmax and the top label under a sigmoid
        # alike (both are monotone), so no task is needed to name the predicted one.
        return logits.detach().argmax(1)
    chosen = _per_image(class_indices, count).to(logits.device)
    classes = logits.shape[1]
    if bool(((chosen < 0) | (chosen >= classes)).any()):
        raise ValueError(
            f"class_indices must lie in [0, {classes}). Received: class_indices={short_repr(chosen.tolist())}"
        )
    return chosen


def _per_image(class_indices: ClassIndices, count: int) -> torch.Tensor:
    """One class index an image, as an int64 tensor (a single index repeated)."""
    if isinstance(class_indices, int | np.integer) and not isinstance(class_indices, bool):
        return torch.full((count,), int(class_indices), dtype=torch.long)
    values = torch.as_tensor(
        np.asarray(class_indices) if not isinstance(class_indices, torch.Tensor) else class_indices
    )
    if (
        values.dtype.is_floating_point
        or values.dtype == torch.bool
        or values.ndim != 1
        or len(values) != count
    ):
        raise ValueError(
            f"class_indices must be one integer or one integer an image ({count}). "
            f"Received: class_indices={short_repr(class_indices)}"
        )
    return values.long()


def _combine(
    features: list[torch.Tensor], gradients: Sequence[torch.Tensor | None], size: tuple[int, int]
) -> torch.Tensor:
    """Each layer's ReLU(sum_k w_k A_k) at ``size``, summed, scaled to [0, 1] per image."""
    total = None
    for activation, gradient in zip(features, gradients, strict=True):
        if gradient is None:  # the layer's output does not reach the logits
            raise ValueError("A feature layer's output does not reach the logits: it cannot explain them.")
        if activation.ndim != 4:
            raise ValueError(
                f"A feature layer must output (N, C, h, w) maps. Received: shape={tuple(activation.shape)}"
            )
        weights = gradient.float().mean((2, 3), keepdim=True)
        cam = F.relu((weights * activation.detach().float()).sum(1, keepdim=True))
        # Bilinear weights are non-negative, so the upsampled map stays >= 0.
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
        total = cam if total is None else total + cam
    peak = total.amax((1, 2), keepdim=True)
    scaled = torch.where(
        peak > 0, total / peak.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total)
    )
    return scaled.clamp_(0, 1).contiguous()


def _device_of(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
