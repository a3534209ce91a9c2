"""Optimizers and learning-rate schedules built from a recipe."""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.engine.muon import Muon
from cnnkit.recipes import Recipe

KILO = 1024  # the SGD recipes' learning rate and weight decay are "per 1024 examples"


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's trainable parameters (``initial_lr`` set per group)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "muon":
        optimizer = _muon_and_sgd(model, parameters, recipe)
    elif recipe.optimizer == "adam":
        # Fused: one kernel over all parameters instead of a dozen passes over memory. On CPU it
        # measured 1.0 ms a step for the tutorial's 2.1M parameters against 6.3 ms (foreach).
        optimizer = torch.optim.Adam(
            parameters,
            lr=recipe.learning_rate,
            betas=recipe.adam_betas,
            eps=recipe.adam_epsilon,
            weight_decay=recipe.weight_decay,
            fused=device.type in ("cpu", "cuda"),
        )
    else:
        optimizer = _decoupled_sgd(model, parameters, recipe)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def _decoupled_sgd(model: nn.Module, parameters: list, recipe: Recipe) -> torch.optim.SGD:
    """Nesterov SGD with the recipe's decoupled lr and weight decay (see ``Recipe``).

    With constant gradients, Nesterov momentum m multiplies the step by 1 + 1/(1 - m): dividing
    by it keeps the step size independent of the momentum. PyTorch's weight decay is multiplied
    by the lr, so each group's decay is divided by its lr to keep the decay itself fixed.
    """
    scale = KILO * (1 + 1 / (1 - recipe.momentum))
    learning_rate = recipe.learning_rate / scale
    weight_decay = recipe.weight_decay * recipe.batch_size / scale
    norm_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    norm = [p for p in parameters if id(p) in norm_ids]
    other = [p for p in parameters if id(p) not in norm_ids]
    bias_lr = learning_rate * recipe.bias_lr_scale
    groups = [
        {"params": norm, "lr": bias_lr, "weight_decay": weight_decay / bias_lr},
        {"params": other, "lr": learning_rate, "weight_decay": weight_decay / learning_rate},
    ]
    return torch.optim.SGD(
        [g for g in groups if g["params"]], momentum=recipe.momentum, nesterov=True, foreach=True
    )


class Optimizers(torch.optim.Optimizer):
    """Several optimizers stepped as one (Muon for filters, SGD for the rest)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers
        self.defaults = {}
        self.state = {}

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self, closure=None):
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)


def _muon_and_sgd(model: nn.Module, parameters: list, recipe: Recipe) -> Optimizers:
    """Muon for the 3x3 filter banks; Nesterov SGD for biases and the head.

    Here ``learning_rate`` is the head's (biases get ``bias_lr_scale`` times it) and
    ``weight_decay`` is per example, so a batch applies ``weight_decay * batch_size``.
    """
    filters = [p for p in parameters if p.ndim == 4]
    others = [p for p in parameters if p.ndim != 4]
    weight_decay = recipe.weight_decay * recipe.batch_size
    bias_lr = recipe.learning_rate * recipe.bias_lr_scale
    groups = [
        {"params": [p for p in others if p.ndim == 1], "lr": bias_lr, "weight_decay": weight_decay / bias_lr},
        {
            "params": [p for p in others if p.ndim != 1],
            "lr": recipe.learning_rate,
            "weight_decay": weight_decay / recipe.learning_rate,
        },
    ]
    sgd = torch.optim.SGD(
        [g for g in groups if g["params"]], momentum=recipe.momentum, nesterov=True, foreach=True
    )
    return Optimizers(sgd, Muon(filters, lr=recipe.muon_learning_rate, momentum=recipe.muon_momentum))


def lr_multiplier(step: int, total_steps: int, recipe: Recipe) -> float:
    """The schedule's factor on the learning rate before optimizer step ``step`` (0-based)."""
    if recipe.lr_schedule == "constant":
        return 1.0
    if recipe.lr_schedule == "linear":
        return max(0.0, 1 - step / total_steps)
    peak = max(1, int(recipe.lr_peak * total_steps))
    if step < peak:
        return recipe.lr_start + (1 - recipe.lr_start) * step / peak
    return 1 + (recipe.lr_end - 1) * (step - peak) / max(1, total_steps - peak)


def set_learning_rate(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
