"""The training callback that keeps a run folder up to date while a run trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cnnkit.checkpoint import Checkpoint, save_checkpoint
from cnnkit.engine.callbacks import Callback, EpochEnd, TrainingView
from cnnkit.reports.training_curves import plot_curves, write_metrics_csv


class RunRecorder(Callback):
    """Writes metrics.csv and curves.png after each epoch, ``last.pt`` (everything needed to
    continue) after each epoch and on interruption, and ``best.pt`` whenever the epoch is the best
    by the monitored metric (``engine.monitoring.BestEpoch``, which hears each epoch before this).
    A worse model never replaces ``best.pt``.
    """

    def __init__(self, folder: Path, checkpoint_template: Checkpoint, plots: bool = True) -> None:
        self.folder = folder
        self.template = checkpoint_template
        self.plots = plots

    def on_epoch_end(self, state: EpochEnd) -> None:
        write_metrics_csv(self.folder / "metrics.csv", state.history.rows)
        if self.plots:
            plot_curves(self.folder / "curves.png", state.history.rows, title=self.folder.name)
        self.save_last(state.view)
        if state.history.best_epoch == state.epoch:
            save_checkpoint(self.folder / "best.pt", self._checkpoint(state.view, resumable=False))

    def on_interrupt(self, view: TrainingView) -> Path:
        """Save the mid-epoch state so that ``cnnkit train --resume`` continues from this step."""
        return self.save_last(view)

    def save_last(self, view: TrainingView) -> Path:
        return save_checkpoint(self.folder / "last.pt", self._checkpoint(view, resumable=True))

    def _checkpoint(self, view: TrainingView, resumable: bool) -> Checkpoint:
        rows = view.history.rows
        state = view.state_dict() if resumable else None
        return dataclasses.replace(
            self.template,
            state_dict=view.model.state_dict(),
            epoch=view.completed_epochs,
            metrics=rows[-1] if rows else {},
            optimizer_state=state["optimizer"] if state else None,
            training_state=state["training"] if state else None,
        )
