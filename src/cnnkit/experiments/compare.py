"""Comparing runs: one table row a run and their curves overlaid, read from their run folders.

A run folder holds everything needed: ``config.yaml`` (the whole recipe), ``metrics.csv`` (each
epoch), ``report.json`` (training time, the final score) and ``best.pt`` (the network, counted
for its parameters); a later ``cnnkit evaluate`` adds ``evaluate*/report.json``. The table shows
the recipe fields where the runs differ, and the epoch where validation loss was lowest: after
it the network learns its training images rather than the task (the overfitting point).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnkit.experiments.tables import align_columns, format_value
from cnnkit.fileio import atomic_write_bytes, atomic_write_text, json_text
from cnnkit.reports.training_curves import read_metrics_csv
from cnnkit.runs.folders import CONFIG_FILE, REPORT_FILE, output_folder, read_run_config

COMPARISON_PLOT = "comparison.png"
COMPARISON_JSON = "comparison.json"
DEFAULT_NAME = "compare"
METRICS_FILE = "metrics.csv"
CHECKPOINT_SUFFIXES = (".pt", ".pth")
# Fields the table shows in columns of their own (model; epochs: trained, and "/planned" when fewer),
# or that only name a recipe (name).
_OWN_COLUMNS = ("model", "epochs", "name")


@dataclass
class RunSummary:
    """What one run comes to: its settings, size, time and validation (and test) figures."""

    label: str  # the run folder's name (with its parent's when two folders share a name)
    folder: Path
    model: str
    recipe: str
    settings: dict[str, Any]  # every recipe field (model arguments as dotted keys) and "data"
    parameters: int | None
    epochs: int  # epochs trained: rows of metrics.csv
    planned_epochs: float  # the recipe's
    finished: bool  # report.json written: the run ended normally (early stopping included)
    train_seconds: float | None  # report.json's, else the epochs' own seconds added up
    best_val_accuracy: float | None
    best_val_accuracy_epoch: int | None
    final_val_accuracy: float | None
    best_val_loss: float | None
    lowest_val_loss_epoch: int | None  # the overfitting point
    final_val_loss: float | None
    test_accuracy: float | None  # from report.json or the newest evaluate*/report.json on a test split
    # Every other validation metric the run recorded (val_macro_f1, val_balanced_accuracy...): its
    # best value, in the metric's own direction (engine.metrics).
    best_other: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(repr=False, default_factory=list)

    def to_dict(self, fields: Sequence[str] = ()) -> dict[str, Any]:
        """Plain values for JSON: every figure, and the settings named in ``fields``."""
        values = {
            key: getattr(self, key) for key in self.__dataclass_fields__ if key not in ("history", "settings")
        }
        values["folder"] = str(self.folder)
        values["settings"] = {key: self.settings.get(key) for key in fields}
        return values


@dataclass
class Comparison:
    """Runs side by side, the fields where they differ, and the files written."""

    runs: list[RunSummary]
    differing_fields: list[str]
    folder: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return format_comparison_table(self.runs, self.differing_fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [run.to_dict(self.differing_fields) for run in self.runs],
            "differing_fields": self.differing_fields,
            "folder": str(self.folder) if self.folder else None,
            "files": {kind: str(path) for kind, path in self.files.items()},
        }


def compare_runs(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    runs_folder: str | os.PathLike = "runs",
) -> Comparison:
    """Read the runs at ``paths`` (run folders or checkpoints inside them) and write
    ``comparison.png`` and ``comparison.json`` into ``out`` (new or empty), by default into a new
    ``compare``, ``compare2``... folder in ``runs_folder``: an earlier comparison is never replaced."""
    runs = read_runs(paths)
    comparison = Comparison(runs, differing_fields(runs))
    comparison.folder = _output_folder(out, runs_folder)
    comparison.files = {
        "plot": comparison.folder / COMPARISON_PLOT,
        "json": comparison.folder / COMPARISON_JSON,
    }
    plot_comparison(comparison.files["plot"], runs)
    text = json_text(comparison.to_dict(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(comparison.files["json"], text)
    return comparison


def run_folder_of(path: str | os.PathLike) -> Path:
    """The run folder ``path`` names: itself, or the folder of a checkpoint (best.pt, last.pt) in it."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"Run not found: {path}")
    if not path.is_dir() or not (path / CONFIG_FILE).is_file():
        raise ValueError(
            f"{path} is not a run folder (no {CONFIG_FILE}): compare takes folders `cnnkit train` made, "
            "or checkpoints in them"
        )
    if not (path / METRICS_FILE).is_file():
        raise ValueError(
            f"{path} has no {METRICS_FILE}: the run finished no epoch, so there is nothing to compare."
        )
    return path


