"""A study's trials as cnnkit shows them: rows, ``trials.csv``, a table and two plots.

Nothing here imports Optuna: ``trial_row`` reads the attributes of a frozen trial, and the plots
take plain values (``tune`` computes the parameter importances).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnkit.experiments.space import Distribution
from cnnkit.experiments.tables import align_columns, format_value
from cnnkit.fileio import atomic_write_bytes, atomic_write_text

# Optuna's TrialState names, as a table says them.
STATE_NAMES = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}


@dataclass(frozen=True)
class TrialRow:
    """One trial: its state, value (the best monitored validation figure), time and settings."""

    number: int
    state: str  # complete, pruned, failed, running, waiting
    value: float | None
    seconds: float | None
    epochs: int  # epochs trained: one validation value reported to the pruner an epoch
    last_reported: float | None  # the last epoch's value (where a pruned trial stopped)
    params: dict[str, Any]  # recipe field -> value (lists as lists)
    run_folder: str | None
    error: str | None


def trial_row(trial: Any, space: Mapping[str, Distribution]) -> TrialRow:
    """The row of an Optuna ``FrozenTrial``; parameters as recipe values (``space`` decodes them)."""
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    params = {
        key: space[key].recipe_value(value) if key in space else value for key, value in trial.params.items()
    }
    attributes = trial.user_attrs
    return TrialRow(
        number=trial.number,
        state=STATE_NAMES.get(trial.state.name, trial.state.name.lower()),
        value=trial.value if trial.state.name == "COMPLETE" else None,
        seconds=duration,
        epochs=len(trial.intermediate_values),
        last_reported=trial.intermediate_values[max(trial.intermediate_values)]
        if trial.intermediate_values
        else None,
        params=params,
        run_folder=attributes.get("run_folder"),
        error=attributes.get("error"),
    )


def write_trials_csv(path: str | os.PathLike, rows: Sequence[TrialRow], keys: Sequence[str]) -> None:
    """``trials.csv``: number, state, value, seconds, epochs trained, run folder, a column a parameter
    (named by its recipe field), error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["number", "state", "value", "duration_seconds", "epochs_trained", "run_folder", *keys, "error"]
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [
                row.number,
                row.state,
                "" if row.value is None else f"{row.value:.6g}",
                "" if row.seconds is None else f"{row.seconds:.2f}",
                row.epochs,
                row.run_folder or "",
                *(format_value(row.params[key]) if key in row.params else "" for key in keys),
                row.error or "",
            ]
        )
    atomic_write_text(path, buffer.getvalue())


def format_trials_table(rows: Sequence[TrialRow], keys: Sequence[str], monitor: str, best: int | None) -> str:
    """The trials as an aligned text table; the best trial is marked with ``*``."""
    header = ["trial", "state", monitor, "epochs run", "seconds", *keys]
    lines = [header]
    for row in rows:
        lines.append(
            [
                f"{row.number}{' *' if row.number == best else ''}",
                row.state,
                "-" if row.value is None else f"{row.value:.4f}",
                str(row.epochs),
                "-" if row.seconds is None else f"{row.seconds:.1f}",
                *(format_value(row.params.get(key, "-")) for key in keys),
            ]
        )
    return align_columns(lines)


def plot_optimization_history(
    path: str | os.PathLike, rows: Sequence[TrialRow], monitor: str, maximize: bool, title: str = ""
) -> None:
    """Each finished trial's value by trial number, the best so far as a step line; pruned trials
    as crosses at the last value they reported."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4), constrained_layout=True)
    complete = [row for row in rows if row.value is not None]
    if complete:
        axis.plot([row.number for row in complete], [row.value for row in complete], "o", label="complete")
        best, steps = None, []
        for row in complete:
            best = row.value if best is None else (max if maximize else min)(best, row.value)
            steps.append(best)
        axis.step([row.number for row in complete], steps, where="post", color="tab:red", label="best so far")
    else:
        axis.text(0.5, 0.5, "no trial has finished yet", ha="center", va="center", transform=axis.transAxes)
    pruned = [row for row in rows if row.state == "pruned" and row.last_reported is not None]
    if pruned:
        values = [row.last_reported for row in pruned]
        axis.plot([row.number for row in pruned], values, "x", color="grey", label="pruned (last epoch)")
    axis.set_xlabel("trial")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(monitor)
    axis.grid(alpha=0.3)
    if complete or pruned:
        axis.legend()
    axis.set_title(title or "optimisation history")
    _save(figure, path, plt)


def plot_param_importances(
    path: str | os.PathLike, importances: Mapping[str, float] | None, note: str = "", title: str = ""
) -> None:
    """Horizontal bars, most important on top; without importances, ``note`` says why."""
    plt = _pyplot()
    figure, axis = plt.subplots(
        figsize=(7, max(2.5, 0.5 * len(importances or {}) + 1.5)), constrained_layout=True
    )
    if importances:
        names = list(importances)[::-1]
        axis.barh(names, [importances[name] for name in names], color="tab:blue")
        axis.set_xlabel("importance (normalised: the bars add up to 1)")
    else:
        axis.axis("off")
        axis.text(
            0.5, 0.5, note or "no importances", ha="center", va="center", wrap=True, transform=axis.transAxes
        )
    axis.set_title(title or "parameter importances")
    _save(figure, path, plt)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | os.PathLike, plt: Any) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
