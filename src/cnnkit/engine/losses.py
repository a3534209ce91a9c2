"""The training objective: cross-entropy with label smoothing, for one network or an ensemble."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def training_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to report, the loss to minimise).

    An ensemble's ``(members, N, classes)`` logits: each member learns from its own loss, so the
    objective is their sum (every member's gradient is its own); the report, their mean.
    """
    losses = torch.stack(
        [
            F.cross_entropy(
                member_logits.float(), targets, label_smoothing=label_smoothing, reduction=reduction
            )
            for member_logits in (logits if logits.ndim == 3 else logits[None])
        ]
    )
    return losses.mean(), losses.sum()
