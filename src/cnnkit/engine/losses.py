"""The training objective: cross-entropy with label smoothing, class weights and logit adjustment,
for one network or an ensemble."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnkit.recipes import Recipe


def training_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float,
    reduction: str,
    class_weights: torch.Tensor | None = None,
    logit_shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to report, the loss to minimise).

    ``class_weights``: one weight a class (``class_balance``); ``logit_shift``: added to the
    logits before the loss (the logit adjustment, ``tau * log prior``). An ensemble's
    ``(members, N, classes)`` logits: each member learns from its own loss, so the objective is
    their sum (every member's gradient is its own); the report, their mean.
    """
    losses = torch.stack(
        [
            F.cross_entropy(
                member_logits.float() + (0 if logit_shift is None else logit_shift),
                targets,
                weight=class_weights,
                label_smoothing=label_smoothing,
                reduction=reduction,
            )
            for member_logits in (logits if logits.ndim == 3 else logits[None])
        ]
    )
    return losses.mean(), losses.sum()


def class_balance(
    labels: torch.Tensor, num_classes: int, recipe: Recipe, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The recipe's (class weights, logit shift) for training ``labels``; None where off.

    Weights ``n / (classes * count)`` (scikit-learn's "balanced"); the shift
    ``logit_adjustment * log(count / n)``. A class without training images gets weight 0 and
    the shift of one image, so that nothing is infinite.
    """
    counts = torch.bincount(labels.long().flatten().cpu(), minlength=num_classes).double()
    total = counts.sum()
    weights = shift = None
    if recipe.class_weights == "balanced":
        weights = torch.where(counts > 0, total / (num_classes * counts.clamp_min(1)), 0.0)
        weights = weights.float().to(device)
    if recipe.logit_adjustment:
        shift = (recipe.logit_adjustment * torch.log(counts.clamp_min(1) / total)).float().to(device)
    return weights, shift
