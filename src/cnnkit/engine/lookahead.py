"""Lookahead: every few steps the weights jump to an exponential moving average of themselves."""

from __future__ import annotations

import torch
from torch import nn


class Lookahead:
    """An EMA of every floating-point tensor of a model's state (weights and BatchNorm statistics)."""

    def __init__(self, model: nn.Module) -> None:
        self.average = {
            name: tensor.detach().clone()
            for name, tensor in model.state_dict().items()
            if tensor.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """Average in the current weights with weight ``1 - decay``, then copy the average back."""
        state = model.state_dict()
        for name, average in self.average.items():
            average.lerp_(state[name], 1 - decay)
            state[name].copy_(average)


def lookahead_decay(step: int, total_steps: int, every: int, decay: float, power: float) -> float:
    """airbench's warm-up of the EMA: move fast early, average strongly at the end."""
    return decay**every * (step / total_steps) ** power


def advance_lookahead(
    lookahead: Lookahead | None, model: nn.Module, step: int, total_steps: int, steps_per_epoch: int, recipe
) -> Lookahead | None:
    """After optimizer step ``step``: every ``lookahead_every`` steps past the start epoch, move the
    weights to the average (the first such step only starts it). Returns the (new) average."""
    if not recipe.lookahead or step % recipe.lookahead_every:
        return lookahead
    if step <= recipe.lookahead_start_epoch * steps_per_epoch:
        return lookahead
    if lookahead is None:
        return Lookahead(model)
    decay = lookahead_decay(
        step, total_steps, recipe.lookahead_every, recipe.lookahead_decay, recipe.lookahead_power
    )
    lookahead.update(model, decay)
    return lookahead
