"""One training job: everything the trainer is handed, in one object, from ``runs/`` or ``api``.

``fit(job)`` trains ``job.model`` in place and returns its history; the job's fields are the
whole of what a run depends on besides the recipe's own settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnkit.data.stored_images import StoredImages
from cnnkit.engine.callbacks import History
from cnnkit.engine.interrupt import StopRequest
from cnnkit.recipes import Recipe
from cnnkit.runtime.normalization import Normalization
from cnnkit.tasks import SINGLE_LABEL, MultiLabelTask, SingleLabelTask


@dataclass
class TrainingData:
    """Images (tensors, or ``StoredImages`` read from disk) and labels to train on, already split;
    ``val_*`` may be None."""

    train_images: torch.Tensor | StoredImages
    train_labels: torch.Tensor
    val_images: torch.Tensor | StoredImages | None = None
    val_labels: torch.Tensor | None = None

    @property
    def has_validation(self) -> bool:
        return self.val_images is not None and len(self.val_images) > 0


@dataclass
class TrainingJob:
    """A model, its data and recipe, and how this run goes.

    ``normalization``: the numbers the model's inputs are normalised with (kept in checkpoints).
    ``num_classes``: the model's outputs (default: the largest label + 1, or the labels' columns for
    multi-hot labels). ``task``: the kind of labels (``cnnkit.tasks``); ``MULTI_LABEL`` takes
    multi-hot ``(N, labels)`` labels. ``callbacks`` hear about
    the run (``engine.callbacks``); the recipe's best-epoch tracking and early stopping are added
    before them. ``resume_state`` (``Trainer.state_dict()``) continues a stopped run exactly;
    ``stop_request`` (``engine.interrupt``) makes it save and stop between two steps.
    ``input_size``: the model's input side when the stored training images are larger (they are
    cropped to it; default: their size). ``initialize_from_data`` False keeps a data-initialised
    first layer as it is (weights loaded from a trained model).
    """

    model: nn.Module
    data: TrainingData
    recipe: Recipe
    normalization: Normalization
    device: torch.device
    precision: torch.dtype = torch.float32
    task: SingleLabelTask | MultiLabelTask = SINGLE_LABEL
    num_classes: int | None = None
    callbacks: Sequence[object] = field(default_factory=tuple)
    resume_state: dict | None = None
    stop_request: StopRequest | None = None
    input_size: int | None = None
    initialize_from_data: bool = True

    @property
    def classes(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        if self.data.train_labels.ndim == 2:  # multi-hot: one column a label
            return int(self.data.train_labels.shape[1])
        labels = [self.data.train_labels] + ([self.data.val_labels] if self.data.has_validation else [])
        return int(max(int(part.max()) for part in labels if len(part))) + 1


def fit(job: TrainingJob) -> History:
    """Train ``job.model`` in place as ``job.recipe`` says; return the per-epoch history."""
    from cnnkit.engine.trainer import Trainer

    trainer = Trainer(job)
    if job.resume_state is not None:
        trainer.load_state_dict(job.resume_state)
    return trainer.fit()
