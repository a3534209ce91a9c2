"""Pixels -> normalisation -> the network over test-time views -> logits: written once.

``Classifier.predict`` and evaluation run it in batches, the service traces it to TorchScript,
and ``cnnkit export`` turns it into an ONNX graph: one module, so the three cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.runtime.constants import TTA_LEVELS, UINT8_NHWC
from cnnkit.runtime.normalization import InputTransform, Normalization
from cnnkit.tasks import SINGLE_LABEL
from cnnkit.tasks.calibration import apply_calibration, check_confidence_map


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
    ``logit_offset``: one number a class added to the logits (a post-hoc logit adjustment for
    imbalanced classes, ``tasks``' ``choose_logit_adjustment``; kept in the checkpoint).
    ``temperature``: the logits (offset included) are then divided by it (temperature scaling,
    calibrated probabilities; the decisions stay those of the plain logits). ``confidence_map``
    (single-label, after the temperature): knots mapping the top softmax probability to how often
    it is right (``tasks.calibration``); the output is then the log of the mapped probabilities,
    whose softmax gives them back.
    """

    def __init__(
        self,
        network: nn.Module,
        normalization: Normalization,
        tta: int = 0,
        precision: torch.dtype = torch.float32,
        pixel_format: str = UINT8_NHWC,
        logit_offset: Sequence[float] | None = None,
        temperature: float | None = None,
        confidence_map: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        if tta not in TTA_LEVELS:
            raise ValueError(f"tta must be 0, 1 or 2. Received: tta={tta!r}")
        device = next(network.parameters()).device
        self.network = network
        self.to_input = InputTransform(normalization, device, pixel_format)
        self.tta = tta
        self.precision = precision
        if logit_offset is not None:
            logit_offset = torch.tensor(logit_offset, dtype=torch.float32, device=device)
        self.register_buffer("logit_offset", logit_offset)
        # Multiplying by the inverse is what is traced: the same float32 result in every graph.
        scale = (
            None
            if temperature is None
            else torch.tensor(1.0 / temperature, dtype=torch.float32, device=device)
        )
        self.register_buffer("logit_scale", scale)
        knots = None
        if confidence_map is not None:
            knots = torch.tensor(check_confidence_map(confidence_map), dtype=torch.float32, device=device)
        self.register_buffer("confidence_knots", knots)

    @classmethod
    def for_checkpoint(
        cls,
        network: nn.Module,
        checkpoint: Any,
        tta: int,
        precision: torch.dtype = torch.float32,
        pixel_format: str = UINT8_NHWC,
        calibrated: bool = True,
    ) -> PixelClassifier:
        """The prediction module a ``Checkpoint`` describes around ``network`` (its weights loaded):
        its normalisation, logit offset and, if ``calibrated``, its temperature and confidence map."""
        return cls(
            network,
            checkpoint.normalization,
            tta,
            precision,
            pixel_format,
            logit_offset=checkpoint.logit_offset,
            temperature=checkpoint.temperature if calibrated else None,
            confidence_map=checkpoint.confidence_map if calibrated else None,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.to_input(images)
        if self.precision == torch.float32:
            logits = tta_logits(self.network, inputs, self.tta)
        else:
            with torch.autocast(inputs.device.type, dtype=self.precision, cache_enabled=False):
                logits = tta_logits(self.network, inputs, self.tta)
        logits = logits.float()
        if self.logit_offset is not None:
            logits = logits + self.logit_offset
        return apply_calibration(logits, self.logit_scale, self.confidence_knots)


class WithProbabilities(nn.Module):
    """``(probabilities, logits)`` of a ``PixelClassifier``, or the probabilities alone: the
    ``task``'s output activation (``cnnkit.tasks``; single-label: softmax), traced into the
    service's and the ONNX graphs."""

    def __init__(self, classifier: PixelClassifier, keep_logits: bool = False, task: Any = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.keep_logits = keep_logits
        self.task = task or SINGLE_LABEL

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)
        probabilities = self.task.probabilities(logits)
        return (probabilities, logits) if self.keep_logits else probabilities
