"""Run folders: ``runs/<name>/`` with config, metrics, curves, checkpoints and the final report."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from cnnkit.checkpoint import Checkpoint, save_checkpoint, to_plain
from cnnkit.engine.history import EpochEnd
from cnnkit.engine.trainer import Trainer
from cnnkit.fileio import atomic_write_text
from cnnkit.reports.history import plot_curves, write_metrics_csv


def create_run_folder(out: str | os.PathLike = "runs", name: str | None = None) -> Path:
    """Make a fresh folder ``out/name`` (default name ``train``), numbered if it exists.

    ``train``, ``train2``, ``train3``... as Ultralytics does: an earlier run is never overwritten.
    """
    base = name or "train"
    if not re.fullmatch(r"[\w.\-]+", base):
        raise ValueError(f"A run name may hold letters, digits, '.', '-' and '_'. Received: name={base!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        folder = out / (base if number == 1 else f"{base}{number}")
        try:
            folder.mkdir()  # atomic: two concurrent runs never share a folder
            return folder
        except FileExistsError:
            number += 1


def write_config(folder: Path, config: dict[str, Any]) -> None:
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(to_plain(config), sort_keys=False))


def write_report(folder: Path, report: dict[str, Any]) -> None:
    atomic_write_text(folder / "report.json", json.dumps(to_plain(report), indent=2) + "\n")


class RunRecorder:
    """A training callback writing the run folder: metrics.csv and curves.png after each epoch,
    ``last.pt`` (everything needed to continue) after each epoch and on interruption, and
    ``best.pt`` whenever the monitored metric improves. A worse model never replaces ``best.pt``.
    """

    def __init__(self, folder: Path, checkpoint_template: Checkpoint, plots: bool = True) -> None:
        self.folder = folder
        self.template = checkpoint_template
        self.plots = plots

    def on_epoch_end(self, state: EpochEnd) -> None:
        write_metrics_csv(self.folder / "metrics.csv", state.history.rows)
        if self.plots:
            plot_curves(self.folder / "curves.png", state.history.rows, title=self.folder.name)
        self.save_last(state.trainer)
        if state.improved:
            save_checkpoint(self.folder / "best.pt", self._checkpoint(state.trainer, resumable=False))

    def on_interrupt(self, trainer: Trainer) -> Path:
        """Save the mid-epoch state so that ``cnnkit train --resume`` continues from this step."""
        return self.save_last(trainer)

    def save_last(self, trainer: Trainer) -> Path:
        return save_checkpoint(self.folder / "last.pt", self._checkpoint(trainer, resumable=True))

    def _checkpoint(self, trainer: Trainer, resumable: bool) -> Checkpoint:
        rows = trainer.history.rows
        state = trainer.state_dict() if resumable else None
        return dataclasses.replace(
            self.template,
            state_dict=trainer.model.state_dict(),
            epoch=trainer.completed_epochs,
            metrics=rows[-1] if rows else {},
            optimizer_state=state["optimizer"] if state else None,
            training_state=state["training"] if state else None,
        )
