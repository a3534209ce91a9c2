"""Per-class metrics of a classifier: precision, recall, F1, support, confusion matrix, top-k.

The numbers follow scikit-learn's ``classification_report`` (without depending on it): a class
never predicted has precision 0, a class absent from the data has recall 0, and the macro average
runs over the classes that occur in the labels or in the predictions. Every such case is named
in the report's ``notes`` rather than hidden behind a NaN.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnkit.fileio import atomic_write_text

TOP_K = 5


@dataclass
class ClassMetrics:
    """One class's row of the report."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int  # images of this class in the data
    predicted: int  # images the model assigned to this class


@dataclass
class Misclassification:
    """One wrongly classified image: its position in the data, and what the model said."""

    index: int
    true_class: str
    predicted_class: str
    probability: float  # the model's probability for the (wrong) predicted class
    name: str | None = None  # the image's file name, when the data knows it


@dataclass
class ClassificationReport:
    """Everything measured on one labelled data set (see ``classification_report``)."""

    class_names: list[str]
    per_class: list[ClassMetrics]
    accuracy: float
    count: int
    macro: dict[str, float]
    weighted: dict[str, float]
    confusion_matrix: np.ndarray  # int64 (classes, classes): rows true, columns predicted
    misclassified: list[Misclassification]  # the most confident errors, most confident first
    misclassified_count: int
    top5_accuracy: float | None = None  # only with at least five classes
    loss: float | None = None
    # From the metric objects (engine.metrics), as the epoch lines: the mean recall of the classes
    # present, and the unweighted mean F1.
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    missing_classes: list[str] = field(default_factory=list)
    never_predicted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # How far the probabilities can be believed (reports.calibration.calibration_report).
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (lists, floats, ints, strings)."""
        result: dict[str, Any] = {"accuracy": self.accuracy}
        if self.loss is not None:
            result["loss"] = self.loss
        result["count"] = self.count
        for name in ("balanced_accuracy", "macro_f1"):
            if getattr(self, name) is not None:
                result[name] = getattr(self, name)
        if self.top5_accuracy is not None:
            result["top5_accuracy"] = self.top5_accuracy
        result.update(
            {
                "class_names": list(self.class_names),
                "per_class": [vars(row).copy() for row in self.per_class],
                "macro_avg": dict(self.macro),
                "weighted_avg": dict(self.weighted),
                "confusion_matrix": self.confusion_matrix.tolist(),
                "missing_classes": list(self.missing_classes),
                "never_predicted": list(self.never_predicted),
                "misclassified_count": self.misclassified_count,
                "misclassified": [vars(error).copy() for error in self.misclassified],
                "notes": list(self.notes),
            }
        )
        if self.calibration is not None:
            result["calibration"] = self.calibration
        return result

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassificationReport:
        """The report back from ``to_dict``'s output (extra keys, such as a file list, are ignored)."""
        return cls(
            class_names=list(values["class_names"]),
            per_class=[ClassMetrics(**row) for row in values["per_class"]],
            accuracy=float(values["accuracy"]),
            count=int(values["count"]),
            macro=dict(values["macro_avg"]),
            weighted=dict(values["weighted_avg"]),
            confusion_matrix=np.asarray(values["confusion_matrix"], dtype=np.int64),
            misclassified=[Misclassification(**error) for error in values["misclassified"]],
            misclassified_count=int(values["misclassified_count"]),
            top5_accuracy=values.get("top5_accuracy"),
            loss=values.get("loss"),
            balanced_accuracy=values.get("balanced_accuracy"),
            macro_f1=values.get("macro_f1"),
            missing_classes=list(values["missing_classes"]),
            never_predicted=list(values["never_predicted"]),
            notes=list(values["notes"]),
            calibration=values.get("calibration"),
        )


