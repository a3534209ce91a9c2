"""Logits and metrics of a model over in-memory uint8 images, in batches, with optional TTA."""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.engine.inference import PixelClassifier
from cnnkit.engine.metrics import score_logits
from cnnkit.engine.preprocess import Normalization


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
    classifier = PixelClassifier(model, normalization, tta, precision).eval()
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            outputs.append(classifier(images[start : start + batch_size].to(device)).cpu())
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
    """``{"loss", "accuracy", ..., "count"}`` of ``model`` on labelled images (see ``engine.metrics``)."""
    if len(images) == 0:
        raise ValueError("Cannot evaluate on an empty set of images.")
    logits = predict_logits(model, images, normalization, device, precision, batch_size, tta)
    return score_logits(logits, labels.cpu())
