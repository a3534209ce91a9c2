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
from cnnkit.engine.trainer import EpochEnd
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
    """A training callback: after each epoch, write metrics.csv, curves.png, last.pt, best.pt."""

    def __init__(self, folder: Path, checkpoint_template: Checkpoint, plots: bool = True) -> None:
        self.folder = folder
        self.template = checkpoint_template
        self.plots = plots
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, state: EpochEnd) -> None:
        write_metrics_csv(self.folder / "metrics.csv", state.history.rows)
        if self.plots:
            plot_curves(self.folder / "curves.png", state.history.rows, title=self.folder.name)
        # last.pt carries the optimizer state so a run can be continued; best.pt is for use.
        save_checkpoint(self.folder / "last.pt", self._checkpoint(state, with_optimizer=True))
        # Best by validation accuracy; without a validation split, by training accuracy.
        score = state.metrics.get("val_accuracy", state.metrics["accuracy"])
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, state.epoch
            save_checkpoint(self.folder / "best.pt", self._checkpoint(state, with_optimizer=False))

    def _checkpoint(self, state: EpochEnd, with_optimizer: bool) -> Checkpoint:
        return dataclasses.replace(
            self.template,
            state_dict=state.model.state_dict(),
            epoch=state.epoch,
            metrics=state.metrics,
            optimizer_state=state.optimizer.state_dict() if with_optimizer else None,
        )
