"""What the tasks share: the imbalance test, the monitored metric added to those shown, and the
recipe's own class weights checked against the classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cnnkit.data.balance import IMBALANCE_RATIO

if TYPE_CHECKING:
    import torch


def counts_imbalanced(counts: np.ndarray) -> bool:
    """The largest count is over ``IMBALANCE_RATIO`` times the smallest (or a class has none)."""
    return len(counts) > 1 and counts.max() > IMBALANCE_RATIO * counts.min()


def with_monitored(names: Sequence[str], monitor: str | None) -> tuple[str, ...]:
    """``names`` and, when not among them, the metric ``monitor`` (a history column) follows."""
    from cnnkit.engine.metrics import base_name

    names = list(names)
    if monitor is not None and base_name(monitor) not in names:
        names.append(base_name(monitor))
    return tuple(names)


def listed_weights(
    weights: tuple[float, ...], count: int, what: str, device: torch.device | str
) -> torch.Tensor:
    """The recipe's ``class_weights`` list as a tensor, one a class (``what``: "class" or "label")."""
    import torch

    if len(weights) != count:
        raise ValueError(
            f"class_weights needs one weight a {what} ({count}). Received: {len(weights)} weights"
        )
    return torch.tensor(weights, dtype=torch.float32, device=device)
