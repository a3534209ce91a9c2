"""Pixels -> normalisation -> the network over test-time views -> logits: written once.

``Classifier.predict`` and evaluation run it in batches, the service traces it to TorchScript,
and ``cnnkit export`` turns it into an ONNX graph: one module, so the three cannot drift apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.engine.preprocess import UINT8_NHWC, InputTransform, Normalization


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


class PixelClassifier(nn.Module):
    """``network`` behind its input transform and test-time augmentation: pixels in, float32 logits out.

    ``precision`` other than float32 runs the network under autocast (without autocast's weight
    cache, which tracing cannot record). An ensemble's logits are averaged over its members.
    """

    def __init__(
        self,
        network: nn.Module,
        normalization: Normalization,
        tta: int = 0,
        precision: torch.dtype = torch.float32,
        pixel_format: str = UINT8_NHWC,
    ) -> None:
        super().__init__()
        if tta not in (0, 1, 2):
            raise ValueError(f"tta must be 0, 1 or 2. Received: tta={tta!r}")
        device = next(network.parameters()).device
        self.network = network
        self.to_input = InputTransform(normalization, device, pixel_format)
        self.tta = tta
        self.precision = precision

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.to_input(images)
        if self.precision == torch.float32:
            logits = tta_logits(self.network, inputs, self.tta)
        else:
            with torch.autocast(inputs.device.type, dtype=self.precision, cache_enabled=False):
                logits = tta_logits(self.network, inputs, self.tta)
        return logits.float()


class WithProbabilities(nn.Module):
    """``(softmax(logits), logits)`` of a ``PixelClassifier``, or the probabilities alone."""

    def __init__(self, classifier: PixelClassifier, keep_logits: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.keep_logits = keep_logits

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)
        probabilities = torch.softmax(logits, dim=1)
        return (probabilities, logits) if self.keep_logits else probabilities
