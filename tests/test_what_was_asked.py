"""What the user asked for is what runs, or one line says why not: explicit epochs beat the
recipe's ``min_steps``, ``tune --set`` fixes a field of the search space, values with no meaning
are refused in one line (recipe fields and model arguments), and starting weights that lack
tensors of the network are refused instead of trained from a mostly random network."""

from __future__ import annotations

import pytest
import torch
import yaml

from cnnkit.api import Classifier
from cnnkit.cli import main
from cnnkit.engine.planning import min_steps_note, plan_steps
from cnnkit.experiments.study import new_study_settings
from cnnkit.models import check_model_arguments, create_model
from cnnkit.recipes import get_recipe, load_recipe, parse_assignment, read_recipe_file, recipe_to_yaml
from cnnkit.runs.initialization import InitialWeights, apply_initial_weights
from cnnkit.runtime.normalization import Normalization


def train(folder, out, *flags: str) -> int:
    return main(["train", "--data", str(folder), "--out", str(out), "--device", "cpu", *flags])


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0]


# --- 1a: explicit epochs are trained as asked; min_steps says when it lengthens a run ----------


def test_explicit_epochs_turn_min_steps_off_unless_min_steps_is_set_too(tmp_path):
    photo = get_recipe("photo")
    assert photo.min_steps == 200
    assert load_recipe("photo", {"epochs": 0.3}).min_steps == 0
    assert load_recipe("photo", {"epochs": 0.3, "min_steps": 50}).min_steps == 50
    assert load_recipe("photo", {"learning_rate": 0.5}).min_steps == 200  # epochs not asked for
    # A recipe file is explicit too; one written whole (best.yaml) keeps its own min_steps.
    path = tmp_path / "short.yaml"
    path.write_text("base: photo\nepochs: 2\n")
    assert read_recipe_file(path).min_steps == 0
    path.write_text(recipe_to_yaml(photo))
    assert read_recipe_file(path).min_steps == 200


def test_min_steps_lengthening_is_said_in_one_line():
    photo = get_recipe("photo")
    # 240 images: batch 24 (ten steps an epoch), so 200 steps take 20 epochs instead of 8.
    plan = plan_steps(240, photo)
    assert (plan.steps_per_epoch, plan.epochs) == (10, 20)
    assert min_steps_note(240, photo, plan) == (
        "min_steps=200 lengthens 8 epochs to 20 on 240 images; --set min_steps=0 to turn it off."
    )
    assert min_steps_note(50_000, photo, plan_steps(50_000, photo)) is None  # long enough already


def test_a_run_trains_the_epochs_asked_for_and_records_it(quadrant_folder, tmp_path, capsys):
    # The tutorial recipe with min_steps 40: 128 training images at batch 32 are 4 steps an epoch.
    recipe = tmp_path / "long.yaml"
    recipe.write_text("base: tutorial\nmin_steps: 40\n")
    assert train(quadrant_folder, tmp_path, "--recipe", str(recipe), "--name", "lengthened") == 0
    assert "min_steps=40 lengthens 5 epochs to 10 on 128 images" in capsys.readouterr().err
    plan = yaml.safe_load((tmp_path / "lengthened" / "config.yaml").read_text())["training_plan"]
    assert plan["total_steps"] == 40
    flags = ["--recipe", str(recipe), "--epochs", "0.5", "--quiet", "--name", "asked"]
    assert train(quadrant_folder, tmp_path, *flags) == 0
    config = yaml.safe_load((tmp_path / "asked" / "config.yaml").read_text())
    assert config["training_plan"]["total_steps"] == 2  # half an epoch, as asked
    assert config["recipe"]["min_steps"] == 0  # recorded: --config and resume train the same


# --- 1b: tune --set fixes a field: the space does not search it -------------------------------


