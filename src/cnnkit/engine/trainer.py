"""The training loop: read it top to bottom.

Data lives in memory as one uint8 tensor; each step gathers a batch by index, converts it to
normalised float in channels_last layout, runs forward/backward under autocast, and steps a
fused optimizer. There is no per-sample Python and no DataLoader in the hot loop.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.engine.device import configure_threads, flush_denormals
from cnnkit.engine.evaluation import evaluate_tensors
from cnnkit.engine.preprocess import InputTransform, Normalization
from cnnkit.progress import ProgressBar
from cnnkit.recipes import Recipe


@dataclass
class History:
    """One row of metrics per epoch; ``history.history["val_accuracy"]`` reads like Keras."""

    rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def history(self) -> dict[str, list[float]]:
        keys = self.rows[0].keys() if self.rows else []
        return {key: [row[key] for row in self.rows] for key in keys}


@dataclass
class EpochEnd:
    """What a callback sees after each epoch."""

    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]
    history: History
    model: nn.Module
    optimizer: torch.optim.Optimizer


class Callback(Protocol):
    def on_epoch_end(self, state: EpochEnd) -> None: ...


@dataclass
class TrainingData:
    """Tensors to train on, already split; ``val_*`` may be None."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused: one kernel over all parameters instead of a dozen passes over memory.

    On CPU the fused kernel measured 1.0 ms a step for the tutorial's 2.1M parameters against
    6.3 ms for the default (foreach) one: the optimizer is memory-bound, fusion reads it once.
    """
    return torch.optim.Adam(
        model.parameters(),
        lr=recipe.learning_rate,
        betas=recipe.adam_betas,
        eps=recipe.adam_epsilon,
        weight_decay=recipe.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )


def fit(
    model: nn.Module,
    data: TrainingData,
    recipe: Recipe,
    normalization: Normalization,
    device: torch.device,
    precision: torch.dtype,
    callbacks: Sequence[Callback] = (),
    verbose: bool = True,
    stream: TextIO | None = None,
) -> History:
    """Train ``model`` in place for ``recipe.epochs`` epochs; return the per-epoch history."""
    stream = stream or sys.stdout
    configure_threads()
    flush_denormals()
    model.to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe, device)
    # The shuffling generator lives on the CPU so the same seed gives the same order anywhere.
    generator = torch.Generator().manual_seed(recipe.seed)
    history = History()
    for epoch in range(1, recipe.epochs + 1):
        start = time.perf_counter()
        metrics = train_one_epoch(
            model,
            optimizer,
            data,
            recipe,
            normalization,
            device,
            precision,
            generator,
            description=f"Epoch {epoch}/{recipe.epochs}",
            verbose=verbose,
            stream=stream,
        )
        train_seconds = time.perf_counter() - start
        if data.val_images is not None and len(data.val_images):
            val = evaluate_tensors(
                model,
                data.val_images,
                data.val_labels,
                normalization,
                device,
                precision,
                recipe.eval_batch_size,
            )
            metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        seconds = time.perf_counter() - start
        metrics = {
            "epoch": epoch,
            "seconds": seconds,
            "ms_per_sample": 1000 * train_seconds / len(data.train_images),
            **metrics,
        }
        history.rows.append(metrics)
        if verbose:
            stream.write(format_epoch_line(epoch, recipe.epochs, metrics) + "\n")
            stream.flush()
        for callback in callbacks:
            callback.on_epoch_end(EpochEnd(epoch, recipe.epochs, metrics, history, model, optimizer))
    return history


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    recipe: Recipe,
    normalization: Normalization,
    device: torch.device,
    precision: torch.dtype,
    generator: torch.Generator,
    description: str,
    verbose: bool,
    stream: TextIO,
) -> dict[str, float]:
    """One pass over the shuffled training data; returns mean loss and accuracy (Keras's numbers)."""
    model.train()
    images, labels = data.train_images, data.train_labels
    order = torch.randperm(len(images), generator=generator)
    steps = math.ceil(len(images) / recipe.batch_size)
    to_input = InputTransform(normalization, device)
    # Sums stay on the device: reading them every step would force a CUDA sync.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    progress = ProgressBar(steps, description, unit="step", stream=stream, enabled=verbose)
    for step in range(steps):
        batch = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        inputs = to_input(images[batch])
        targets = labels[batch].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=recipe.label_smoothing)
        # Reading the loss forces a device sync: free on the CPU, so every step there; on a GPU
        # only at the progress updates below, which sync anyway.
        sync_point = step % 50 == 0 or step == steps - 1
        if (device.type == "cpu" or sync_point) and not torch.isfinite(loss):
            raise FloatingPointError(f"Loss became {loss.item()} at {description.lower()}, step {step + 1}.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(batch)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(batch)
        if verbose and sync_point:
            progress.update(
                step + 1 - progress.count,
                loss=loss_sum.item() / seen,
                accuracy=correct.item() / seen,
            )
    progress.close()
    return {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen}


def format_epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """``Epoch 1/5 - 5.1s - 0.127 ms/sample - loss: 1.3853 - accuracy: 0.4956 - val_loss: ...``"""
    parts = [
        f"Epoch {epoch}/{epochs}",
        f"{metrics['seconds']:.1f}s",
        f"{metrics['ms_per_sample']:.3f} ms/sample",
    ]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in metrics:
            parts.append(f"{key}: {metrics[key]:.4f}")
    return " - ".join(parts)
