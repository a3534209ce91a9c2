"""Ensembles: several networks trained side by side, predicting together.

Independently initialised members make different mistakes, so their average is usually more
accurate than any one of them. Measured on this CPU (docs/benchmarks.md), two ``best``-width
members at 12 epochs each scored 0.9163 against 0.9117 for one such network, but less than one
network trained for the same total time (0.9177): no recipe uses an ensemble yet.

The members train on the same batches, each on its own loss: in training mode ``forward``
returns every member's logits, ``(members, N, classes)``, and the engine sums the members'
losses, so each member's gradient is exactly what it would be alone. In eval mode it returns
their average, ``(N, classes)``: evaluation, TTA, prediction and export see one model.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.models.airbench import MINIMUM_IMAGE_SIZE, fast
from cnnkit.models.registry import register_model


class Ensemble(nn.Module):
    """Averages the logits of ``members`` (in eval mode); stacks them in training mode."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError(f"An ensemble needs at least one member. Received: members={len(members)}")
        self.members = nn.ModuleList(members)
        # What the members' "auto" arguments became (their stem stride), for checkpoints.
        self.resolved_arguments = dict(getattr(members[0], "resolved_arguments", {}))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([member(images) for member in self.members])
        return outputs if self.training else outputs.mean(0)

    @property
    def feature_layer_names(self) -> tuple[str, ...]:
        """Every member's feature layer: Grad-CAM explains an ensemble by the mean of its members'
        maps, each weighted by the gradient of the averaged logit (which is what each member
        contributes to the decision), rather than by its first member alone."""
        return tuple(
            f"members.{index}.{name}"
            for index, member in enumerate(self.members)
            for name in getattr(member, "feature_layer_names", ())
        )

    def initialize_from_data(self, images: torch.Tensor) -> None:
        for member in self.members:
            if hasattr(member, "initialize_from_data"):
                member.initialize_from_data(images)

    def set_first_layer_bias_trainable(self, trainable: bool) -> None:
        for member in self.members:
            if hasattr(member, "set_first_layer_bias_trainable"):
                member.set_first_layer_bias_trainable(trainable)


@register_model(checks={"members": ("an integer >= 1", lambda members: members >= 1)}, forwards_to="fast")
def fast_ensemble(
    num_classes: int = 10, image_size: int = 32, members: int = 2, **fast_arguments
) -> Ensemble:
    """``members`` fast networks (each initialised from its own random draw), averaged;
    ``fast_arguments`` (``widths``, ``residual``, ...) go to every member, see ``fast``."""
    if not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be an integer >= 1. Received: members={members!r}")
    return Ensemble([fast(num_classes, image_size, **fast_arguments) for _ in range(members)])


fast_ensemble.minimum_image_size = MINIMUM_IMAGE_SIZE
