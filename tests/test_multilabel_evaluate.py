"""``evaluate`` of a multi-label checkpoint (issue 21): the report's figures by hand, the label
columns matched by name, and the files an evaluation writes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cnnkit.api import Classifier
from cnnkit.data import ImageData
from cnnkit.reports import multi_label as multi_label_module
from cnnkit.reports.multi_label import (
    LEGEND_LIMIT,
    MultiLabelReport,
    average_precision,
    format_multi_label_table,
    multi_label_report,
    plot_label_set_gallery,
    plot_precision_recall,
    write_per_label_csv,
)
from cnnkit.runs import evaluation
from cnnkit.runs.evaluation import (
    evaluate_checkpoint,
    evaluate_classifier,
    format_evaluation,
    match_labels,
    write_evaluation_report,
)

# A label a quadrant: an image has the labels of its bright quadrants (any number, maybe none).
LABELS = ["top_left", "top_right", "bottom_left", "bottom_right"]
SIDE = 16
FLIPPED = [0, 1, 2, 3]  # test images given one wrong label each: the model's errors to find


def quadrant_set_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 noisy images and their multi-hot labels (count, 4): which quadrants are bright."""
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 80, size=(count, SIDE, SIDE, 3), dtype=np.uint8)
    labels = (generator.random((count, len(LABELS))) < 0.4).astype(np.int64)
    for index, row in enumerate(labels):
        for quadrant in np.flatnonzero(row):
            top, left = (quadrant // 2) * (SIDE // 2), (quadrant % 2) * (SIDE // 2)
            images[index, top : top + SIDE // 2, left : left + SIDE // 2] = 220
    return images, labels


def png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A multi-label tutorial checkpoint with thresholds chosen on validation images, and test
    images whose labels have one wrong label on each of the ``FLIPPED`` images."""
    root = tmp_path_factory.mktemp("multi_label_evaluate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNKIT_HOME", str(root / "home"))  # never the user's cache
        images, labels = quadrant_set_images(200, seed=0)
        classifier = Classifier(
            "tutorial", class_names=LABELS, image_size=SIDE, device="cpu", task="multi_label"
        )
        classifier.fit(images[:120], labels[:120], batch_size=16, epochs=3, learning_rate=3e-3, verbose=False)
        classifier.choose_thresholds(images[120:160], labels[120:160])
        classifier.save(root / "model.pt")
    test_images, test_labels = images[160:], labels[160:].copy()
    for index in FLIPPED:
        test_labels[index, index % len(LABELS)] ^= 1
    return root / "model.pt", test_images, test_labels


def test_average_precision_is_scikit_learns_with_ties_decided_together():
    # By hand: thresholds 0.9 (P 1, R 1/3), 0.8 (1/2, 1/3), 0.7 (2/3, 2/3), 0.6 (3/4, 1).
    assert average_precision([1, 0, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.5]) == pytest.approx(29 / 36)
    # A tie at 0.8 of a positive and a negative is one threshold (P 1/2, R 1/2), whatever their
    # order; ranking the positive first would give 1/2 + 1/2 * 2/3 = 5/6.
    assert average_precision([1, 0, 1, 0], [0.8, 0.8, 0.6, 0.2]) == pytest.approx(7 / 12)
    assert average_precision([0, 1, 1, 0], [0.8, 0.8, 0.6, 0.2]) == pytest.approx(7 / 12)
    # scikit-learn's documented example of average_precision_score.
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8333333333)
    assert average_precision([1, 1], [0.1, 0.2]) == 1.0 and average_precision([0, 0], [0.3, 0.9]) == 0.0


def hand_report(worst_limit: int = 25) -> MultiLabelReport:
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    probabilities = np.array([[0.9, 0.2, 0.1], [0.4, 0.8, 0.3], [0.6, 0.3, 0.7], [0.1, 0.1, 0.2]])
    # Decisions (probability >= threshold): [1,0,0] right, [0,1,1] 2 wrong, [1,0,1] 3 wrong, [0,0,0] right.
    names = [f"img{index}.png" for index in range(4)]
    return multi_label_report(
        targets, probabilities, ["a", "b", "c"], [0.5, 0.5, 0.25], 0.42, names, worst_limit
    )


def test_the_report_agrees_with_hand_counts(tmp_path):
    report = hand_report()
    rows = {row.name: row for row in report.per_label}
    # a: 1 right of 2 predicted, 1 of 2 found; b: 1 of 1, 1 of 2; c: no positive, predicted twice.
    assert (rows["a"].precision, rows["a"].recall, rows["a"].f1) == pytest.approx((0.5, 0.5, 0.5))
    assert (rows["b"].precision, rows["b"].recall, rows["b"].f1) == pytest.approx((1.0, 0.5, 2 / 3))
    assert (rows["c"].precision, rows["c"].recall, rows["c"].f1, rows["c"].predicted) == (0, 0, 0, 2)
    assert [row.support for row in report.per_label] == [2, 2, 0]
    assert [row.threshold for row in report.per_label] == [0.5, 0.5, 0.25]
    assert rows["a"].average_precision == pytest.approx(5 / 6) and rows["b"].average_precision == 1.0
    assert report.map == pytest.approx((5 / 6 + 1) / 2)  # c has no positive: left out of mAP
    # Pooled: 2 right of 5 predicted, 2 of 4 found; macro: the mean over all three labels.
    assert report.micro == pytest.approx({"precision": 0.4, "recall": 0.5, "f1": 4 / 9, "support": 4})
    assert report.macro == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 7 / 18, "support": 4})
    assert report.exact_match == 0.5 and report.hamming_loss == pytest.approx(5 / 12)
    assert report.count == 4 and report.loss == 0.42 and report.wrong_count == 2
    assert report.missing_labels == ["c"] and report.never_predicted == []
    assert any("No image has: c" in note for note in report.notes)
    # Worst: image 2 (mean cross-entropy of 0.4, 0.3, 0.3 kept) before image 1 (0.4, 0.8, 0.7).
    assert [image.index for image in report.worst] == [2, 1]
    worst = report.worst[0]
    assert (worst.true_labels, worst.predicted_labels, worst.wrong) == (["b"], ["c", "a"], 3)
    assert worst.probabilities == {"a": 0.6, "b": 0.3, "c": 0.7} and worst.name == "img2.png"
    assert worst.loss == pytest.approx(-(np.log(0.4) + 2 * np.log(0.3)) / 3)
    assert [image.index for image in hand_report(worst_limit=1).worst] == [2]
    # Round trip through JSON, and the CSV a row a label.
    values = json.loads(json.dumps(report.to_dict()))
    assert values["task"] == "multi_label" and values["thresholds"] == {"a": 0.5, "b": 0.5, "c": 0.25}
    assert MultiLabelReport.from_dict(values) == report
    write_per_label_csv(tmp_path / "per_label.csv", report)
    with open(tmp_path / "per_label.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert list(table[0]) == [
        "label",
        "precision",
        "recall",
        "f1",
        "average_precision",
        "support",
        "threshold",
    ]
    assert [(row["label"], float(row["recall"]), int(row["support"])) for row in table] == [
        ("a", 0.5, 2),
        ("b", 0.5, 2),
        ("c", 0.0, 0),
    ]
    text = format_multi_label_table(report)
    assert "micro avg" in text and "0.9167" in text and "2 of 4 images with a wrong label set" in text


def test_the_pictures_keep_many_labels_legible(tmp_path, monkeypatch):
    generator = np.random.default_rng(3)
    names = [f"label_{index}" for index in range(LEGEND_LIMIT + 6)]
    targets = (generator.random((40, len(names))) < 0.3).astype(int)
    targets[:, 0] = 0  # no positive: no curve
    report = multi_label_report(targets, generator.random(targets.shape), names, worst_limit=3)
    legends = []
    save = multi_label_module._save

    def keep_legend(figure, path):
        legends.append([text.get_text() for text in figure.axes[0].get_legend().get_texts()])
        save(figure, path)

    monkeypatch.setattr(multi_label_module, "_save", keep_legend)
    plot_precision_recall(tmp_path / "pr.png", report)
    legend = legends[0]
    assert len(legend) == LEGEND_LIMIT + 1 and legend[0] == "5 other labels"  # 15 curves, 10 named
    ranked = sorted((row for row in report.per_label if row.support), key=lambda row: -row.average_precision)
    named = [*ranked[:5], *ranked[-5:]]  # the best and the worst by AP
    assert legend[1:] == [f"{row.name} (AP {row.average_precision:.3f})" for row in named]
    monkeypatch.undo()
    plot_label_set_gallery(tmp_path / "gallery.png", np.zeros((40, 8, 8, 3), np.uint8), report.worst)
    plot_label_set_gallery(tmp_path / "none.png", [], [])  # nothing wrong: still a picture
    assert all(png(tmp_path / name) for name in ("pr.png", "gallery.png", "none.png"))
    with pytest.raises(ValueError, match="no precision-recall curves"):
        plot_precision_recall(tmp_path / "x.png", MultiLabelReport.from_dict(report.to_dict()))


def test_match_labels_orders_the_data_columns_by_the_models_labels():
    images = torch.zeros((3, 4, 4, 3), dtype=torch.uint8)
    data = ImageData(images, torch.tensor([[1, 0], [0, 1], [1, 1]]), ["sand", "sky"])
    matched = match_labels(data, ["sky", "sea", "sand"], multi_label=True)
    assert matched.tolist() == [[0, 0, 1], [1, 0, 0], [1, 0, 1]]  # "sea": not in the data, zeros
    assert match_labels(data, ["sky", "sand"]).tolist() == [[0, 1], [1, 0], [1, 1]]  # from the data
    zebra = ImageData(images, torch.tensor([[1, 0], [0, 1], [1, 1]]), ["sky", "zebra"])
    with pytest.raises(ValueError, match=r"^The data has labels the model does not know: zebra\. ") as error:
        match_labels(zebra, ["sky", "sea"], multi_label=True)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="A single-label model cannot be evaluated on multi-hot labels"):
        match_labels(data, ["sky", "sand"], multi_label=False)
    one_class = ImageData(images, torch.tensor([0, 1, 1]), ["sky", "sand"])
    with pytest.raises(ValueError, match="A multi-label model cannot be evaluated on one class an image"):
        match_labels(one_class, ["sky", "sand"], multi_label=True)


def test_evaluate_classifier_agrees_with_classifier_evaluate(trained, tmp_path):
    checkpoint, images, labels = trained
    classifier = Classifier.load(checkpoint, device="cpu")
    assert classifier.task.multi_label and classifier.thresholds is not None
    names = [f"images/{index:03d}.png" for index in range(len(images))]
    data = ImageData(torch.from_numpy(images), torch.from_numpy(labels), LABELS, names)
    report = evaluate_classifier(classifier, data)
    expected = classifier.evaluate(images, labels)
    assert isinstance(report, MultiLabelReport) and report.count == expected["count"] == 40
    assert report.loss == pytest.approx(expected["loss"], rel=1e-5)
    assert report.micro["f1"] == pytest.approx(expected["micro_f1"])
    assert report.macro["f1"] == pytest.approx(expected["macro_f1"])
    # The epoch metric's mAP counts logits in 2,000 bins from -24 to 24; the report's is exact:
    # the same AP of the binned scores.
    logits = classifier.logits(data.images).clamp(-24, 24)
    binned = ((logits + 24) * (2000 / 48)).long().clamp(0, 1999).numpy()
    binned_map = np.mean([average_precision(labels[:, j], binned[:, j]) for j in range(len(LABELS))])
    assert binned_map == pytest.approx(expected["map"])
    assert [row.threshold for row in report.per_label] == pytest.approx(classifier.thresholds)
    wrong = {image.index for image in report.worst}
    assert set(FLIPPED) <= wrong and report.exact_match <= 36 / 40  # the flipped labels are errors
    assert all(image.name == names[image.index] for image in report.worst)
    files = write_evaluation_report(tmp_path / "report", report, data.images, {"count": report.count})
    assert set(files) == {"per_label_csv", "precision_recall", "worst_images", "report_json"}
    assert {path.name for path in (tmp_path / "report").iterdir()} == {
        "per_label.csv",
        "precision_recall.png",
        "worst_images.png",
        "report.json",
    }
    assert png(tmp_path / "report" / "worst_images.png") and png(tmp_path / "report" / "precision_recall.png")


def test_evaluate_checkpoint_writes_the_multi_label_report(trained, tmp_path, monkeypatch):
    checkpoint, images, labels = trained
    # The data lists its labels in another order and lacks bottom_left (loading a labels.csv
    # folder is another change: the data is given as loaded).
    order = [3, 0, 1]
    data = ImageData(torch.from_numpy(images), torch.from_numpy(labels[:, order]), [LABELS[i] for i in order])
    monkeypatch.setattr(
        evaluation, "_evaluation_data", lambda checkpoint, source: (data, "test", "quadrant sets")
    )
    out = tmp_path / "report"
    result = evaluate_checkpoint(checkpoint, "quadrant sets", device="cpu", out=out)
    matched = labels.copy()
    matched[:, 2] = 0  # bottom_left: not in the data
    expected = Classifier.load(checkpoint, device="cpu").evaluate(images, matched)
    assert result["task"] == "multi_label" and result["count"] == 40 and result["split"] == "test"
    assert result["micro_f1"] == pytest.approx(expected["micro_f1"])
    assert result["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert [row["support"] for row in result["per_label"]] == matched.sum(0).tolist()
    assert result["missing_labels"] == ["bottom_left"] and result["thresholds_source"] == "validation"
    saved = json.loads((out / "report.json").read_text())
    assert saved["per_label"] == result["per_label"] and saved["map"] == result["map"]
    assert list(saved["thresholds"]) == LABELS and saved["report_folder"] == str(out)
    assert {"exact_match", "hamming_loss", "worst", "wrong_count", "checkpoint", "data"} <= set(saved)
    assert set(saved["files"]) == {"per_label_csv", "precision_recall", "worst_images", "report_json"}
    with open(out / "per_label.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["label"] for row in rows] == LABELS
    for row, figures in zip(rows, result["per_label"], strict=True):
        assert float(row["f1"]) == pytest.approx(figures["f1"], abs=1e-6)
        assert float(row["average_precision"]) == pytest.approx(figures["average_precision"], abs=1e-6)
        assert float(row["threshold"]) == pytest.approx(saved["thresholds"][row["label"]], abs=1e-6)
    text = format_evaluation(result)
    assert "quadrant sets [test] 40 images" in text and "bottom_right" in text and "micro avg" in text
    assert (
        "Thresholds: one a label, chosen on the training run's validation split." in text
        and text.endswith(f"Report folder: {out}")
    )


def test_a_checkpoint_without_thresholds_is_evaluated_at_one_half(trained, tmp_path, monkeypatch):
    checkpoint, images, labels = trained
    classifier = Classifier.load(checkpoint, device="cpu")
    classifier.thresholds = None
    classifier.save(tmp_path / "plain.pt")
    data = ImageData(torch.from_numpy(images), torch.from_numpy(labels), LABELS)
    monkeypatch.setattr(evaluation, "_evaluation_data", lambda checkpoint, source: (data, "test", "sets"))
    result = evaluate_checkpoint(tmp_path / "plain.pt", "sets", device="cpu", reports=False)
    assert result["thresholds_source"] == "default 0.5" and set(result["thresholds"].values()) == {0.5}
    assert result["micro_f1"] == pytest.approx(classifier.evaluate(images, labels)["micro_f1"])
    assert "report_folder" not in result and sorted(path.name for path in tmp_path.iterdir()) == ["plain.pt"]
