"""Starting a run from trained weights: another run's checkpoint (``--init``) or ImageNet weights
published for a registered network (``--pretrained``).

The trunk's weights are loaded; the head is kept when the class names are the same and replaced
(left as initialised) when they differ. The input normalisation is the trained network's own:
its trunk learned on inputs scaled that way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, load_weights
from cnnkit.data.pretrained import PRETRAINED_WEIGHTS, pretrained_weights_file, read_state_dict
from cnnkit.runtime.normalization import Normalization


@dataclass
class InitialWeights:
    """Trained weights a run starts from, and what they came with."""

    source: str  # how the user named them, for messages and the run's config
    model_name: str
    state_dict: dict[str, torch.Tensor]
    normalization: Normalization
    class_names: list[str] | None = None  # None: classes the new data does not share (ImageNet's)
    image_size: int | None = None  # the size the weights were trained at, when known
    model_arguments: dict[str, Any] = field(default_factory=dict)


def initial_weights(
    init: str | os.PathLike | None, pretrained: str | os.PathLike | bool | None, model: str, progress: bool
) -> InitialWeights | None:
    """The weights ``--init CHECKPOINT`` or ``--pretrained [FILE]`` name for ``model``, or None."""
    if init is not None and pretrained:
        raise ValueError("--init and --pretrained both name starting weights: give one of them.")
    if init is not None:
        checkpoint = load_checkpoint(init)
        arguments = {
            key: value
            for key, value in checkpoint.model_arguments.items()
            if key not in ("num_classes", "image_size")
        }
        return InitialWeights(
            str(init),
            checkpoint.model_name,
            checkpoint.state_dict,
            checkpoint.normalization,
            list(checkpoint.class_names),
            int(checkpoint.image_size),
            arguments,
        )
    if not pretrained:
        return None
    if model not in PRETRAINED_WEIGHTS:
        available = ", ".join(sorted(PRETRAINED_WEIGHTS))
        raise ValueError(f"--pretrained weights exist for {available}. Received: --model {model}")
    local = None if pretrained is True else pretrained
    path = pretrained_weights_file(model, local, progress=progress)
    entry = PRETRAINED_WEIGHTS[model]
    normalization = Normalization(mean=tuple(entry.mean), std=tuple(entry.std))
    return InitialWeights(str(path), model, read_state_dict(path), normalization)


def apply_initial_weights(classifier: Classifier, initial: InitialWeights) -> str:
    """Load ``initial`` into ``classifier``'s network; returns one line saying what was kept."""
    network = classifier.network
    head = getattr(network, "head_name", None)
    if head is None:
        raise ValueError(
            f"cnnkit cannot start {classifier.model_name} from trained weights: it names no head."
        )
    same_classes = initial.class_names == classifier.class_names
    if same_classes:
        weights = initial.state_dict
    else:
        _check_trunk_complete(network, initial, head)
        weights = dict(network.state_dict())  # the new head, as initialised
        weights.update({name: tensor for name, tensor in initial.state_dict.items() if not _in(name, head)})
    load_weights(network, weights, initial.source)
    classifier.normalization = initial.normalization
    kept = (
        "trunk and head" if same_classes else f"trunk; a new head for {len(classifier.class_names)} classes"
    )
    return f"Starting from {initial.source}: {kept}."


def _check_trunk_complete(network: torch.nn.Module, initial: InitialWeights, head: str) -> None:
    """Fail in one line when ``initial`` lacks tensors of the network's trunk: the network's own
    random ones would fill the gaps, and the run would start mostly untrained while saying it
    started from the file. The head is replaced for new classes, so it may be missing.

    BatchNorm's ``num_batches_tracked`` counters are no weights (files saved before PyTorch 0.4.1
    have none; PyTorch's own loading tolerates their absence), so they are not required.
    """
    missing = [
        name
        for name in network.state_dict()
        if name not in initial.state_dict and not _in(name, head) and not name.endswith("num_batches_tracked")
    ]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(
            f"{initial.source} lacks {len(missing)} tensors of the {network.model_name} network "
            f"(only its head, {head}, is replaced for new classes): {shown}."
        )


def _in(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")
