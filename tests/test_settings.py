"""Settings: every recipe field from the command line, YAML recipe files, runs re-run from their config."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import yaml

from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from cnnkit.recipes import (
    Recipe,
    apply_overrides,
    get_recipe,
    list_recipes,
    load_recipe,
    parse_assignment,
    read_recipe_file,
    recipe_to_yaml,
)
from cnnkit.reports.training_curves import read_metrics_csv
from tests.run_helpers import learning_metrics


def train(folder, out, *flags: str) -> int:
    return main(["train", "--data", str(folder), "--out", str(out), "--device", "cpu", "--quiet", *flags])


def last_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0]


def test_fractional_epochs_and_any_field_by_set(quadrant_folder, tmp_path):
    flags = ["--recipe", "tutorial", "--epochs", "0.5", "--set", "label_smoothing=0.1", "--set", "cutout=8"]
    assert train(quadrant_folder, tmp_path, *flags, "--name", "half") == 0
    folder = tmp_path / "half"
    recipe = yaml.safe_load((folder / "config.yaml").read_text())["recipe"]
    assert (recipe["epochs"], recipe["label_smoothing"], recipe["cutout"]) == (0.5, 0.1, 8)
    rows = read_metrics_csv(folder / "metrics.csv")
    assert len(rows) == 1  # half an epoch is one (short) epoch
    checkpoint = load_checkpoint(folder / "last.pt")
    assert isinstance(checkpoint.recipe, Recipe) and checkpoint.recipe.cutout == 8
    # 128 training images at batch 32: 4 steps an epoch, half of them taken.
    assert checkpoint.training_state["step"] == math.ceil(4 * 0.5)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        (
            "label_smothing=0.1",
            "Unknown recipe field. Received: 'label_smothing'. Did you mean 'label_smoothing'?",
        ),
        ("batch_size=abc", "batch_size must be an integer. Received: batch_size='abc'"),
        ("tta=5", "tta must be 0, 1 or 2. Received: tta=5"),
        ("flip=sideways", "flip must be 'none', 'random' or 'alternating'. Received: flip='sideways'"),
        ("epochs.inner=1", "Only a mapping field takes dotted keys. Received: epochs.inner=1"),
        ("label_smoothing", "--set takes FIELD=VALUE"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(assignment, message, quadrant_folder, tmp_path, capsys):
    assert train(quadrant_folder, tmp_path, "--set", assignment) == 1
    line = last_error_line(capsys)
    assert line.startswith("cnnkit: error:") and message in line
    assert not (tmp_path / "train").exists()  # refused before anything was made


def test_a_bad_flag_value_names_the_field(quadrant_folder, tmp_path, capsys):
    assert train(quadrant_folder, tmp_path, "--monitor", "val_acc") == 1
    assert "Unknown metric for monitor: allowed are val_loss, val_accuracy" in last_error_line(capsys)
    assert train(quadrant_folder, tmp_path, "--epochs", "2", "--set", "epochs=3") == 1
    assert "epochs is given twice" in last_error_line(capsys)


def test_set_reads_values_as_their_fields_types():
    assert parse_assignment("model_arguments.widths=[128,384,384]") == (
        "model_arguments.widths",
        [128, 384, 384],
    )
    assert parse_assignment("learning_rate=1e-3") == ("learning_rate", 1e-3)  # YAML 1.1 reads it as text
    assert parse_assignment("flip=none") == ("flip", "none")  # a string field keeps the text
    assert parse_assignment("image_size=null") == ("image_size", None)
    recipe = apply_overrides(get_recipe("best"), {"model_arguments.residual": True, "epochs": 3})
    assert recipe.model_arguments == {"widths": [128, 384, 384], "residual": True}  # dotted keys merge
    assert recipe.epochs == 3.0 and isinstance(recipe.epochs, float)
    assert get_recipe("fast").replace(batch_size=512.0).batch_size == 512  # an integral float is an int


def test_every_named_recipe_round_trips_through_yaml_and_dicts(tmp_path):
    for name in list_recipes():
        recipe = get_recipe(name)
        assert Recipe.from_dict(recipe.to_dict()) == recipe
        path = tmp_path / f"{name}.yaml"
        path.write_text(recipe_to_yaml(recipe))
        assert read_recipe_file(path) == recipe


def test_a_recipe_file_names_a_base_and_the_fields_it_changes(quadrant_folder, tmp_path, capsys):
    path = tmp_path / "short.yaml"
    path.write_text("base: tutorial\nepochs: 1\nbatch_size: 16\nmodel_arguments.widht: 1\n")
    assert train(quadrant_folder, tmp_path / "runs", "--recipe", str(path)) == 1
    assert "Unknown argument of model 'tutorial'. Received: widht=1. It takes: none." in last_error_line(
        capsys
    )
    path.write_text("base: tutorial\nepochs: 1\nbatch_size: 16\n")
    recipe = load_recipe(path)
    assert (recipe.name, recipe.model, recipe.epochs, recipe.batch_size) == ("short", "tutorial", 1, 16)
    assert train(quadrant_folder, tmp_path / "runs", "--recipe", str(path)) == 0
    assert (
        yaml.safe_load((tmp_path / "runs" / "train" / "config.yaml").read_text())["recipe"]["name"] == "short"
    )
    path.write_text("base: tutorial\nepochs: 1: 2\n")
    assert train(quadrant_folder, tmp_path / "runs", "--recipe", str(path)) == 1
    assert f"{path} is not valid YAML (line 2)" in last_error_line(capsys)
    path.write_text("base: tutorial\nlearning_rat: 0.1\n")
    assert train(quadrant_folder, tmp_path / "runs", "--recipe", str(path)) == 1
    assert "Received: 'learning_rat'. Did you mean 'learning_rate'" in last_error_line(capsys)


def test_config_reruns_a_run_exactly(quadrant_folder, tmp_path, capsys):
    flags = ["--recipe", "tutorial", "--epochs", "2", "--batch-size", "16", "--seed", "3"]
    assert train(quadrant_folder, tmp_path, *flags, "--set", "label_smoothing=0.1", "--name", "first") == 0
    assert (
        train(
            quadrant_folder, tmp_path, "--config", str(tmp_path / "first" / "config.yaml"), "--name", "again"
        )
        == 0
    )
    assert learning_metrics(tmp_path / "again") == learning_metrics(tmp_path / "first")
    first, again = (load_checkpoint(tmp_path / name / "last.pt") for name in ("first", "again"))
    assert first.recipe == again.recipe
    assert all(torch.equal(first.state_dict[key], again.state_dict[key]) for key in first.state_dict)
    # The config is the base; flags change it.
    assert (
        train(
            quadrant_folder, tmp_path, "--config", str(tmp_path / "first"), "--epochs", "1", "--name", "one"
        )
        == 0
    )
    assert len(read_metrics_csv(tmp_path / "one" / "metrics.csv")) == 1
    assert train(quadrant_folder, tmp_path, "--recipe", str(tmp_path / "first" / "config.yaml")) == 1
    assert "is a run's config, not a recipe: pass it with --config" in last_error_line(capsys)


def test_models_prints_a_recipe_as_a_file_that_reads_back(tmp_path, capsys):
    assert main(["models", "--recipe", "fast"]) == 0
    text = capsys.readouterr().out
    assert "label_smoothing: 0.2" in text and "validation_split: 0.2" in text
    path = tmp_path / "fast-copy.yaml"
    path.write_text(text)
    assert read_recipe_file(path) == get_recipe("fast")
    assert main(["models"]) == 0
    assert "Recipe fast (default)" in capsys.readouterr().out


def test_old_checkpoints_still_load(tmp_path):
    from cnnkit.api import Classifier

    classifier = Classifier("tutorial", num_classes=3, image_size=16, device="cpu")
    old_recipe = {**get_recipe("tutorial").to_dict(), "tta": 1}
    old_recipe["val_fraction"] = old_recipe.pop("validation_split")  # the field's old name
    contents = {
        "format": "cnnkit-checkpoint",
        "format_version": 1,
        "cnnkit_version": "0.1.0",
        "model_name": "tutorial",
        "model_arguments": {"num_classes": 3, "image_size": 16},
        "class_names": ["a", "b", "c"],
        "image_size": 16,
        "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]},
        "recipe": old_recipe,
        "config": {"data": "x", "recipe": old_recipe},  # stored twice, as old versions did
        "epoch": 2,
        "metrics": {"epoch": 2, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.75},
        "state_dict": classifier.network.state_dict(),
    }
    torch.save(contents, tmp_path / "old.pt")
    checkpoint = load_checkpoint(tmp_path / "old.pt")
    assert checkpoint.recipe == get_recipe("tutorial").replace(tta=1)
    assert checkpoint.metrics == {
        "train": {"loss": 0.5, "accuracy": 0.8},
        "validation": {"loss": 0.7, "accuracy": 0.75},
    }
    assert "recipe" not in checkpoint.config
    assert Classifier.load(tmp_path / "old.pt", device="cpu").tta == 1


def test_a_checkpoint_with_missing_or_misshapen_weights_is_one_line(tmp_path, capsys):
    from cnnkit.api import Classifier

    classifier = Classifier("tutorial", num_classes=3, image_size=16, device="cpu")
    classifier.save(tmp_path / "model.pt")
    contents = torch.load(tmp_path / "model.pt", weights_only=True)
    weights = contents["state_dict"]
    first = next(iter(weights))
    del weights[first]
    weights[next(iter(weights))] = torch.zeros(1)
    torch.save(contents, tmp_path / "broken.pt")
    assert main(["evaluate", str(tmp_path / "broken.pt"), "--data", str(tmp_path)]) == 1
    line = last_error_line(capsys)
    assert f"missing: {first}" in line and "shape differs" in line
    del contents["class_names"]
    torch.save(contents, tmp_path / "incomplete.pt")
    with pytest.raises(ValueError, match="incomplete cnnkit checkpoint: it has no class_names"):
        load_checkpoint(tmp_path / "incomplete.pt")


def test_evaluating_never_loads_the_trainer():
    code = "import sys, cnnkit.runs.evaluation, cnnkit.cli; assert 'cnnkit.engine.trainer' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