def read_runs(paths: Sequence[str | os.PathLike]) -> list[RunSummary]:
    """Each run at ``paths``, labelled by its folder's name (with its parent's when names repeat)."""
    if not paths:
        raise ValueError("Name at least one run folder to compare.")
    folders = [run_folder_of(path) for path in paths]
    resolved = [folder.resolve() for folder in folders]
    repeated = next(
        (folder for folder, real in zip(folders, resolved, strict=True) if resolved.count(real) > 1), None
    )
    if repeated is not None:
        raise ValueError(f"A run is named twice. Received: {repeated}")
    names = [folder.name for folder in folders]
    labels = [
        folder.name if names.count(folder.name) == 1 else f"{folder.parent.name}/{folder.name}"
        for folder in folders
    ]
    return [read_run(folder, label) for folder, label in zip(folders, labels, strict=True)]


def read_run(path: str | os.PathLike, label: str | None = None) -> RunSummary:
    """One run's summary from its folder (or a checkpoint in it)."""
    folder = run_folder_of(path)
    config = read_run_config(folder)
    history = read_metrics_csv(folder / METRICS_FILE)
    report = _read_json(folder / REPORT_FILE)
    recipe = config.recipe.to_dict()
    settings = {key: value for key, value in recipe.items() if key != "model_arguments"}
    settings.update({f"model_arguments.{key}": value for key, value in recipe["model_arguments"].items()})
    settings["data"] = config.data
    seconds = report.get("train_seconds") if report else None
    if seconds is None and history:
        seconds = sum(row.get("seconds", 0.0) for row in history)
    accuracy_epoch, best_accuracy = _extreme(history, "val_accuracy", max)
    loss_epoch, best_loss = _extreme(history, "val_loss", min)
    return RunSummary(
        label=label or folder.name,
        folder=folder,
        model=str(config.values.get("model", config.recipe.model)),
        recipe=config.recipe.name,
        settings=settings,
        parameters=count_parameters(folder),
        epochs=len(history),
        planned_epochs=config.recipe.epochs,
        finished=report is not None,
        train_seconds=seconds,
        best_val_accuracy=best_accuracy,
        best_val_accuracy_epoch=accuracy_epoch,
        final_val_accuracy=history[-1].get("val_accuracy") if history else None,
        best_val_loss=best_loss,
        lowest_val_loss_epoch=loss_epoch,
        final_val_loss=history[-1].get("val_loss") if history else None,
        test_accuracy=read_test_accuracy(folder, report),
        best_other=best_other_metrics(history),
        history=history,
    )


# The validation columns the table has its own columns for.
_MAIN_METRICS = ("val_accuracy", "val_loss")


def best_other_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """The best value of each validation column besides accuracy and loss, by its metric's direction
    (a column no metric of this cnnkit knows is left out)."""
    from cnnkit.engine.metrics import METRICS, base_name, higher_is_better

    columns = [key for key in (history[0] if history else {}) if key.startswith("val_")]
    best = {}
    for column in columns:
        if column in _MAIN_METRICS or base_name(column) not in METRICS:
            continue
        _, value = _extreme(history, column, max if higher_is_better(column) else min)
        if value is not None:
            best[column] = value
    return best


def count_parameters(folder: Path) -> int | None:
    """The parameters of the run's network, rebuilt from ``best.pt`` (or ``last.pt``); None without one."""
    from cnnkit.checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            model = load_checkpoint(folder / name).build_model(folder / name)
            return sum(parameter.numel() for parameter in model.parameters())
    return None


def read_test_accuracy(folder: Path, report: dict[str, Any] | None) -> float | None:
    """The run's test accuracy: its report's final evaluation when that was on a test split, else
    the newest ``evaluate*/report.json`` in the folder that scored a test split."""
    evaluation = (report or {}).get("evaluation") or {}
    if evaluation.get("split") == "test":
        return evaluation.get("accuracy")
    reports = sorted(
        folder.glob(f"evaluate*/{REPORT_FILE}"), key=lambda path: path.stat().st_mtime, reverse=True
    )
    for path in reports:
        values = _read_json(path) or {}
        if values.get("split") == "test" and values.get("accuracy") is not None:
            return values["accuracy"]
    return None


