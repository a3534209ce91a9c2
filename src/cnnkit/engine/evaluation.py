"""Loss, accuracy and probabilities of a model over in-memory images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.engine.preprocess import InputTransform, Normalization


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    device: torch.device,
    precision: torch.dtype = torch.float32,
    batch_size: int = 1024,
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
                outputs.append(model(inputs).float().cpu())
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
) -> dict[str, float]:
    """``{"loss", "accuracy", "count"}`` of ``model`` on labelled images (mean cross-entropy)."""
    if len(images) == 0:
        raise ValueError("Cannot evaluate on an empty set of images.")
    logits = predict_logits(model, images, normalization, device, precision, batch_size)
    labels = labels.long().cpu()
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
        "count": len(labels),
    }