def test_tune_set_removes_the_field_from_the_space_with_one_line(quadrant_folder, tmp_path, capsys):
    settings = new_study_settings(quadrant_folder, "tutorial", None, {"epochs": 2})
    assert "epochs" not in settings.space and "learning_rate" in settings.space
    assert settings.recipe.epochs == 2
    assert settings.fixed_note == "Not searching epochs: fixed by --set."
    settings = new_study_settings(quadrant_folder, "best", None, {"model_arguments.widths": [64, 128, 128]})
    assert "model_arguments.widths" not in settings.space
    assert main(["tune", "--recipe", "tutorial", "--set", "epochs=2", "--print-space"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == "Not searching epochs: fixed by --set."
    assert "epochs" not in yaml.safe_load(captured.out)


def test_tune_refuses_a_space_that_set_fixes_whole(quadrant_folder, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("epochs: {type: int, low: 1, high: 4}\n")
    command = ["tune", "--data", str(quadrant_folder), "--recipe", "tutorial", "--space", str(space)]
    assert main([*command, "--set", "epochs=2", "--print-space"]) == 1
    assert f"Nothing left to search: --set fixes every field of {space}. Received: --set epochs=2" in (
        error_line(capsys)
    )


# --- 1c: the triangle's shape is refused with a schedule that ignores it ----------------------


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        (
            "fast",
            {"lr_end": 0.1},
            "lr_end is used by the triangle schedule only. Received: lr_end=0.1 with lr_schedule='linear'",
        ),
        ("tutorial", {"lr_start": 0.5}, "Received: lr_start=0.5 with lr_schedule='constant'"),
        ("airbench94", {"lr_schedule": "linear", "lr_peak": 0.5}, "Received: lr_peak=0.5"),
    ],
)
def test_a_schedule_setting_the_schedule_ignores_is_refused(recipe, overrides, message):
    with pytest.raises(ValueError, match="triangle schedule only") as error:
        load_recipe(recipe, overrides)
    assert message in str(error.value)


def test_schedule_settings_that_change_nothing_are_accepted():
    assert load_recipe("airbench94", {"lr_end": 0.1}).lr_end == 0.1  # the triangle uses it
    assert load_recipe("airbench94", {"lr_schedule": "linear"}).lr_schedule == "linear"
    assert load_recipe("fast", {"lr_start": 1.0}).lr_start == 1.0  # the neutral value
    assert load_recipe("fast", {"lr_end": get_recipe("fast").lr_end}) == get_recipe("fast")


# --- 1d: every field refuses values with no meaning, in one line ------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("epochs=.inf", "epochs must be a finite number. Received: epochs=inf"),
        ("epochs=.nan", "epochs must be a finite number. Received: epochs=nan"),
        ("epochs=-1", "epochs must be > 0. Received: epochs=-1.0"),
        ("learning_rate=-0.1", "learning_rate must be > 0"),
        ("weight_decay=-1e-4", "weight_decay must be >= 0"),
        ("momentum=-0.5", "momentum must be in [0, 1)"),
        ("lr_end=-0.1", "lr_end must be in [0, 1]"),
        ("lr_start=1.5", "lr_start must be in [0, 1]"),
        ("translate=-2", "translate must be >= 0"),
        ("cutout=-1", "cutout must be >= 0"),
        ("label_smoothing=1", "label_smoothing must be in [0, 1)"),
        ("batch_size=0", "batch_size must be an integer >= 1"),
        ("eval_batch_size=-5", "eval_batch_size must be an integer >= 1"),
        ("min_steps=-1", "min_steps must be >= 0"),
        ("memory_budget_gb=0", "memory_budget_gb must be > 0"),
        ("memory_budget_gb=.inf", "memory_budget_gb must be a finite number"),
        ("eval_crop=0", "eval_crop must be in (0, 1]"),
        ("eval_crop=1.5", "eval_crop must be in (0, 1]"),
        ("crop_scale=[0.9,0.3]", "crop_scale must be two numbers 0 < low <= high <= 1"),
        ("crop_ratio=[1]", "crop_ratio must be a pair of finite numbers"),
        ("adam_betas=[0.9,.nan]", "adam_betas must be a pair of finite numbers"),
        ("lookahead_decay=1.5", "lookahead_decay must be in [0, 1]"),
        ("lookahead_power=-1", "lookahead_power must be >= 0"),
        ("seed=-1", "seed must be an integer in [0, 2**32)"),
    ],
)
def test_a_meaningless_value_is_refused_naming_it(assignment, message):
    key, value = parse_assignment(assignment)
    with pytest.raises(ValueError) as error:
        load_recipe("fast", {key: value})
    text = str(error.value)
    assert message in text and "Received:" in text and "\n" not in text


