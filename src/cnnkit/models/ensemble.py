"""Ensembles: several networks trained side by side, predicting together.

On this CPU a single network of the fast family stops improving at ~91.8% validation accuracy
whatever the epochs or widths (docs/benchmarks.md); independently initialised members make
different mistakes, and averaging them turns more compute into accuracy where one network can't.

The members train on the same batches, each on its own loss: in training mode ``forward``
returns every member's logits, ``(members, N, classes)``, and the engine sums the members'
losses, so each member's gradient is exactly what it would be alone. In eval mode it returns
their average, ``(N, classes)``: evaluation, TTA, prediction and export see one model.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.models.airbench import fast
from cnnkit.models.registry import register_model


class Ensemble(nn.Module):
    """Averages the logits of ``members`` (in eval mode); stacks them in training mode."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError(f"An ensemble needs at least one member. Received: members={len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([member(images) for member in self.members])
        return outputs if self.training else outputs.mean(0)

    def initialize_from_data(self, images: torch.Tensor) -> None:
        for member in self.members:
            if hasattr(member, "initialize_from_data"):
                member.initialize_from_data(images)

    def set_first_layer_bias_trainable(self, trainable: bool) -> None:
        for member in self.members:
            if hasattr(member, "set_first_layer_bias_trainable"):
                member.set_first_layer_bias_trainable(trainable)


@register_model
def fast_ensemble(
    num_classes: int = 10,
    image_size: int = 32,
    members: int = 2,
    widths: tuple[int, int, int] = (64, 256, 256),
    residual: bool = False,
) -> Ensemble:
    """``members`` fast networks (each initialised from its own random draw), averaged."""
    if not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be an integer >= 1. Received: members={members!r}")
    return Ensemble([fast(num_classes, image_size, widths=widths, residual=residual) for _ in range(members)])
