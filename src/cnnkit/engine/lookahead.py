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
