"""Runs that survive faults: Ctrl-C, SIGTERM and kill -9, then --resume; early stopping; NaN."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnkit.runs.training as training_jobs
from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from cnnkit.engine.interrupt import StopRequest, TrainingInterrupted
from cnnkit.recipes import get_recipe
from cnnkit.reports.training_curves import read_metrics_csv
from tests.run_helpers import learning_metrics, train_command


def assert_same_weights(first: Path, second: Path) -> None:
    first_state = load_checkpoint(first).state_dict
    second_state = load_checkpoint(second).state_dict
    assert first_state.keys() == second_state.keys()
    for key in first_state:
        assert torch.equal(first_state[key], second_state[key]), key


class StopAfter(StopRequest):
    """A stop request that fires once the trainer has checked it ``checks`` times (one a step)."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.remaining = checks

    def __bool__(self) -> bool:
        self.remaining -= 1
        if self.remaining < 0:
            self.signal_number = signal.SIGINT
        return self.remaining < 0


@pytest.mark.parametrize(
    ("recipe", "epochs", "stop_after"),
    [
        # Batch 8: 16 steps an epoch, the trainer checks for a stop before each epoch and after
        # each step but its last (16 checks an epoch). Adam; a stop in the middle of epoch 2.
        ("tutorial", 3, 21),
        # Muon, whitening, alternating flips, translation and a stop in the middle of epoch 2.
        ("fast", 3, 25),
        # Lookahead and a first-layer bias frozen from epoch 2 on; a stop in the middle of epoch 3.
        ("airbench94", 3, 40),
    ],
)
def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_result(
    recipe, epochs, stop_after, quadrant_folder, tmp_path, monkeypatch
):
    base = get_recipe(recipe).replace(epochs=epochs, batch_size=8, seed=3)
    if base.lookahead:
        base = base.replace(lookahead_start_epoch=1, first_layer_bias_epochs=1)
    whole = training_jobs.train(
        quadrant_folder, base, device="cpu", out=tmp_path, name="whole", verbose=False
    )

    @contextlib.contextmanager
    def stop_midway():
        yield StopAfter(stop_after)

    monkeypatch.setattr(training_jobs, "stop_on_signals", stop_midway)
    with pytest.raises(TrainingInterrupted, match=r"at epoch \d/\d, step \d+/\d+") as raised:
        training_jobs.train(quadrant_folder, base, device="cpu", out=tmp_path, name="cut", verbose=False)
    cut = tmp_path / "cut"
    assert raised.value.checkpoint == cut / "last.pt"
    state = load_checkpoint(cut / "last.pt").training_state
    assert state["position"] is not None and state["position"]["step"] > 0  # really mid-epoch

    monkeypatch.undo()
    resumed = training_jobs.resume(cut, device="cpu", verbose=False)
    assert learning_metrics(cut) == learning_metrics(whole.run_folder)
    assert_same_weights(cut / "last.pt", whole.run_folder / "last.pt")
    assert_same_weights(cut / "best.pt", whole.run_folder / "best.pt")
    assert resumed.report["evaluation"] == whole.report["evaluation"]


