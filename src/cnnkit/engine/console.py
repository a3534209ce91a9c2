"""Training on the console: a progress bar during each epoch and a Keras-like line after it."""

from __future__ import annotations

import sys
from typing import TextIO

from cnnkit.engine.callbacks import Callback, EpochBegin, EpochEnd, Progress
from cnnkit.progress import ProgressBar


def format_epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """``Epoch 1/5 - 5.1s - 0.127 ms/sample - loss: 1.3853 - accuracy: 0.4956 - val_loss: ...``

    Every metric of the row, in its order (training figures, then their validation twins)."""
    parts = [
        f"Epoch {epoch}/{epochs}",
        f"{metrics['seconds']:.1f}s",
        f"{metrics['ms_per_sample']:.3f} ms/sample",
    ]
    parts += [f"{key}: {value:.4f}" for key, value in metrics.items() if key not in _TIMING]
    return " - ".join(parts)


_TIMING = ("epoch", "seconds", "ms_per_sample")


class ConsoleLogger(Callback):
    """Writes the progress bar and the epoch lines to ``stream`` (default: standard output)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.bar: ProgressBar | None = None

    def on_train_begin(self, view) -> None:
        plan = view.plan
        batch, micro = plan["batch_size"], plan["micro_batch_size"]
        share = -(-batch // plan["world_size"])
        if micro < share:
            pieces = -(-share // micro)
            self.stream.write(
                f"Batch {batch} as {pieces} micro-batches of {micro} a step, "
                f"to stay within the {view.recipe.memory_budget_gb:g} GB memory budget "
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
        self.stream.flush()

    def on_train_end(self, view) -> None:
        """Why the run ended before its last epoch (early stopping, a tuner's pruning), if it did."""
        if view.stop_reason:
            self.stream.write(view.stop_reason + "\n")
            self.stream.flush()

    def on_interrupt(self, view: object) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
