"""Evaluation reports: hand-checked metrics, the files they are written to, and ``cnnkit evaluate``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.cli import main
from cnnkit.data import ImageData
from cnnkit.reports.classification import (
    ClassificationReport,
    classification_report,
    format_report_table,
    read_per_class_csv,
    top_k_accuracy,
    write_per_class_csv,
)
from cnnkit.reports.evaluation_plots import plot_confusion_matrix, plot_misclassified
from cnnkit.runs.evaluation import evaluate_checkpoint, evaluate_classifier
from tests.conftest import CLASS_NAMES, make_quadrant_images, write_image_folder

# Ten images of three classes, written out by hand. Confusion matrix (rows true, columns predicted):
#   a: 2 1 1   (support 4)
#   b: 1 2 0   (support 3)
#   c: 0 1 2   (support 3)
#   predicted: 3 4 3
NAMES = ["a", "b", "c"]
LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDICTED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
# The probability each image gives its predicted class; the four errors are 2, 3, 6 and 9.
CONFIDENCE = [0.8, 0.6, 0.5, 0.9, 0.7, 0.6, 0.7, 0.95, 0.55, 0.6]


def _probabilities(predicted, confidence, class_count):
    rows = np.full((len(predicted), class_count), 0.0)
    for row, (chosen, probability) in enumerate(zip(predicted, confidence, strict=True)):
        rows[row] = (1 - probability) / (class_count - 1)
        rows[row, chosen] = probability
    return rows


@pytest.fixture
def hand_report() -> ClassificationReport:
    probabilities = _probabilities(PREDICTED, CONFIDENCE, 3)
    names = [f"img{index}.png" for index in range(len(LABELS))]
    return classification_report(LABELS, probabilities, NAMES, loss=0.5, names=names)


def test_per_class_metrics_and_averages_equal_hand_computed_values(hand_report):
    rows = {row.name: row for row in hand_report.per_class}
    assert [rows[n].support for n in NAMES] == [4, 3, 3]
    assert [rows[n].precision for n in NAMES] == pytest.approx([2 / 3, 2 / 4, 2 / 3])
    assert [rows[n].recall for n in NAMES] == pytest.approx([2 / 4, 2 / 3, 2 / 3])
    assert [rows[n].f1 for n in NAMES] == pytest.approx([4 / 7, 4 / 7, 2 / 3])
    assert hand_report.accuracy == pytest.approx(0.6) and hand_report.count == 10
    assert hand_report.macro == pytest.approx(
        {"precision": 11 / 18, "recall": 11 / 18, "f1": 38 / 63, "support": 10}
    )
    assert hand_report.weighted == pytest.approx(
        {"precision": 37 / 60, "recall": 0.6, "f1": 0.6, "support": 10}
    )
    assert hand_report.top5_accuracy is None  # three classes: top-5 would always be 1
    assert hand_report.loss == 0.5 and not hand_report.notes


def test_confusion_matrix_rows_are_true_classes(hand_report):
    matrix = hand_report.confusion_matrix
    assert matrix.tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert matrix.sum() == hand_report.count
    assert matrix.sum(axis=1).tolist() == [row.support for row in hand_report.per_class]


def test_misclassified_are_the_most_confident_errors_first(hand_report):
    errors = hand_report.misclassified
    assert [error.index for error in errors] == [3, 6, 9, 2]
    assert [error.probability for error in errors] == pytest.approx([0.9, 0.7, 0.6, 0.5])
    assert (errors[0].true_class, errors[0].predicted_class, errors[0].name) == ("a", "c", "img3.png")
    limited = classification_report(
        LABELS, _probabilities(PREDICTED, CONFIDENCE, 3), NAMES, misclassified_limit=2
    )
    assert [error.index for error in limited.misclassified] == [3, 6] and limited.misclassified_count == 4


def test_top5_accuracy_only_with_five_or_more_classes():
    # Six classes; the true class (0) ranks 1st, 5th, 6th and 3rd: three of four are in the top five.
    probabilities = np.array(
        [
            [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],
            [0.06, 0.30, 0.25, 0.20, 0.14, 0.05],
            [0.01, 0.30, 0.25, 0.20, 0.14, 0.10],
            [0.20, 0.30, 0.25, 0.10, 0.10, 0.05],
        ]
    )
    report = classification_report([0, 0, 0, 0], probabilities, list("uvwxyz"))
    assert report.top5_accuracy == pytest.approx(0.75)
    assert report.to_dict()["top5_accuracy"] == pytest.approx(0.75)
    assert top_k_accuracy([0, 0, 0, 0], probabilities, 1) == pytest.approx(0.25)
    four = classification_report([0, 1], np.eye(4)[:2], list("wxyz"))
    assert four.top5_accuracy is None and "top5_accuracy" not in four.to_dict()


def test_absent_and_never_predicted_classes_are_zero_with_a_note_not_nan():
    # Class d is not in the data but predicted once; class c is in the data but never predicted.
    labels = [0, 0, 1, 2]
    predicted = [0, 3, 1, 1]
    report = classification_report(labels, _probabilities(predicted, [0.9] * 4, 5), list("abcde"))
    rows = {row.name: row for row in report.per_class}
    assert (rows["d"].support, rows["d"].precision, rows["d"].recall) == (0, 0.0, 0.0)
    assert (rows["c"].precision, rows["c"].f1) == (0.0, 0.0)
    assert report.missing_classes == ["d", "e"]
    assert not any(np.isnan(value) for row in report.per_class for value in (row.precision, row.f1))
    # The macro average runs over a, b, c (in the data) and d (predicted); e has no evidence.
    assert report.macro["recall"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    notes = " ".join(report.notes)
    assert "Not in the data: e" in notes and "Predicted but not in the data: d" in notes
    assert "Never predicted: c" in notes
    table = format_report_table(report)
    assert "Note: Never predicted: c" in table and "nan" not in table.lower()


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ValueError, match=r"Received: shape=\(2, 2\)"):
        classification_report([0, 1], np.eye(2), NAMES)
    with pytest.raises(ValueError, match="labels must be in"):
        classification_report([0, 3], np.eye(3)[:2], NAMES)


def test_per_class_csv_parses_back_to_the_same_numbers(hand_report, tmp_path):
    path = tmp_path / "per_class.csv"
    write_per_class_csv(path, hand_report)
    rows = read_per_class_csv(path)
    assert [row["class"] for row in rows] == [*NAMES, "macro avg", "weighted avg"]
    for row, metrics in zip(rows, hand_report.per_class, strict=False):
        assert row["support"] == metrics.support and row["predicted"] == metrics.predicted
        for name in ("precision", "recall", "f1"):
            assert row[name] == pytest.approx(getattr(metrics, name), abs=1e-6)
    assert rows[-2]["f1"] == pytest.approx(38 / 63, abs=1e-6) and rows[-1]["support"] == 10


def test_report_survives_a_round_trip_through_json(hand_report):
    again = ClassificationReport.from_dict(json.loads(json.dumps(hand_report.to_dict())))
    assert format_report_table(again) == format_report_table(hand_report)


def _png_size(path):
    with Image.open(path) as image:
        image.verify()  # a truncated or corrupt file raises here
    with Image.open(path) as image:
        return image.format, image.size


def test_confusion_matrix_pictures_grow_with_the_class_count(tmp_path):
    for normalize in (False, True):
        path = tmp_path / f"two_{normalize}.png"
        plot_confusion_matrix(path, [[5, 1], [0, 4]], ["cat", "dog"], normalize=normalize)
        image_format, size = _png_size(path)
        assert image_format == "PNG" and min(size) >= 300 and max(size) <= 1200
    names = [f"class_{index}" for index in range(100)]
    plot_confusion_matrix(tmp_path / "many.png", np.diag(np.arange(1, 101)), names, normalize=True)
    assert min(_png_size(tmp_path / "many.png")[1]) >= 2000  # ~19 pt a cell: every name stays legible


def test_gallery_panels_follow_the_confidence_order(hand_report, tmp_path):
    # Solid, distinct colours: the panels' left-to-right order in the picture is readable from pixels.
    colours = {3: (255, 0, 0), 6: (0, 255, 0), 9: (0, 0, 255), 2: (255, 0, 255)}
    images = np.zeros((10, 8, 8, 3), dtype=np.uint8)
    for index, colour in colours.items():
        images[index] = colour
    path = tmp_path / "misclassified.png"
    plot_misclassified(path, images, hand_report.misclassified, hand_report.misclassified_count)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    columns = {
        index: np.nonzero((pixels == colour).all(axis=2))[1].mean() for index, colour in colours.items()
    }
    assert sorted(columns, key=columns.get) == [3, 6, 9, 2]
    plot_misclassified(tmp_path / "none.png", images, [], 0)  # nothing wrong: still a valid picture
    assert _png_size(tmp_path / "none.png")[0] == "PNG"


def test_evaluate_classifier_agrees_with_classifier_evaluate_under_tta():
    images, labels = make_quadrant_images(24, seed=3)
    classifier = Classifier("tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu")
    classifier.recipe = {"tta": 2}  # what a fast-recipe checkpoint carries
    expected = classifier.evaluate(images, labels)
    names = [f"{CLASS_NAMES[label]}/{index:04d}.png" for index, label in enumerate(labels)]
    data = ImageData(torch.from_numpy(images), torch.from_numpy(labels), list(CLASS_NAMES), names)
    report = evaluate_classifier(classifier, data)
    assert report.misclassified, "an untrained model gets some wrong"
    assert all(error.name == names[error.index] for error in report.misclassified)
    assert report.loss == pytest.approx(expected["loss"], rel=1e-5)
    assert report.accuracy == pytest.approx(expected["accuracy"]) and report.count == expected["count"]


@pytest.fixture(scope="module")
def evaluation_run(tmp_path_factory):
    """A tutorial checkpoint trained for 2 epochs on the quadrant images, and its test folder."""
    root = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNKIT_HOME", str(root / "home"))  # never the user's cache
        write_image_folder(root / "data" / "train", *make_quadrant_images(160, seed=1))
        write_image_folder(root / "data" / "test", *make_quadrant_images(40, seed=2))
        arguments = ["train", "--data", str(root / "data"), "--recipe", "tutorial", "--epochs", "2"]
        assert main([*arguments, "--out", str(root / "runs"), "--device", "cpu", "--quiet"]) == 0
        yield root / "runs" / "train" / "last.pt", root / "data"


def test_evaluate_writes_a_numbered_report_folder_beside_the_checkpoint(evaluation_run, capsys):
    checkpoint, data = evaluation_run
    arguments = ["evaluate", str(checkpoint), "--data", str(data), "--device", "cpu"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    folder = checkpoint.parent / "evaluate"
    assert output.rstrip().endswith(f"Report folder: {folder}")
    assert "precision" in output and "weighted avg" in output and "top_left" in output
    assert {path.name for path in folder.iterdir()} == {
        "per_class.csv",
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
        "misclassified.png",
        "reliability.png",
        "report.json",
    }
    rows = read_per_class_csv(folder / "per_class.csv")
    assert [row["class"] for row in rows[:4]] == CLASS_NAMES and all(row["support"] == 10 for row in rows[:4])
    assert _png_size(folder / "confusion_matrix.png")[0] == "PNG"
    assert main(arguments) == 0  # a second report never overwrites the first
    assert (checkpoint.parent / "evaluate2" / "report.json").is_file()


def test_evaluate_json_holds_the_whole_report(evaluation_run, tmp_path, capsys):
    checkpoint, data = evaluation_run
    out = tmp_path / "my_report"
    assert main(["evaluate", str(checkpoint), "--data", str(data), "--out", str(out), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    result = json.loads(lines[-1])
    assert result["count"] == 40 and result["split"] == "test" and result["accuracy"] >= 0.5
    assert result["loss"] > 0 and "top5_accuracy" not in result  # four classes
    assert result["class_names"] == CLASS_NAMES and result["missing_classes"] == []
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() == 40 and matrix.sum(axis=1).tolist() == [10, 10, 10, 10]
    assert np.trace(matrix) / 40 == pytest.approx(result["accuracy"])
    assert [row["support"] for row in result["per_class"]] == [10, 10, 10, 10]
    assert {"precision", "recall", "f1", "support"} <= set(result["macro_avg"])
    probabilities = [error["probability"] for error in result["misclassified"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert result["misclassified_count"] == 40 - np.trace(matrix)
    assert result["report_folder"] == str(out)
    assert json.loads((out / "report.json").read_text())["per_class"] == result["per_class"]
    assert all((out / name).is_file() for name in ("per_class.csv", "misclassified.png"))


def test_a_class_missing_from_the_data_is_reported_not_reindexed(evaluation_run, tmp_path, capsys):
    checkpoint, data = evaluation_run
    subset = tmp_path / "subset"
    for name in ("bottom_right", "top_right"):
        shutil.copytree(data / "test" / name, subset / name)
    assert (
        main(["evaluate", str(checkpoint), "--data", str(subset), "--out", str(tmp_path / "r"), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["missing_classes"] == ["bottom_left", "top_left"] and result["count"] == 20
    supports = {row["name"]: row["support"] for row in result["per_class"]}
    assert supports == {"bottom_left": 0, "bottom_right": 10, "top_left": 0, "top_right": 10}
    assert any("Not in the data" in note or "Predicted but not" in note for note in result["notes"])
    assert main(["evaluate", str(checkpoint), "--data", str(subset), "--out", str(tmp_path / "r2")]) == 0
    assert "bottom_left" in capsys.readouterr().out.split("Note:", 1)[1]


def test_an_unknown_class_is_an_error_naming_it_and_writes_nothing(evaluation_run, tmp_path, capsys):
    checkpoint, data = evaluation_run
    shutil.copytree(data / "test" / "top_left", tmp_path / "other" / "zebra")
    shutil.copytree(data / "test" / "top_right", tmp_path / "other" / "top_right")
    before = sorted(path.name for path in checkpoint.parent.iterdir())
    assert main(["evaluate", str(checkpoint), "--data", str(tmp_path / "other")]) == 1
    assert "zebra" in capsys.readouterr().err.splitlines()[-1]
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == before


def test_evaluate_checkpoint_without_reports_writes_no_files(evaluation_run):
    checkpoint, data = evaluation_run
    before = sorted(path.name for path in checkpoint.parent.iterdir())
    result = evaluate_checkpoint(checkpoint, data, device="cpu", reports=False)
    assert result["count"] == 40 and "report_folder" not in result and len(result["per_class"]) == 4
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == before
