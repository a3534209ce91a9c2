"""``cnnkit tune`` on a tiny folder: trials are run folders, bad ones are pruned, the study is a
SQLite database; Ctrl-C ends a trial cleanly and --resume continues the study; spaces are checked."""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import sqlite3
import sys
from types import SimpleNamespace

import pytest
import yaml

from cnnkit.cli import main
from cnnkit.experiments import tune as tune_module
from cnnkit.experiments.space import check_space, default_space, parse_space, read_space_file
from cnnkit.experiments.study import parse_duration
from cnnkit.experiments.tune import PruningCallback
from cnnkit.recipes import get_recipe, read_recipe_file
from tests.conftest import make_quadrant_images, write_image_folder

PNG = b"\x89PNG\r\n\x1a\n"
needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None,
    reason="Optuna is not installed: pip install 'cnnkit[tune]' (CI installs it through the test extra)",
)
# Learning rates from hopeless (1e-6: nothing learnt in 3 epochs) to good (1e-3): the pruner has
# bad trials to stop. Batch 32 on 64 training images: 2 steps an epoch.
SPACE = {"learning_rate": {"type": "float", "low": 1.0e-6, "high": 1.0e-1, "log": True}}


@pytest.fixture
def small_folder(tmp_path, monkeypatch):
    """80 training and 20 test images; curves.png per epoch skipped (slow here, not read)."""
    for split, count, seed in (("train", 80, 1), ("test", 20, 2)):
        write_image_folder(tmp_path / "quadrants" / split, *make_quadrant_images(count, seed=seed))
    monkeypatch.setattr("cnnkit.runs.recorder.plot_curves", lambda *arguments, **keywords: None)
    return tmp_path / "quadrants"


def tune_command(data, tmp_path, *more: str) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    command = [
        "tune",
        "--data",
        str(data),
        "--recipe",
        "tutorial",
        "--set",
        "epochs=3",
        "--space",
        str(space),
    ]
    return [*command, "--out", str(tmp_path / "runs"), "--device", "cpu", *more]


@needs_optuna
def test_tune_prunes_bad_trials_and_writes_its_files(small_folder, tmp_path, capsys):
    assert main(tune_command(small_folder, tmp_path, "--trials", "6")) == 0
    output = capsys.readouterr().out
    study = tmp_path / "runs" / "tune"
    assert (study / "study.db").read_bytes()[:16] == b"SQLite format 3\x00"
    for name in ("optimization_history.png", "param_importances.png"):
        assert (study / name).read_bytes()[:8] == PNG
    rows = trials_csv(study)
    assert [row["number"] for row in rows] == [str(number) for number in range(6)]
    assert all(row["state"] in ("complete", "pruned") for row in rows)
    # The pruner is fed every epoch: a finished trial reported 3, a pruned one fewer.
    for row in rows:
        trained = int(row["epochs_trained"])
        assert trained == 3 if row["state"] == "complete" else trained < 3
        assert (study / f"trial-{row['number']}" / "metrics.csv").is_file()
    assert any(row["state"] == "pruned" for row in rows), output
    assert "Trial 5 " in output and "pruned after epoch" in output and "Best: trial" in output
    best = read_recipe_file(study / "best.yaml")
    complete = [row for row in rows if row["state"] == "complete"]
    winner = max(complete, key=lambda row: float(row["value"]))
    assert best.learning_rate == pytest.approx(float(winner["learning_rate"]), rel=1e-3)
    assert best.epochs == 3 and best.model == "tutorial" and best.name == "tutorial-tuned"


@needs_optuna
def test_ctrl_c_ends_the_trial_cleanly_and_keeps_the_study(small_folder, tmp_path, monkeypatch, capsys):
    class InterruptedInTrial1(PruningCallback):
        def on_epoch_end(self, state) -> None:
            super().on_epoch_end(state)
            if self.trial.number == 1 and state.epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would: training saves and stops

    monkeypatch.setattr(tune_module, "PruningCallback", InterruptedInTrial1)
    assert main(tune_command(small_folder, tmp_path, "--trials", "4", "--name", "stopped")) == 130
    error = capsys.readouterr().err
    study = tmp_path / "runs" / "stopped"
    assert f"cnnkit tune --resume {study} --trials N" in error
    rows = trials_csv(study)
    assert [(row["number"], row["state"]) for row in rows] == [("0", "complete"), ("1", "failed")]
    assert "SIGINT" in rows[1]["error"] and (study / "trial-1" / "last.pt").is_file()
    monkeypatch.undo()
    monkeypatch.setattr("cnnkit.runs.recorder.plot_curves", lambda *arguments, **keywords: None)
    # A stopped search continues: the same study.db, trial numbers going on, no new study folder.
    assert main(["tune", "--resume", str(study), "--trials", "1", "--device", "cpu"]) == 0
    assert [row["number"] for row in trials_csv(study)] == ["0", "1", "2"]
    with sqlite3.connect(study / "study.db") as database:
        assert database.execute("select count(*) from studies").fetchone() == (1,)
        assert database.execute("select count(*) from trials").fetchone() == (3,)
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["stopped"]