def differing_fields(runs: Sequence[RunSummary]) -> list[str]:
    """The settings (recipe fields, model arguments, the data) whose values are not all the same,
    in recipe order; the recipe's name is left out (the table has a column for it)."""
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run.settings if key not in keys and key != "name"]
    missing = object()
    return [key for key in keys if len({repr(run.settings.get(key, missing)) for run in runs}) > 1]


def format_comparison_table(runs: Sequence[RunSummary], fields: Sequence[str]) -> str:
    """One row a run: model, recipe, the differing fields, then size, time and the figures."""
    extra = [key for key in fields if key not in _OWN_COLUMNS]
    # Multi-label runs have no accuracy: their columns go when no run has one (mAP and F1 follow).
    accuracy = any(run.best_val_accuracy is not None or run.test_accuracy is not None for run in runs)
    header = ["run", "model", "recipe", *extra, "params", "epochs", "time"]
    header += ["best val_acc", "final val_acc"] if accuracy else []
    header += ["best val_loss", "lowest val_loss epoch", "final val_loss"]
    header += ["test acc"] if accuracy else []
    others = list(dict.fromkeys(key for run in runs for key in run.best_other))
    header += [f"best {name}" for name in others]
    lines = [header]
    for run in runs:
        epochs = str(run.epochs)
        if run.epochs < math.ceil(run.planned_epochs):  # stopped early, interrupted or pruned
            epochs += f"/{format_value(run.planned_epochs)}"
        best_accuracy = _figure(run.best_val_accuracy)
        if run.best_val_accuracy_epoch is not None:
            best_accuracy += f" ({run.best_val_accuracy_epoch})"
        row = [run.label, run.model, run.recipe, *(format_value(run.settings.get(key, "-")) for key in extra)]
        row += [_count(run.parameters), epochs, _duration(run.train_seconds)]
        row += [best_accuracy, _figure(run.final_val_accuracy)] if accuracy else []
        row += [_figure(run.best_val_loss), _integer(run.lowest_val_loss_epoch), _figure(run.final_val_loss)]
        row += [_figure(run.test_accuracy)] if accuracy else []
        row += [_figure(run.best_other.get(name)) for name in others]
        lines.append(row)
    return align_columns(lines)


def plot_comparison(path: str | os.PathLike, runs: Sequence[RunSummary]) -> None:
    """Loss and accuracy (multi-label runs alone: mAP) by epoch, one colour a run: training dashed,
    validation solid, and a ring where validation loss was lowest (the overfitting point)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    score = "accuracy" if any(run.history and "accuracy" in run.history[0] for run in runs) else "map"
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(runs):
        colour = colours[index % len(colours)]
        epochs = [int(row["epoch"]) for row in run.history]
        for axis, metric in zip(axes, ("loss", score), strict=True):
            if run.history and metric in run.history[0]:
                axis.plot(epochs, [row[metric] for row in run.history], "--", color=colour, alpha=0.8)
            if run.history and "val_" + metric in run.history[0]:
                axis.plot(
                    epochs, [row["val_" + metric] for row in run.history], "-", color=colour, label=run.label
                )
        if run.lowest_val_loss_epoch is not None:
            axes[0].plot(
                run.lowest_val_loss_epoch, run.best_val_loss, "o", color=colour, fillstyle="none", ms=10
            )
    for axis, metric in zip(axes, ("loss", score), strict=True):
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    styles = [
        Line2D([], [], color="grey", linestyle="--", label="train"),
        Line2D([], [], color="grey", linestyle="-", label="validation"),
        Line2D([], [], color="grey", marker="o", linestyle="", fillstyle="none", label="lowest val_loss"),
    ]
    axes[0].legend(handles=styles, loc="upper right")
    axes[1].legend(title="run", loc="lower right")
    figure.suptitle("Runs compared: " + ", ".join(run.label for run in runs))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _output_folder(out: str | os.PathLike | None, runs_folder: str | os.PathLike) -> Path:
    """``out`` when new or empty, else a fresh ``compare``, ``compare2``... in ``runs_folder``."""
    return output_folder(out, runs_folder, DEFAULT_NAME, "comparison")


def _extreme(history: list[dict[str, float]], metric: str, pick: Any) -> tuple[int | None, float | None]:
    """(epoch, value) of the best ``metric`` by ``pick`` (max or min); the first epoch on ties."""
    rows = [row for row in history if metric in row and not math.isnan(row[metric])]
    if not rows:
        return None, None
    best = pick(rows, key=lambda row: row[metric])
    return int(best["epoch"]), best[metric]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not readable JSON.") from None
    return values if isinstance(values, dict) else None


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _integer(value: int | None) -> str:
    return "-" if value is None else str(value)


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e3 else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
