"""Multi-label data, first pieces (issue 21): the labels.csv table and a split that keeps every
label represented."""

import numpy as np
import pytest

from cnnkit.data.errors import DataError
from cnnkit.data.label_table import read_label_table
from cnnkit.data.multilabel_split import iterative_split

IMAGES = ["beach/1.jpg", "beach/2.jpg", "city/3.png", "4.png"]


def test_the_table_gives_a_multi_hot_matrix_and_skips_what_it_cannot_use_with_reasons():
    text = (
        "image,labels\n"
        "beach/1.jpg,sea people dog\n"
        "./beach/2.jpg,sea;sand|sea\n"  # ./ and mixed separators; a label named twice counts once
        "city\\3.png,\n"  # backslashes; an empty cell: none of the labels
        "beach/1.jpg,cat\n"  # a second row for an image
        "gone.jpg,sea\n"  # names no image
    )
    table = read_label_table(text, "labels.csv", IMAGES)
    assert table.label_names == ["dog", "people", "sand", "sea"]
    assert table.paths == ["beach/1.jpg", "beach/2.jpg", "city/3.png"]
    assert table.labels.tolist() == [[1, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert table.label_counts() == {"dog": 1, "people": 1, "sand": 1, "sea": 2}
    reasons = {file.path: file.reason for file in table.skipped}
    assert reasons == {
        "labels.csv row 5: beach/1.jpg": "labels: a second row for the same image (the first is kept)",
        "labels.csv row 6: gone.jpg": "labels: names no image of the data",
        "4.png": "labels: no row in labels.csv",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,labels\n", "labels.csv has no rows: it needs one row an image, image,labels."),
        ("x.jpg,sea\n", "labels.csv labels none of the data's 4 images: its first column must name"),
        ("beach/1.jpg,\n4.png, \n", "labels.csv gives no labels: every row's labels are empty."),
    ],
)
def test_a_table_that_leaves_nothing_to_train_on_is_one_line(text, message):
    with pytest.raises(DataError, match=message):
        read_label_table(text, "labels.csv", IMAGES)


def test_the_split_keeps_every_label_in_both_parts_in_proportion_and_is_seeded():
    generator = np.random.default_rng(0)
    labels = (generator.random((500, 8)) < np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.012, 0.008])).astype(
        np.uint8
    )
    labels[:20] = 0  # some images with no label at all
    train, validation = iterative_split(labels, 0.2, seed=3)
    assert sorted([*train, *validation]) == list(range(500)) and not set(train) & set(validation)
    assert abs(len(validation) - 100) <= 2
    counts, held_out = labels.sum(0), labels[validation].sum(0)
    assert (held_out >= 1).all() and (labels[train].sum(0) >= 1).all()  # the rarest (4 images) too
    np.testing.assert_allclose(held_out / counts, 0.2, atol=0.08)
    again = iterative_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], validation)
    assert not np.array_equal(iterative_split(labels, 0.2, seed=4)[1], validation)
    with pytest.raises(ValueError, match=r"Received: validation_split=0"):
        iterative_split(labels, 0, seed=0)


# -- the multi-label task and its metrics -----------------------------------------------------------
def _average_precision(scores, actual):
    """scikit-learn's average_precision_score for distinct scores, written out."""
    order = np.argsort(-scores)
    hits = actual[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / hits.sum())


def test_multi_label_metrics_agree_with_their_definitions():
    import torch

    from cnnkit.engine.metrics import MetricSet

    probabilities = np.array(
        [[0.95, 0.10, 0.62], [0.81, 0.72, 0.33], [0.47, 0.91, 0.58], [0.26, 0.15, 0.86], [0.64, 0.55, 0.05]]
    )
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    logits = torch.logit(torch.tensor(probabilities))
    metrics = MetricSet(("loss", "map", "micro_f1", "macro_f1"), 3, multi_label=True)
    for part in (slice(0, 2), slice(2, 5)):  # in two batches
        metrics.update(torch.tensor(0.0), logits[part], torch.tensor(targets[part]))
    values = metrics.values()
    expected_map = np.mean([_average_precision(probabilities[:, j], targets[:, j]) for j in range(3)])
    assert values["map"] == pytest.approx(expected_map)
    predicted = probabilities > 0.5
    tp, fp = (predicted & (targets == 1)).sum(0), (predicted & (targets == 0)).sum(0)
    fn = (~predicted & (targets == 1)).sum(0)
    assert values["micro_f1"] == pytest.approx(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()))
    assert values["macro_f1"] == pytest.approx(np.mean(2 * tp / (2 * tp + fp + fn)))
    with pytest.raises(ValueError, match=r"map is not a single-label metric\. Received: metric='map'"):
        MetricSet(("map",), 3)
    with pytest.raises(ValueError, match=r"accuracy is not a multi-label metric"):
        MetricSet(("accuracy",), 3, multi_label=True)


