"""Imbalanced classes: how imbalanced the data is, said; class weights and logit adjustment (issue 20)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from cnnkit.cli import main
from cnnkit.data.balance import class_balance_summary, imbalance_note
from cnnkit.recipes import get_recipe
from cnnkit.tasks import SINGLE_LABEL
from tests.conftest import CLASS_NAMES, make_quadrant_images, write_image_folder


def test_the_summary_counts_each_class_and_the_ratio_of_largest_to_smallest():
    summary = class_balance_summary(np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3]), CLASS_NAMES)
    assert summary["class_counts"] == dict(zip(CLASS_NAMES, [6, 2, 1, 3], strict=True))
    assert summary["imbalance_ratio"] == 6
    note = imbalance_note(summary)
    assert note.startswith("Classes are imbalanced: bottom_left has 6 training images, the smallest")
    assert "the smallest top_left (1), bottom_right (2)" in note
    assert "ratio 6" in note and "--set class_weights=balanced" in note
    assert imbalance_note(class_balance_summary([0, 0, 0, 1, 2, 3], CLASS_NAMES)) is None  # ratio 3
    assert class_balance_summary([0, 1, 2], CLASS_NAMES)["imbalance_ratio"] is None  # a class with none
    with pytest.raises(ValueError, match="Received: label=4"):
        class_balance_summary([4], CLASS_NAMES)


def test_balanced_weights_give_every_class_the_same_total_weight():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    weights, shift = SINGLE_LABEL.class_balance(
        labels, 3, get_recipe("fast").replace(class_weights="balanced"), "cpu"
    )
    assert shift is None
    counts = torch.tensor([90.0, 9.0, 1.0])
    torch.testing.assert_close(weights * counts, torch.full((3,), 100 / 3))  # scikit-learn's "balanced"


def test_logit_adjustment_adds_tau_log_prior_to_the_training_logits_only():
    labels = torch.tensor([0] * 75 + [1] * 25)
    recipe = get_recipe("fast").replace(logit_adjustment=1.0)
    weights, shift = SINGLE_LABEL.class_balance(labels, 2, recipe, "cpu")
    assert weights is None
    torch.testing.assert_close(shift, torch.tensor([math.log(0.75), math.log(0.25)]))
    logits, targets = torch.tensor([[2.0, 1.0], [0.5, 0.5]]), torch.tensor([1, 1])
    loss, _ = SINGLE_LABEL.loss(logits, targets, 0.0, "mean", None, shift)
    assert loss.item() == pytest.approx(F.cross_entropy(logits + shift, targets).item())
    # The rare class's logits are pushed down in training, so the model must raise them: its
    # loss on a rare-class image is higher than the plain loss.
    assert loss.item() > F.cross_entropy(logits, targets).item()


def test_a_skewed_folder_says_so_and_records_the_counts(tmp_path, capsys):
    images, labels = make_quadrant_images(240, seed=2)
    keep = np.concatenate([np.flatnonzero(labels == c)[: 60 if c == 0 else 10] for c in range(4)])
    data = write_image_folder(tmp_path / "data", images[keep], labels[keep])
    out = tmp_path / "runs"
    flags = ["--model", "tutorial", "--epochs", "1", "--set", "class_weights=balanced"]
    assert main(["train", "--data", str(data), "--out", str(out), "--name", "run", *flags]) == 0
    assert "Classes are imbalanced: bottom_left has 48 training images" in capsys.readouterr().err
    config = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert config["class_counts"]["bottom_left"] == 48 and config["imbalance_ratio"] > 3
    assert config["recipe"]["class_weights"] == "balanced"


def test_a_weight_a_class_is_a_recipe_setting_checked_against_the_classes():
    from cnnkit.recipes import load_recipe
    from cnnkit.recipes.files import parse_assignment

    recipe = load_recipe("fast", dict([parse_assignment("class_weights=[1, 2.5, 0]")]))  # as --set gives it
    assert recipe.class_weights == (1.0, 2.5, 0.0) and recipe.to_dict()["class_weights"] == [1.0, 2.5, 0.0]
    weights, _ = SINGLE_LABEL.class_balance(torch.tensor([0, 1, 2]), 3, recipe, "cpu")
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, _ = SINGLE_LABEL.loss(logits, targets, 0.0, "mean", weights, None)
    expected = F.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2.5, 0.0]))
    assert loss.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match=r"class_weights needs one weight a class \(4\)\. Received: 3"):
        SINGLE_LABEL.class_balance(torch.tensor([0, 1, 2, 3]), 4, recipe, "cpu")
    with pytest.raises(ValueError, match=r"not all 0\)\. Received: class_weights=\(0\.0, 0\.0\)"):
        recipe.replace(class_weights=[0, 0])
