"""Divergence is handled, never saved; a run that learned nothing says so; every JSON is valid (issue 19)."""

import json
import math

import numpy as np
import pytest
import torch

from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.cli import main
from cnnkit.engine import trainer as trainer_module
from cnnkit.fileio import json_text
from cnnkit.reports.chance import chance_verdict
from tests.conftest import make_quadrant_images, write_image_folder


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as every other JSON reader does."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))


def break_weights(monkeypatch, times: int) -> list[int]:
    """After the last step of the run's first epoch, put a NaN in the head's weights, ``times`` times:
    the loss of that step is still finite, so only the weight check can notice."""
    broken: list[int] = []
    original = trainer_module.Trainer.train_step

    def train_step(self, *arguments, **keywords):
        loss = original(self, *arguments, **keywords)
        if len(broken) < times and self.step == min(self.steps_per_epoch, self.total_steps):
            with torch.no_grad():
                self.model.head.weight[0, 0] = math.nan
            broken.append(self.step)
        return loss

    monkeypatch.setattr(trainer_module.Trainer, "train_step", train_step)
    return broken


def train(quadrant_folder, tmp_path, *flags):
    out = tmp_path / "runs"
    return main(
        ["train", "--data", str(quadrant_folder / "train"), "--out", str(out), "--name", "run", *flags]
    )


def test_nan_weights_after_a_fractional_last_epoch_are_retried_once_then_stop_the_run(
    quadrant_folder, tmp_path, monkeypatch, capsys
):
    # Before: --epochs 0.2 ended with a finite loss and NaN weights saved as best.pt.
    broken = break_weights(monkeypatch, times=2)
    assert train(quadrant_folder, tmp_path, "--epochs", "0.5") == 1
    captured = capsys.readouterr()
    assert len(broken) == 2
    assert "The weights became non-finite (head.weight) at epoch 1/1" in captured.out  # the retry's line
    assert "Training epoch 1 again from step 1 at 0.25x the learning rate." in captured.out
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("cnnkit: error: The weights became non-finite (head.weight)")
    assert "diverged again at 0.25x the learning rate" in error and "Try a lower learning rate" in error
    run = tmp_path / "runs" / "run"
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    assert not (run / "report.json").exists()


def test_a_run_that_diverges_once_trains_on_at_a_lower_rate_and_records_it(
    quadrant_folder, tmp_path, monkeypatch, capsys
):
    break_weights(monkeypatch, times=1)
    assert train(quadrant_folder, tmp_path, "--epochs", "2") == 0
    assert "Training epoch 1 again from step 1 at 0.25x the learning rate." in capsys.readouterr().out
    run = tmp_path / "runs" / "run"
    last = load_checkpoint(run / "last.pt")
    assert last.training_state["learning_rate_scale"] == 0.25  # so that --resume keeps it
    for name in ("best.pt", "last.pt"):
        weights = load_checkpoint(run / name).state_dict.values()
        assert all(torch.isfinite(tensor).all() for tensor in weights if tensor.is_floating_point())
    strict_json((run / "report.json").read_text())


def test_a_checkpoint_with_non_finite_weights_or_metrics_is_never_written(quadrant_folder, tmp_path):
    assert train(quadrant_folder, tmp_path, "--epochs", "1", "--quiet") == 0
    path = tmp_path / "runs" / "run" / "best.pt"
    good = load_checkpoint(path)
    before = path.read_bytes()
    weights = {**good.state_dict, "head.weight": good.state_dict["head.weight"].clone()}
    weights["head.weight"][0, 0] = math.inf
    with pytest.raises(
        FloatingPointError, match=r"Refusing to write .*best.pt: non-finite values in head.weight"
    ):
        save_checkpoint(path, good.__class__(**{**good.__dict__, "state_dict": weights}))
    metrics = {**good.metrics, "val_loss": math.nan}
    with pytest.raises(FloatingPointError, match="metric val_loss"):
        save_checkpoint(path, good.__class__(**{**good.__dict__, "metrics": metrics}))
    assert path.read_bytes() == before


def test_json_text_always_writes_valid_json():
    text = json_text({"loss": math.nan, "rows": [math.inf, -math.inf, 1.5], "name": "x"})
    assert strict_json(text) == {"loss": None, "rows": [None, None, 1.5], "name": "x"}


def test_chance_verdict_calls_the_largest_class_share_within_noise_learned_nothing():
    # 80 validation images, 4 balanced classes: 0.25 by always answering one; noise ~0.097.
    assert chance_verdict(0.30, [20, 20, 20, 20])["learned"] is False
    assert chance_verdict(0.40, [20, 20, 20, 20])["learned"] is True
    # Imbalanced: 90 % of one class; 0.91 is no better than always answering it.
    verdict = chance_verdict(0.91, [90, 5, 5])
    assert verdict["learned"] is False and verdict["largest_class_share"] == 0.9
    assert chance_verdict(0.99, [900, 50, 50])["learned"] is True
    with pytest.raises(ValueError, match="Received: class_counts=\\[\\]"):
        chance_verdict(0.5, [])


def test_a_run_on_labels_unrelated_to_the_images_says_it_learned_nothing(tmp_path, capsys):
    images, labels = make_quadrant_images(400, seed=5)
    shuffled = np.random.default_rng(0).permutation(labels)  # the labels no longer match
    data = write_image_folder(tmp_path / "data", images, shuffled)
    out = tmp_path / "runs"
    flags = ["--model", "tutorial", "--epochs", "2", "--quiet"]
    assert main(["train", "--data", str(data), "--out", str(out), "--name", "run", *flags]) == 0
    output = capsys.readouterr().out
    assert "This model learned nothing: its best validation accuracy" in output
    assert "Where it fails, class by class" not in output  # not presented as a result
    report = strict_json((out / "run" / "report.json").read_text())
    assert report["learned"] is False
    assert report["chance"]["split"] == "validation" and report["chance"]["images"] == 80