@needs_optuna
def test_pruning_callback_reports_every_epoch_and_asks_training_to_stop():
    class Trial:
        def __init__(self) -> None:
            self.reports: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((value, step))

        def should_prune(self) -> bool:
            return len(self.reports) == 2

    class View:
        reason = None

        def request_stop(self, reason: str) -> None:
            self.reason = reason

    trial, view = Trial(), View()
    callback = PruningCallback(trial, "val_loss")
    for epoch in (1, 2):
        metrics = {"val_loss": 1.0 / epoch, "loss": 0.1}
        callback.on_epoch_end(SimpleNamespace(epoch=epoch, epochs=4, metrics=metrics, view=view))
        assert (view.reason is None) == (epoch == 1)  # the stop is asked when the pruner says so
    assert trial.reports == [(1.0, 1), (0.5, 2)]
    assert callback.pruned_after == 2 and view.reason.startswith("pruned after epoch 2: val_loss 0.5000")
    with pytest.raises(ValueError, match="tuning needs validation data"):
        PruningCallback(trial, "val_accuracy").on_epoch_end(
            SimpleNamespace(epoch=1, epochs=4, metrics={"loss": 1.0})
        )


def test_without_optuna_tune_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    assert main(["tune", "--data", str(tmp_path), "--trials", "1"]) == 1
    assert capsys.readouterr().err.strip() == (
        "cnnkit: error: cnnkit tune needs Optuna, an optional extra: pip install 'cnnkit[tune]'"
    )


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"learning_rat": {"type": "float", "low": 0.1, "high": 1}}, "learning_rat: Unknown recipe field"),
        (
            {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}},
            "learning_rate: low must be below high",
        ),
        (
            {"weight_decay": {"type": "float", "low": 0, "high": 0.1, "log": True}},
            "a log scale needs low > 0",
        ),
        (
            {"epochs": {"type": "gaussian", "low": 1, "high": 3}},
            "epochs: type must be float, int or categorical",
        ),
        ({"batch_size": {"type": "float", "low": 16, "high": 64}}, "batch_size takes no fractions"),
        ({"batch_size": {"type": "int", "low": 16, "hihg": 64}}, "batch_size: an int distribution takes"),
        ({"flip": {"type": "categorical", "choices": []}}, "flip: choices must be a non-empty list"),
        ({"monitor": {"type": "categorical", "choices": ["val_loss"]}}, "monitor cannot be searched"),
        ({"epochs.count": {"type": "int", "low": 1, "high": 3}}, "only model_arguments takes dotted keys"),
        (
            {"label_smoothing": {"type": "float", "low": 0.0, "high": 1.0}},
            "label_smoothing must be in [0, 1)",
        ),
        ({"tta": 2}, "tta must be a distribution like"),
        ([1, 2], "must map recipe fields to distributions"),
    ],
)
def test_a_bad_space_file_is_one_line_naming_the_file_and_key(space, message, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    command = ["tune", "--recipe", "tutorial", "--space", str(path), "--print-space"]
    assert main(command) == 1  # --print-space: checked without Optuna and without data
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith(f"cnnkit: error: {path}")
    assert message in error


def test_default_spaces_are_valid_and_print_as_a_space_file(tmp_path, capsys):
    for name in ("tutorial", "fast", "airbench94", "best", "photo", "finetune"):
        recipe = get_recipe(name)
        check_space(default_space(recipe), recipe, name)
    assert main(["tune", "--recipe", "tutorial", "--print-space"]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    space = read_space_file(path)
    assert space == default_space(get_recipe("tutorial"))
    assert space["learning_rate"].log and space["learning_rate"].low == 1e-4
    assert space["model"].choices == ("tutorial", "tutorial-extra-conv")
    widths = default_space(get_recipe("best"))["model_arguments.widths"]
    assert widths.choices[1] == [128, 384, 384]
    # YAML reads 1e-4 (no dot) as text; a space file still means the number.
    assert parse_space({"learning_rate": {"type": "float", "low": "1e-4", "high": "1e-2"}}, "s")[
        "learning_rate"
    ].low == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("2h", 7200), ("90s", 90), ("600", 600), ("1h30m", 5400)]
)
def test_budgets_read_as_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "m30", "0", "-5m"])
def test_a_bad_budget_is_refused(text):
    with pytest.raises(ValueError, match="budget"):
        parse_duration(text)


def trials_csv(study) -> list[dict[str, str]]:
    with open(study / "trials.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))