def classification_report(
    labels: Any,
    probabilities: Any,
    class_names: Sequence[str],
    loss: float | None = None,
    names: Sequence[str] | None = None,
    misclassified_limit: int = 25,
) -> ClassificationReport:
    """Per-class and overall metrics of ``probabilities`` (N, classes) against integer ``labels``.

    ``loss`` is passed in (computed by the caller from the same logits) because cross-entropy
    from probabilities loses precision where a probability underflows. ``names`` labels each image
    (file names) in the list of the ``misclassified_limit`` most confident errors.
    """
    labels, probabilities = _checked_inputs(labels, probabilities, class_names, names, misclassified_limit)
    class_count = len(class_names)
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, class_count)
    per_class = _per_class_metrics(matrix, class_names)
    # As scikit-learn: average over the classes seen in the labels or the predictions; a class
    # neither present nor predicted has no evidence either way.
    seen = [row for row in per_class if row.support or row.predicted]
    macro = _average(seen, weights=[1.0] * len(seen))
    weighted = _average(per_class, weights=[float(row.support) for row in per_class])
    errors = np.flatnonzero(predictions != labels)
    report = ClassificationReport(
        class_names=list(class_names),
        per_class=per_class,
        accuracy=float(np.trace(matrix) / len(labels)),
        count=len(labels),
        macro=macro,
        weighted=weighted,
        confusion_matrix=matrix,
        misclassified=_most_confident_errors(
            errors, labels, predictions, probabilities, class_names, names, misclassified_limit
        ),
        misclassified_count=len(errors),
        top5_accuracy=top_k_accuracy(labels, probabilities, TOP_K) if class_count >= TOP_K else None,
        loss=None if loss is None else float(loss),
        missing_classes=[row.name for row in per_class if row.support == 0],
        never_predicted=[row.name for row in per_class if row.predicted == 0],
    )
    report.notes = _notes(report)
    return report


def confusion_matrix(labels: Any, predictions: Any, class_count: int) -> np.ndarray:
    """int64 ``(class_count, class_count)`` counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    flat = np.bincount(labels * class_count + predictions, minlength=class_count * class_count)
    return flat.reshape(class_count, class_count)


def top_k_accuracy(labels: Any, probabilities: Any, k: int) -> float:
    """Share of images whose true class is among the ``k`` most probable classes."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities)
    if not 1 <= k <= probabilities.shape[1]:
        raise ValueError(f"k must be in [1, {probabilities.shape[1]}]. Received: k={k}")
    top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def _checked_inputs(labels, probabilities, class_names, names, limit) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities must have shape (N, {len(class_names)}). "
            f"Received: shape={tuple(probabilities.shape)}"
        )
    if len(labels) != len(probabilities) or len(labels) == 0:
        raise ValueError(
            "labels and probabilities must be non-empty and of equal length. "
            f"Received: len(labels)={len(labels)}, len(probabilities)={len(probabilities)}"
        )
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(
            f"labels must be in [0, {len(class_names)}). Received: min={labels.min()}, max={labels.max()}"
        )
    if names is not None and len(names) != len(labels):
        raise ValueError(
            f"names must name every image. Received: len(names)={len(names)}, {len(labels)} labels"
        )
    if limit < 0:
        raise ValueError(f"misclassified_limit must be >= 0. Received: misclassified_limit={limit}")
    return labels, probabilities