def test_the_multi_label_task_trains_with_binary_cross_entropy_and_decides_by_thresholds():
    import torch
    import torch.nn.functional as F

    from cnnkit.recipes import get_recipe
    from cnnkit.tasks import MULTI_LABEL, get_task

    assert get_task("multi_label") is MULTI_LABEL and MULTI_LABEL.default_monitor == "val_map"
    logits, targets = torch.randn(4, 3), torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    report, objective = MULTI_LABEL.loss(logits, targets, 0.0, "mean")
    assert report.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, targets.float()).item())
    ensemble_report, ensemble_objective = MULTI_LABEL.loss(
        torch.stack([logits, logits]), targets, 0.0, "mean"
    )
    assert ensemble_report.item() == pytest.approx(report.item())  # members: the mean reported
    assert ensemble_objective.item() == pytest.approx(2 * objective.item())  # and each member's own loss
    summed, _ = MULTI_LABEL.loss(logits, targets, 0.0, "sum")
    assert summed.item() == pytest.approx(MULTI_LABEL.evaluation_loss_sum(logits, targets).item())
    labels = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]])
    recipe = get_recipe("fast").replace(class_weights="balanced")
    weights, _ = MULTI_LABEL.class_balance(labels, 2, recipe, "cpu")
    assert weights.tolist() == [pytest.approx(1 / 3), pytest.approx(3.0)]  # negatives over positives
    with pytest.raises(ValueError, match=r"logit_adjustment is a single-label setting.*Received: logit_"):
        MULTI_LABEL.class_balance(labels, 2, recipe.replace(logit_adjustment=1.0), "cpu")
    scores = np.array([[0.9, 0.2], [0.7, 0.4], [0.6, 0.35], [0.2, 0.1]])
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    thresholds = MULTI_LABEL.choose_thresholds(scores, truth)
    # Label 0: F1 1 from 0.7 down (halfway to the next score, 0.6); label 1: its one positive, 0.4.
    assert thresholds == [pytest.approx(0.65), pytest.approx(0.375)]
    assert MULTI_LABEL.choose_thresholds(scores, np.zeros_like(truth)) == [0.5, 0.5]  # no positive
    assert MULTI_LABEL.decide(scores, thresholds).astype(int).tolist() == truth.tolist()


def test_the_trainer_trains_a_multi_label_job_as_the_second_task_and_nothing_more():
    """Engine level: a TrainingJob with MULTI_LABEL and multi-hot labels trains, validates and is
    monitored by mAP, with no change to the loop (loading a labels.csv into it is still to come)."""
    import torch

    from cnnkit.engine.job import TrainingData, TrainingJob, fit
    from cnnkit.models import create_model
    from cnnkit.recipes import get_recipe
    from cnnkit.runtime.normalization import Normalization
    from cnnkit.tasks import MULTI_LABEL

    generator = np.random.default_rng(0)
    count, side = 160, 16
    images = generator.integers(0, 80, size=(count, side, side, 3), dtype=np.uint8)
    labels = (generator.random((count, 4)) < 0.4).astype(np.uint8)  # which quadrants are bright
    for index, row in enumerate(labels):
        for quadrant in np.flatnonzero(row):
            top, left = (quadrant // 2) * 8, (quadrant % 2) * 8
            images[index, top : top + 8, left : left + 8] = 220
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    data = TrainingData(images[:120], labels[:120], images[120:], labels[120:])
    recipe = get_recipe("tutorial").replace(epochs=6, batch_size=16, learning_rate=3e-3, monitor="val_map")
    model = create_model("tutorial", num_classes=4, image_size=side)
    job = TrainingJob(model, data, recipe, Normalization(), torch.device("cpu"), task=MULTI_LABEL)
    history = fit(job)
    rows = history.rows
    assert {"loss", "map", "micro_f1", "macro_f1", "val_map", "val_micro_f1"} <= set(rows[-1])
    assert "accuracy" not in rows[-1]  # a single-label metric
    assert rows[-1]["val_map"] > 0.9 and rows[-1]["val_micro_f1"] > 0.8  # chance mAP is about 0.4
    scores = [row["val_map"] for row in rows]
    assert history.best_epoch == 1 + scores.index(max(scores))


def test_image_data_takes_multi_hot_labels_and_splits_them_keeping_every_label():
    import torch

    from cnnkit.data import ImageData, classes_without_validation, split_train_val

    generator = np.random.default_rng(1)
    labels = torch.from_numpy((generator.random((60, 3)) < [0.5, 0.3, 0.0]).astype(np.int64))
    labels[[3, 17, 29, 41, 55], 2] = 1  # "dog": five images
    labels = torch.cat([labels, torch.zeros(60, 1, dtype=torch.int64)], dim=1)
    labels[7, 3] = 1  # "cat": one image, which training keeps
    images = torch.zeros((60, 8, 8, 3), dtype=torch.uint8)
    names = ["sea", "sand", "dog", "cat"]
    data = ImageData(images, labels, names, names=[f"{n}.png" for n in range(60)])
    assert data.multi_label and not ImageData(images, labels[:, 0], ["a", "b"]).multi_label
    train, validation = split_train_val(data, 0.25, seed=0)
    assert len(train) + len(validation) == 60 and abs(len(validation) - 15) <= 1
    assert (train.labels.sum(0) > 0).all() and (validation.labels.sum(0)[:3] > 0).all()
    assert train.multi_label and train.names[0].endswith(".png")
    assert classes_without_validation(train, validation) == ["cat"]  # the run says so in one line
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\), or \(N, classes\).*4 class names"):
        ImageData(images, labels[:, :2], names)
    with pytest.raises(ValueError, match="multi-hot labels must be 0 or 1"):
        ImageData(images, labels * 2, names)
