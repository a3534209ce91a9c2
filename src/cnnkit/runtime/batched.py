"""Logits of a model over uint8 images (in memory or stored), in batches, with optional TTA."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from cnnkit.data.stored_images import StoredImages
from cnnkit.runtime.normalization import Normalization
from cnnkit.runtime.pixel_classifier import PixelClassifier
from cnnkit.runtime.prefetch import prefetched


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor | StoredImages,
    normalization: Normalization,
    device: torch.device,
    precision: torch.dtype = torch.float32,
    batch_size: int = 1024,
    tta: int = 0,
    logit_offset: Sequence[float] | None = None,
    temperature: float | None = None,
    confidence_map: Sequence[Sequence[float]] | None = None,
) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 ``(N, H, W, 3)`` images, computed in batches (stored
    images are read a batch ahead); ``logit_offset``, ``temperature`` and ``confidence_map`` as
    ``PixelClassifier``'s."""
    was_training = model.training
    classifier = PixelClassifier(
        model,
        normalization,
        tta,
        precision,
        logit_offset=logit_offset,
        temperature=temperature,
        confidence_map=confidence_map,
    ).eval()
    # One output tensor, filled in place: a small tensor kept per batch would sit between the
    # large ones that batches free, and the heap (which keeps freed memory: runtime.device) grew.
    logits = torch.empty(0, 0)
    starts = range(0, len(images), batch_size)
    try:
        batches = (slice(start, start + batch_size) for start in starts)
        with contextlib.closing(prefetched(images, batches)) as pixels:
            for start, batch in zip(starts, pixels, strict=True):
                output = classifier(batch.to(device))
                if start == 0:
                    logits = torch.empty(len(images), output.shape[1], dtype=torch.float32)
                logits[start : start + len(output)] = output.float().cpu()
                del output
    finally:
        model.train(was_training)
    return logits