def _per_class_metrics(matrix: np.ndarray, class_names: Sequence[str]) -> list[ClassMetrics]:
    correct = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    rows = []
    for position, name in enumerate(class_names):
        precision = _ratio(correct[position], predicted[position])
        recall = _ratio(correct[position], support[position])
        f1 = _ratio(2 * precision * recall, precision + recall)
        rows.append(
            ClassMetrics(name, precision, recall, f1, int(support[position]), int(predicted[position]))
        )
    return rows


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or 0 for 0 / 0 (scikit-learn's ``zero_division=0``)."""
    return float(numerator / denominator) if denominator else 0.0


def _average(rows: list[ClassMetrics], weights: list[float]) -> dict[str, float]:
    total = sum(weights)
    return {
        metric: _ratio(sum(getattr(row, metric) * w for row, w in zip(rows, weights, strict=True)), total)
        for metric in ("precision", "recall", "f1")
    } | {"support": int(sum(row.support for row in rows))}


def _most_confident_errors(errors, labels, predictions, probabilities, class_names, names, limit):
    confidence = probabilities[errors, predictions[errors]]
    # Stable sort on the negated confidence: most confident first, ties in data order.
    chosen = errors[np.argsort(-confidence, kind="stable")][:limit]
    return [
        Misclassification(
            index=int(index),
            true_class=class_names[labels[index]],
            predicted_class=class_names[predictions[index]],
            probability=float(probabilities[index, predictions[index]]),
            name=None if names is None else str(names[index]),
        )
        for index in chosen
    ]


def _notes(report: ClassificationReport) -> list[str]:
    """Plain words for every number that is 0 by convention rather than by measurement."""
    rows = report.per_class
    missing_predicted = [row.name for row in rows if row.support == 0 and row.predicted]
    absent_and_unpredicted = [row.name for row in rows if row.support == 0 and not row.predicted]
    unpredicted = [row.name for row in rows if row.predicted == 0 and row.support]
    notes = []
    if absent_and_unpredicted:
        notes.append(
            f"Not in the data: {', '.join(absent_and_unpredicted)} "
            "(support 0, recall shown as 0, left out of the averages)."
        )
    if missing_predicted:
        notes.append(
            f"Predicted but not in the data: {', '.join(missing_predicted)} "
            "(support 0; every such prediction is wrong; counted as 0 in the macro average)."
        )
    if unpredicted:
        notes.append(f"Never predicted: {', '.join(unpredicted)} (precision shown as 0).")
    return notes


def imbalanced(report: ClassificationReport, ratio: float = 3.0) -> bool:
    """Whether the largest class of the scored images has more than ``ratio`` times the smallest's."""
    supports = [row.support for row in report.per_class if row.support]
    return len(supports) > 1 and max(supports) > ratio * min(supports)


def format_report_table(report: ClassificationReport, digits: int = 4) -> str:
    """The report as text, laid out like scikit-learn's ``classification_report``."""
    headers = ("precision", "recall", "f1-score", "support")
    name_width = max(len("weighted avg"), *(len(name) for name in report.class_names))
    column = max(digits + 6, *(len(h) for h in headers))

    def line(name: str, values: Sequence[str]) -> str:
        return name.rjust(name_width) + "".join(value.rjust(column) for value in values)

    def number(value: float) -> str:
        return f"{value:.{digits}f}"

    lines = [line("", headers), ""]
    for row in report.per_class:
        lines.append(
            line(row.name, [number(row.precision), number(row.recall), number(row.f1), str(row.support)])
        )
    lines.append("")
    lines.append(line("accuracy", ["", "", number(report.accuracy), str(report.count)]))
    for label, average in (("macro avg", report.macro), ("weighted avg", report.weighted)):
        values = [number(average["precision"]), number(average["recall"]), number(average["f1"])]
        lines.append(line(label, [*values, str(average["support"])]))
    extras = []
    if report.top5_accuracy is not None:
        extras.append(f"top-5 accuracy {number(report.top5_accuracy)}")
    if report.loss is not None:
        extras.append(f"loss {number(report.loss)}")
    if report.balanced_accuracy is not None and imbalanced(report):
        extras.append(f"balanced accuracy {number(report.balanced_accuracy)}")
        extras.append(f"macro-F1 {number(report.macro_f1)}")
    extras.append(f"{report.misclassified_count} of {report.count} images misclassified")
    lines += ["", " - ".join(extras)]
    lines += [f"Note: {note}" for note in report.notes]
    return "\n".join(lines)


PER_CLASS_FIELDS = ("class", "precision", "recall", "f1", "support", "predicted")


def write_per_class_csv(path: str | os.PathLike, report: ClassificationReport) -> None:
    """``class,precision,recall,f1,support,predicted``: one row a class, then the two averages."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_CLASS_FIELDS)
    for row in report.per_class:
        writer.writerow([row.name, *_fixed(row.precision, row.recall, row.f1), row.support, row.predicted])
    predicted_total = sum(row.predicted for row in report.per_class)
    for label, average in (("macro avg", report.macro), ("weighted avg", report.weighted)):
        values = _fixed(average["precision"], average["recall"], average["f1"])
        writer.writerow([label, *values, average["support"], predicted_total])
    atomic_write_text(path, buffer.getvalue())


def read_per_class_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``per_class.csv`` with numbers as numbers (the inverse of ``write_per_class_csv``)."""
    with open(path, newline="", encoding="utf-8") as file:
        return [
            {
                "class": row["class"],
                **{metric: float(row[metric]) for metric in ("precision", "recall", "f1")},
                "support": int(row["support"]),
                "predicted": int(row["predicted"]),
            }
            for row in csv.DictReader(file)
        ]


def _fixed(*values: float) -> list[str]:
    return [f"{value:.6f}" for value in values]