def run_until_epoch_then_signal(
    arguments: list[str], number: int, epoch: int = 1
) -> subprocess.CompletedProcess:
    """Start ``cnnkit train`` as a real process and send signal ``number`` after ``epoch``'s line."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(f"Epoch {epoch}/3 - "):  # the epoch's summary line
            process.send_signal(number)
            break
    output, errors = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(lines) + output, errors)


@pytest.mark.parametrize(("number", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_run_and_resume_finishes_it_identically(
    number, exit_code, quadrant_folder, tmp_path, capsys
):
    assert main(train_command(quadrant_folder, tmp_path, "whole")) == 0
    stopped = run_until_epoch_then_signal(train_command(quadrant_folder, tmp_path, "cut"), number)
    assert stopped.returncode == exit_code, stopped.stderr
    folder = tmp_path / "cut"
    assert f"stopped by {signal.Signals(number).name}" in stopped.stderr
    assert f"Resume with: cnnkit train --resume {folder}" in stopped.stderr
    assert not (folder / "report.json").exists()
    assert load_checkpoint(folder / "last.pt").training_state["finished"] is False

    capsys.readouterr()
    assert main(["train", "--resume", str(folder), "--device", "cpu"]) == 0
    assert "Resuming" in capsys.readouterr().out
    assert learning_metrics(folder) == learning_metrics(tmp_path / "whole")
    assert_same_weights(folder / "last.pt", tmp_path / "whole" / "last.pt")
    assert (folder / "report.json").is_file()


def test_after_kill_9_resume_loses_at_most_one_epoch(quadrant_folder, tmp_path):
    assert main(train_command(quadrant_folder, tmp_path, "whole")) == 0
    # After epoch 2's line: epoch 1's last.pt is surely written, epoch 2's maybe (or half-written).
    killed = run_until_epoch_then_signal(train_command(quadrant_folder, tmp_path, "cut"), signal.SIGKILL, 2)
    assert killed.returncode == -signal.SIGKILL
    folder = tmp_path / "cut"
    state = load_checkpoint(folder / "last.pt").training_state  # intact, never half-written
    assert state["position"] is None and len(state["history"]) >= 1  # an end-of-epoch state
    assert main(["train", "--resume", str(folder), "--device", "cpu", "--quiet"]) == 0
    assert learning_metrics(folder) == learning_metrics(tmp_path / "whole")
    assert_same_weights(folder / "last.pt", tmp_path / "whole" / "last.pt")


def test_resume_refuses_a_finished_run_and_conflicting_flags(quadrant_folder, tmp_path, capsys):
    arguments = train_command(quadrant_folder, tmp_path, "done")
    arguments[arguments.index("--epochs") + 1] = "1"
    assert main([*arguments, "--quiet"]) == 0
    folder = tmp_path / "done"
    capsys.readouterr()
    assert main(["train", "--resume", str(folder)]) == 1
    assert "already finished after 1 epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(folder), "--epochs", "5", "--lr", "0.1"]) == 1
    assert "Received: --epochs, --lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 1
    assert "Run folder not found" in capsys.readouterr().err


def test_early_stopping_stops_and_restores_the_best_weights(quadrant_folder, tmp_path, capsys):
    # A learning rate too small to change any prediction: val_accuracy never improves on epoch 1.
    arguments = [*train_command(quadrant_folder, tmp_path, "early"), "--patience", "2", "--lr", "1e-12"]
    arguments[arguments.index("--epochs") + 1] = "10"
    assert main(arguments) == 0
    output = capsys.readouterr().out
    folder = tmp_path / "early"
    assert "Early stopping: val_accuracy has not improved for 2 epochs" in output
    assert [row["epoch"] for row in read_metrics_csv(folder / "metrics.csv")] == [1, 2, 3]
    report = (folder / "report.json").read_text()
    assert '"best_epoch": 1' in report
    assert load_checkpoint(folder / "best.pt").epoch == 1
    assert load_checkpoint(folder / "last.pt").training_state["finished"] is True


def test_early_stopping_hands_back_the_best_weights(tmp_path):
    from cnnkit.api import Classifier
    from tests.conftest import CLASS_NAMES, make_quadrant_images

    images, labels = make_quadrant_images(160, seed=1)
    classifier = Classifier("tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu")
    history = classifier.fit(
        images, labels, epochs=10, validation_split=0.25, learning_rate=1e-12, patience=2, verbose=False
    )
    assert len(history.rows) == 3 and history.best_epoch == 1
    initial = Classifier("tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu")
    # After one epoch at lr 1e-12 the weights are within rounding of the initial ones, and the
    # returned classifier holds epoch 1's weights, not epoch 3's.
    for name, tensor in classifier.network.state_dict().items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, initial.network.state_dict()[name], atol=1e-6), name


def test_patience_needs_a_validation_split(quadrant_folder, tmp_path, capsys):
    arguments = [*train_command(quadrant_folder, tmp_path, "x"), "--patience", "2", "--val-split", "0"]
    assert main(arguments) == 1
    assert "Early stopping watches validation metrics" in capsys.readouterr().err


def test_a_diverging_run_stops_naming_epoch_step_and_checkpoint(quadrant_folder, tmp_path, capsys):
    arguments = [*train_command(quadrant_folder, tmp_path, "nan"), "--lr", "1e30"]
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert "Loss became nan at epoch 1/3, step" in error or "Loss became inf at epoch 1/3, step" in error
    assert "no epoch finished, so there is no checkpoint" in error
