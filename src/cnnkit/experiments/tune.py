"""``cnnkit tune``: an Optuna study over a recipe's settings, each trial a normal run folder.

The study lives in ``runs/<name>/study.db``, a SQLite database: a stopped search continues with
``resume``, and several processes can search one study at once. TPE samples each trial's settings
from the search space (``experiments.space``); after every epoch the trial reports its validation
metric (the recipe's ``monitor``) to a median pruner, which stops a trial doing worse than the
median of earlier trials at the same epoch. Trial ``n`` trains into ``runs/<name>/trial-<n>/``.
At the end, or after Ctrl-C (which ends the running trial cleanly and keeps the study):
``trials.csv``, ``best.yaml`` (a recipe file ``cnnkit train --recipe`` takes),
``optimization_history.png`` and ``param_importances.png``.

The trials are scored on validation data only: the test split stays unseen by the search.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cnnkit.engine.interrupt import TrainingInterrupted
from cnnkit.experiments.study import (
    STUDY_FILE,
    StudySettings,
    create_study,
    import_optuna,
    load_study,
    new_study_settings,
    quiet_optuna,
)
from cnnkit.experiments.tables import format_value
from cnnkit.experiments.trials import (
    TrialRow,
    format_trials_table,
    plot_optimization_history,
    plot_param_importances,
    trial_row,
    write_trials_csv,
)
from cnnkit.fileio import atomic_write_text
from cnnkit.recipes import Recipe, load_recipe, recipe_to_yaml

TRIALS_FILE = "trials.csv"
BEST_RECIPE_FILE = "best.yaml"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
# PED-ANOVA gives every parameter the same share below this: no information, so no bars.
MIN_TRIALS_FOR_IMPORTANCE = 3
# A trial whose settings cannot train (an invalid combination, a loss gone NaN) fails with its
# reason and the study goes on; anything else (a full disk, a bug) stops the study.
_TRIAL_ERRORS = (ValueError, FloatingPointError)


@dataclass
class TuneResult:
    """A study after this call: its trials (all sessions'), the best one, and the files written."""

    folder: Path
    study_name: str
    settings: StudySettings
    rows: list[TrialRow]
    best: TrialRow | None
    best_recipe: Recipe | None
    files: dict[str, Path] = field(default_factory=dict)
    new_trials: int = 0  # trials this call ran
    interruption: str | None = None  # why the search stopped early (Ctrl-C, SIGTERM)
    exit_code: int = 0  # 130 after Ctrl-C, 143 after SIGTERM, as a shell reports them

    @property
    def table(self) -> str:
        keys = list(self.settings.space)
        best = self.best.number if self.best else None
        return format_trials_table(self.rows, keys, self.settings.recipe.monitor, best)


def tune(
    data: str | os.PathLike | None = None,
    recipe: Recipe | str | os.PathLike | None = None,
    *,
    space: Mapping[str, Any] | str | os.PathLike | None = None,
    trials: int | None = None,
    budget_seconds: float | None = None,
    out: str | os.PathLike = "runs",
    name: str | None = None,
    resume: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    stream: TextIO | None = None,
    pruning_startup_trials: int = 3,
    pruning_warmup_epochs: int = 1,
    sampler_startup_trials: int = 5,
) -> TuneResult:
    """Search ``recipe``'s settings on ``data``: ``trials`` more trials, or until ``budget_seconds``
    is spent (whichever comes first; the running trial always finishes).

    A new study goes to a new folder ``out/name`` (``tune``, ``tune2``, ...); ``resume`` (a study
    folder) continues one with its own data, recipe and space, so it takes none of them. ``space``:
    see ``new_study_settings``. The median pruner stops trials from ``pruning_startup_trials``
    finished trials on, in epochs after ``pruning_warmup_epochs``; TPE samples at random for the
    first ``sampler_startup_trials``. ``seed`` seeds the sampler (offset by the study's trial
    count; None: 0, or on ``resume`` the study's own): several processes searching one study at
    once need different seeds, or those starting together draw the same settings. ``stream``
    gets one line a trial (None: stdout).
    """
    optuna = import_optuna()
    _check_stop(trials, budget_seconds)
    stream = stream or sys.stdout
    with quiet_optuna(optuna):
        if resume is not None:
            given = [
                label
                for label, value in (("--data", data), ("--recipe", recipe), ("--space", space))
                if value
            ]
            if given or overrides:
                raise ValueError(
                    "--resume continues the study with its own data, recipe and space. "
                    f"Received: {', '.join(given + (['--set'] if overrides else []))}"
                )
            study, settings, folder = load_study(optuna, resume)
        else:
            settings = new_study_settings(data or "cifar10", recipe, space, overrides, seed or 0)
            if settings.fixed_note:
                stream.write(settings.fixed_note + "\n")
            study, folder = create_study(optuna, settings, out, name)
        study.sampler = optuna.samplers.TPESampler(
            # Offset by the trials so far: a resumed study does not replay its first random draws.
            seed=(settings.seed if seed is None else seed) + len(study.trials),
            n_startup_trials=sampler_startup_trials,
        )
        study.pruner = optuna.pruners.MedianPruner(
            n_startup_trials=pruning_startup_trials, n_warmup_steps=pruning_warmup_epochs
        )
        before = len(study.trials)
        objective = _Objective(optuna, settings, folder, device, precision)
        interruption, code = None, 0
        try:
            study.optimize(
                objective,
                n_trials=trials,
                timeout=budget_seconds,
                catch=_TRIAL_ERRORS,
                callbacks=[_TrialPrinter(settings, stream)],
            )
        except TrainingInterrupted as error:  # Ctrl-C or SIGTERM: the trial saved its state and stopped
            interruption, code = str(error), error.exit_code
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside a trial's training
            interruption, code = "interrupted", 130
        result = _finish(optuna, study, settings, folder)
    result.new_trials, result.interruption, result.exit_code = len(result.rows) - before, interruption, code
    return result


class PruningCallback:
    """The training callback that reports each epoch's monitored validation value to an Optuna
    trial and, when its pruner says so, asks training to stop after that epoch (``request_stop``):
    the run folder's recorder, listening after it, still writes that epoch, and the trial is
    marked pruned once training has returned.
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.reported: dict[int, float] = {}  # epoch -> value
        self.pruned_after: int | None = None

    def on_epoch_end(self, state: Any) -> None:
        value = state.metrics.get(self.monitor)
        if value is None:
            raise ValueError(
                f"This trial has no {self.monitor}: tuning needs validation data "
                "(validation_split > 0, or a val/ folder)."
            )
        self.trial.report(float(value), state.epoch)
        self.reported[state.epoch] = float(value)
        if self.pruned_after is None and state.epoch < state.epochs and self.trial.should_prune():
            self.pruned_after = state.epoch
            state.view.request_stop(self.reason)

    @property
    def reason(self) -> str:
        value = self.reported[self.pruned_after]
        return (
            f"pruned after epoch {self.pruned_after}: {self.monitor} {value:.4f} is worse than the "
            "median of earlier trials at that epoch"
        )


class _Objective:
    """One trial: sample the space, train a run folder with the pruning callback, return its
    best monitored validation value (the epoch ``best.pt`` holds)."""

    def __init__(
        self, optuna: Any, settings: StudySettings, folder: Path, device: str, precision: str
    ) -> None:
        self.optuna, self.settings, self.folder = optuna, settings, folder
        self.device, self.precision = device, precision

    def __call__(self, trial: Any) -> float:
        from cnnkit.runs.training import train

        overrides = {
            key: distribution.suggest(trial, key) for key, distribution in self.settings.space.items()
        }
        run_name = f"trial-{trial.number}"
        trial.set_user_attr("run_folder", str(self.folder / run_name))
        monitor = self.settings.recipe.monitor
        pruning = PruningCallback(trial, monitor)
        try:
            recipe = load_recipe(self.settings.recipe, overrides)
            result = train(
                self.settings.data,
                recipe,
                device=self.device,
                precision=self.precision,
                out=self.folder,
                name=run_name,
                verbose=False,
                callbacks=[pruning],
            )
        except self.optuna.TrialPruned:
            raise
        except (*_TRIAL_ERRORS, TrainingInterrupted) as error:
            trial.set_user_attr("error", _one_line(error))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            raise
        trial.set_user_attr("run_folder", str(result.run_folder))
        if pruning.pruned_after is not None:
            raise self.optuna.TrialPruned(pruning.reason)
        values = [row[monitor] for row in result.history.rows]
        return max(values) if self.settings.maximize else min(values)


class _TrialPrinter:
    """Optuna's per-trial callback: one line a finished trial (Optuna's own log is silenced)."""

    def __init__(self, settings: StudySettings, stream: TextIO) -> None:
        self.settings, self.stream = settings, stream

    def __call__(self, study: Any, trial: Any) -> None:
        row = trial_row(trial, self.settings.space)
        monitor = self.settings.recipe.monitor
        settings = ", ".join(f"{key}={format_value(value)}" for key, value in row.params.items())
        took = f" in {row.seconds:.1f}s" if row.seconds is not None else ""
        if row.state == "complete":
            best = study.best_trial.number == row.number
            what = f"complete{took}: {monitor} {row.value:.4f}{' (best so far)' if best else ''}"
        elif row.state == "pruned":
            planned = format_value(float(row.params.get("epochs", self.settings.recipe.epochs)))
            what = f"pruned after epoch {row.epochs}/{planned}{took}: {monitor} {row.last_reported:.4f}"
        else:
            what = f"{row.state}{took}: {row.error or 'no reason recorded'}"
        self.stream.write(f"Trial {row.number} {what} - {settings}\n")
        self.stream.flush()


def _finish(optuna: Any, study: Any, settings: StudySettings, folder: Path) -> TuneResult:
    """Read every trial back and write trials.csv, best.yaml and the two plots."""
    rows = [trial_row(trial, settings.space) for trial in study.get_trials(deepcopy=False)]
    complete = [row for row in rows if row.state == "complete"]
    pick = max if settings.maximize else min
    best = pick(complete, key=lambda row: row.value) if complete else None
    files = {"study": folder / STUDY_FILE, "trials": folder / TRIALS_FILE}
    write_trials_csv(files["trials"], rows, list(settings.space))
    best_recipe = None
    if best is not None:
        files["best_recipe"] = folder / BEST_RECIPE_FILE
        best_recipe = _write_best_recipe(files["best_recipe"], study.study_name, settings, best, rows)
    files["history_plot"] = folder / HISTORY_PLOT
    title = f"{study.study_name}: {len(rows)} trials"
    plot_optimization_history(files["history_plot"], rows, settings.recipe.monitor, settings.maximize, title)
    importances, note = _importances(optuna, study, len(complete))
    files["importance_plot"] = folder / IMPORTANCE_PLOT
    title = f"{study.study_name}: parameter importances (PED-ANOVA, {len(complete)} finished trials)"
    plot_param_importances(files["importance_plot"], importances, note, title)
    return TuneResult(folder, study.study_name, settings, rows, best, best_recipe, files)


def _write_best_recipe(
    path: Path, study_name: str, settings: StudySettings, best: TrialRow, rows: list[TrialRow]
) -> Recipe:
    """``best.yaml``: every field of the base recipe with the best trial's settings, and a comment
    naming the study and its best validation value."""
    recipe = load_recipe(settings.recipe, best.params).replace(name=f"{settings.recipe.name}-tuned")
    finished = sum(row.state == "complete" for row in rows)
    comments = (
        f"The best of study {study_name} ({path.parent}): trial {best.number}, "
        f"{settings.recipe.monitor} {best.value:.4f} ({finished} of {len(rows)} trials finished).",
        f"Train it: cnnkit train --recipe {path} --data {settings.data}",
    )
    atomic_write_text(path, recipe_to_yaml(recipe, comments))
    return recipe


def _importances(optuna: Any, study: Any, complete: int) -> tuple[dict[str, float] | None, str]:
    """Optuna's PED-ANOVA importances (numpy only: fANOVA would need scikit-learn), or why not."""
    if complete < MIN_TRIALS_FOR_IMPORTANCE:
        needed = MIN_TRIALS_FOR_IMPORTANCE
        return None, f"Importances need {needed} finished trials; the study has {complete}."
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError) as error:
        return None, f"No importances: {_one_line(error)}"
    # PED-ANOVA warns when the best trials cannot be told apart (e.g. all score alike): then every
    # parameter gets the same share, which says nothing.
    concerns = [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]
    concerns = [text for text in concerns if "equal" in text]
    if concerns:
        return None, f"No importances: {_one_line(Exception(concerns[0]))}"
    return importances, ""


def _check_stop(trials: int | None, budget_seconds: float | None) -> None:
    if trials is None and budget_seconds is None:
        raise ValueError("Say how long to search: --trials N, --budget DURATION (30m, 2h), or both.")
    if trials is not None and trials < 1:
        raise ValueError(f"--trials must be at least 1. Received: {trials}")
    if budget_seconds is not None and not (budget_seconds > 0 and math.isfinite(budget_seconds)):
        raise ValueError(f"A budget must be longer than 0 seconds. Received: {budget_seconds}")


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