def test_augmentation_larger_than_the_images_is_one_line(quadrant_folder, tmp_path, capsys):
    # 16-px images: a shift of 1000 px cannot be reflected, a 20-px square cannot be cut out.
    assert train(quadrant_folder, tmp_path, "--quiet", "--set", "translate=1000") == 1
    assert "translate must be below the input size (16 px). Received: translate=1000" in error_line(capsys)
    assert train(quadrant_folder, tmp_path, "--quiet", "--recipe", "tutorial", "--cutout", "20") == 1
    assert "cutout must be at most the input size (16 px). Received: cutout=20" in error_line(capsys)
    assert not (tmp_path / "train").exists()  # refused before a run folder was made
    with pytest.raises(ValueError, match="translate must be >= 0 and below image_size"):
        load_recipe("fast", {"image_size": 32, "translate": 32})


# --- 1e: model arguments are checked in one line ----------------------------------------------


@pytest.mark.parametrize(
    ("model", "arguments", "message"),
    [
        ("fast", {"widths": "abc"}, "widths of model 'fast' must be 3 integers >= 1. Received: widths='abc'"),
        ("fast", {"widths": [64, 256]}, "must be 3 integers >= 1. Received: widths=[64, 256]"),
        ("fast", {"widths": [64, 0, 256]}, "must be 3 integers >= 1. Received: widths=[64, 0, 256]"),
        ("fast", {"unit_head": "yes"}, "unit_head of model 'fast' must be true or false"),
        ("fast", {"logit_scale": -1}, "logit_scale of model 'fast' must be null or > 0"),
        ("fast-ensemble", {"widths": "abc"}, "widths of model 'fast' must be 3 integers >= 1"),
        ("fast-ensemble", {"members": 0}, "members of model 'fast-ensemble' must be an integer >= 1"),
    ],
)
def test_a_bad_model_argument_is_one_line(model, arguments, message):
    with pytest.raises(ValueError) as error:
        check_model_arguments(model, **arguments)
    assert message in str(error.value)
    check_model_arguments(model, widths=[64, 128, 128], logit_scale=None, unit_head=True)


def test_set_model_arguments_widths_abc_is_one_line(quadrant_folder, tmp_path, capsys):
    assert train(quadrant_folder, tmp_path, "--quiet", "--set", "model_arguments.widths=abc") == 1
    assert "widths of model 'fast' must be 3 integers >= 1. Received: widths='abc'" in error_line(capsys)


# --- 2: starting weights lacking tensors of the network are refused ---------------------------


def resnet18_classifier() -> Classifier:
    return Classifier("resnet18", class_names=["a", "b", "c"], image_size=32, device="cpu")


def imagenet_weights(state_dict: dict[str, torch.Tensor]) -> InitialWeights:
    return InitialWeights(
        "weights.pth", "resnet18", state_dict, Normalization(mean=(0.5,) * 3, std=(0.2,) * 3)
    )


def test_weights_lacking_trunk_tensors_are_refused_naming_them():
    full = create_model("resnet18", num_classes=1000).state_dict()
    with pytest.raises(ValueError) as error:
        apply_initial_weights(resnet18_classifier(), imagenet_weights({"conv1.weight": full["conv1.weight"]}))
    text = str(error.value)
    trunk = [name for name in full if not name.startswith("fc.") and not name.endswith("num_batches_tracked")]
    assert text.startswith(f"weights.pth lacks {len(trunk) - 1} tensors of the resnet18 network")
    assert "bn1.weight, bn1.bias, bn1.running_mean and" in text and "\n" not in text


def test_the_replaced_head_and_batch_counters_are_not_required():
    full = create_model("resnet18", num_classes=1000).state_dict()
    trunk = {
        name: tensor
        for name, tensor in full.items()
        if not name.startswith("fc.") and not name.endswith("num_batches_tracked")
    }
    classifier = resnet18_classifier()
    assert "a new head for 3 classes" in apply_initial_weights(classifier, imagenet_weights(trunk))
    assert torch.equal(classifier.network.state_dict()["conv1.weight"], full["conv1.weight"])


def test_pretrained_file_with_one_tensor_stops_the_run(quadrant_folder, tmp_path, capsys):
    weights = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights)
    flags = ["--quiet", "--model", "resnet18", "--pretrained", str(weights), "--img-size", "32"]
    assert train(quadrant_folder, tmp_path / "runs", *flags, "--epochs", "1") == 1
    line = error_line(capsys)
    assert f"{weights} lacks" in line and "tensors of the resnet18 network" in line
    assert not (tmp_path / "runs" / "train" / "last.pt").exists()
