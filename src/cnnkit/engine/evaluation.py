"""Loss, accuracy and probabilities of a model over in-memory images, with optional TTA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.engine.preprocess import InputTransform, Normalization


def tta_logits(model: nn.Module, inputs: torch.Tensor, level: int) -> torch.Tensor:
    """Logits averaged over test-time views of normalised ``inputs`` (airbench's scheme).

    level 0: the image alone. 1: the image and its mirror, averaged. 2: that, weighted 0.5, plus
    the same for the image shifted one pixel up-left and one pixel down-right (reflect padding),
    0.25 each.
    """

    def mirrored(views: torch.Tensor) -> torch.Tensor:
        return 0.5 * model(views) + 0.5 * model(views.flip(-1))

    if level == 0:
        return model(inputs)
    if level == 1:
        return mirrored(inputs)
    height, width = inputs.shape[-2:]
    padded = F.pad(inputs, (1, 1, 1, 1), mode="reflect")
    up_left = padded[:, :, :height, :width]
    down_right = padded[:, :, 2 : 2 + height, 2 : 2 + width]
    return 0.5 * mirrored(inputs) + 0.25 * mirrored(up_left) + 0.25 * mirrored(down_right)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    device: torch.device,
    precision: torch.dtype = torch.float32,
    batch_size: int = 1024,
    tta: int = 0,
) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 ``(N, H, W, 3)`` images, computed in batches."""
    was_training = model.training
    model.eval()
    outputs = []
    to_input = InputTransform(normalization, device)
    try:
        for start in range(0, len(images), batch_size):
            inputs = to_input(images[start : start + batch_size])
            with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
                outputs.append(tta_logits(model, inputs, tta).float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def evaluate_tensors(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalization: Normalization,
    device: torch.device,
    precision: torch.dtype = torch.float32,
    batch_size: int = 1024,
    tta: int = 0,
) -> dict[str, float]:
    """``{"loss", "accuracy", "count"}`` of ``model`` on labelled images (mean cross-entropy)."""
    if len(images) == 0:
        raise ValueError("Cannot evaluate on an empty set of images.")
    logits = predict_logits(model, images, normalization, device, precision, batch_size, tta)
    labels = labels.long().cpu()
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
        "count": len(labels),
    }
