"""Divergence: noticed at the step it happens, retried once from the last good state, never saved.

A run diverges when its loss, its weights (parameters and BatchNorm statistics) or its validation
figures stop being finite numbers. The loss alone is not enough: it is computed before the update
that breaks the weights, so the last step of a run (a fractional last epoch) could hand over NaN
weights with a finite loss. The trainer therefore checks the weights after the optimizer step too.

A first divergence puts the trainer back where the epoch (or the resumed part of it) began and
trains on at ``RETRY_LEARNING_RATE_SCALE`` times the learning rate, saying so through the
callbacks' ``on_retry``; a second one stops the run with ``TrainingDiverged``, whose message names
what to try. Nothing non-finite reaches a checkpoint or a report: the run folder keeps the last
good epoch's files.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnkit.engine import distributed

# The learning rate of the retry, relative to the recipe's. A diverging first step is usually a
# step size too large for the data (a flat image's gradients), and a quarter is a large enough cut
# to matter while keeping most of the schedule's progress.
RETRY_LEARNING_RATE_SCALE = 0.25


class TrainingDiverged(FloatingPointError):
    """The loss, the weights or the validation figures of a run stopped being finite."""


@dataclass
class Retry:
    """What ``on_retry`` hears: why, where the run goes back to, and the new learning-rate scale."""

    reason: str
    epoch: int  # the epoch trained again (1-based)
    step: int  # the step of that epoch it restarts from (0: its start)
    learning_rate_scale: float


def non_finite_tensor(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer of ``model`` holding a NaN or an infinity, else None.

    One reduction per tensor and one device sync for the lot: on the fast network 30 tensors,
    about a millisecond on a CPU, against a training step of seconds.
    """
    named = [
        (name, tensor)
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_floating_point() and tensor.numel()
    ]
    if not named:
        return None
    # amax propagates NaN; a sum of squares could overflow to inf on large but finite weights.
    peaks = torch.stack([tensor.detach().abs().amax().float() for _, tensor in named])
    finite = torch.isfinite(peaks)
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def non_finite_metric(metrics: Mapping[str, float]) -> str | None:
    """The first metric whose value is NaN or infinite, else None."""
    return next(
        (name for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)),
        None,
    )


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a trainer's ``state_dict()``: the live tensors go on training."""
    return copy.deepcopy(state)


def check_finite(trainer: Any, loss: torch.Tensor | None, where: str) -> None:
    """Raise ``TrainingDiverged`` when ``loss`` or any weight of ``trainer``'s model is not finite;
    under torchrun every rank raises when any does, so that all take the same path."""
    problem = None
    if loss is not None and not bool(torch.isfinite(loss)):
        problem = f"Loss became {loss.item()} {where}."
    elif (name := non_finite_tensor(trainer.model)) is not None:
        problem = f"The weights became non-finite ({name}) {where}."
    if trainer.distributed.enabled and distributed.any_rank(problem is not None, trainer.device):
        problem = problem or f"Another process's loss or weights became non-finite {where}."
    if problem is not None:
        raise TrainingDiverged(problem)


def retry_or_stop(trainer: Any, good: dict[str, Any], diverged: TrainingDiverged, listeners: Any) -> None:
    """The first divergence: ``trainer`` back to ``good`` (its ``state_dict()`` snapshot) at
    ``RETRY_LEARNING_RATE_SCALE`` times the learning rate, told to ``on_retry``; the second: stop
    with a message that names what to try."""
    if trainer.learning_rate_scale < 1.0:
        raise TrainingDiverged(
            f"{diverged} It diverged again at {trainer.learning_rate_scale:g}x the learning rate. "
            + advice(trainer.recipe.learning_rate)
        ) from None
    trainer.lookahead = None  # the state below brings back its own
    trainer.load_state_dict(good)
    trainer.learning_rate_scale = RETRY_LEARNING_RATE_SCALE
    position = trainer.position
    where = (position.epoch, position.step) if position else (trainer.completed_epochs + 1, 0)
    listeners.call("on_retry", Retry(str(diverged), *where, trainer.learning_rate_scale))


def advice(learning_rate: float) -> str:
    """What to try after a run diverged twice."""
    return (
        f"Try a lower learning rate (--lr {learning_rate / 10:g}, a tenth of the recipe's "
        f"{learning_rate:g}), "
        "--precision fp32, or --recipe tutorial (Adam at batch 32: slower, but it learns where "
        "larger steps do not); and check that the images of different classes differ."
    )
