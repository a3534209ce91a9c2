"""Training on the console: a progress bar during each epoch and a Keras-like line after it."""

from __future__ import annotations

import sys
from typing import TextIO

from cnnkit.engine.callbacks import Callback, EpochBegin, EpochEnd, Progress
from cnnkit.progress import ProgressBar


def format_epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """``Epoch 1/5 - 5.1s - 0.127 ms/sample - loss: 1.3853 - accuracy: 0.4956 - val_loss: ...``"""
    from cnnkit.engine.metrics import reported_metric_names

    parts = [
        f"Epoch {epoch}/{epochs}",
        f"{metrics['seconds']:.1f}s",
        f"{metrics['ms_per_sample']:.3f} ms/sample",
    ]
    parts += [f"{key}: {metrics[key]:.4f}" for key in reported_metric_names() if key in metrics]
    return " - ".join(parts)


class ConsoleLogger(Callback):
    """Writes the progress bar and the epoch lines to ``stream`` (default: standard output)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.bar: ProgressBar | None = None

    def on_train_begin(self, trainer) -> None:
        share = -(-trainer.batch_size // trainer.distributed.world_size)
        if trainer.micro_batch_size < share:
            pieces = -(-share // trainer.micro_batch_size)
            self.stream.write(
                f"Batch {trainer.batch_size} as {pieces} micro-batches of {trainer.micro_batch_size} a step, "
                f"to stay within the {trainer.recipe.memory_budget_gb:g} GB memory budget "
                "(--set memory_budget_gb=...); BatchNorm normalises each micro-batch.\n"
            )

    def on_epoch_begin(self, state: EpochBegin) -> None:
        self.bar = ProgressBar(
            state.steps, f"Epoch {state.epoch}/{state.epochs}", unit="step", stream=self.stream
        )
        if state.step:  # resumed mid-epoch
            self.bar.update(state.step)

    def on_progress(self, state: Progress) -> None:
        if self.bar is not None:
            self.bar.update(state.step - self.bar.count, **state.metrics)

    def on_retry(self, retry) -> None:
        self._close_bar()
        self.stream.write(
            f"{retry.reason} Training epoch {retry.epoch} again from step {retry.step + 1} "
            f"at {retry.learning_rate_scale:g}x the learning rate.\n"
        )

    def on_epoch_end(self, state: EpochEnd) -> None:
        self._close_bar()
        self.stream.write(format_epoch_line(state.epoch, state.epochs, state.metrics) + "\n")
        if state.stopping_early:
            tracker = state.trainer.best
            self.stream.write(
                f"Early stopping: {tracker.monitor} has not improved for {tracker.patience} epochs; "
                f"restoring the weights of epoch {tracker.epoch}.\n"
            )
        self.stream.flush()

    def on_interrupt(self, trainer: object) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
