"""The multi-label classification report (issue 21): per label precision, recall, F1 (at the
label's threshold) and average precision, the micro and macro averages, mAP, exact-match ratio,
Hamming loss, and the worst-scored images; with its CSV, text table and two pictures.

The numbers follow scikit-learn without depending on it: ``average_precision`` is its
``average_precision_score`` (ties decided together), a label never predicted has precision 0, and
the macro averages run over every label, as ``f1_score(average="macro")`` and the ``macro_f1``
metric of the epoch lines do. mAP averages the labels with a positive image. A label is predicted
where its probability reaches its threshold, as ``MultiLabelTask.decide`` (prediction) does.
"""

from __future__ import annotations

import csv
import io
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnkit.fileio import atomic_write_text
from cnnkit.reports.evaluation_plots import _pyplot, _save, _shorten, gallery_figure, save_empty_gallery
from cnnkit.tasks.multi_label import DEFAULT_THRESHOLD, MultiLabelTask

# Above this many labels the precision-recall legend names only the best and worst halves of it.
LEGEND_LIMIT = 10
# Probabilities are clipped so that an image's cross-entropy (its rank among the worst) is finite.
_CLIP = 1e-7


@dataclass
class LabelMetrics:
    """One label's row of the report."""

    name: str
    precision: float
    recall: float
    f1: float
    average_precision: float  # 0 for a label without a positive image (left out of mAP)
    support: int  # images with this label
    predicted: int  # images the model gave this label
    threshold: float


@dataclass
class WrongLabelSet:
    """An image whose predicted label set differs from its true one."""

    index: int
    true_labels: list[str]
    predicted_labels: list[str]  # most probable first
    probabilities: dict[str, float]  # of the true and the predicted labels
    wrong: int  # wrong label decisions: missed plus extra labels
    loss: float  # the image's mean binary cross-entropy over the labels (its rank)
    name: str | None = None  # the image's file name, when the data knows it


@dataclass
class MultiLabelReport:
    """Everything measured on one multi-label data set (see ``multi_label_report``)."""

    label_names: list[str]
    per_label: list[LabelMetrics]
    count: int
    map: float
    micro: dict[str, float]  # precision, recall, f1 of every (image, label) decision pooled; support
    macro: dict[str, float]  # the unweighted means over labels; support
    exact_match: float  # images whose predicted set is exactly the true set (subset accuracy)
    hamming_loss: float  # wrong (image, label) decisions over all of them
    worst: list[WrongLabelSet]  # highest cross-entropy first
    wrong_count: int  # images with a wrong label set
    loss: float | None = None
    missing_labels: list[str] = field(default_factory=list)
    never_predicted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (recall, precision) steps of each label's curve (precision holds up to each recall), for
    # the picture; not in ``to_dict``.
    curves: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; ``task`` is ``"multi_label"``."""
        result: dict[str, Any] = {"task": "multi_label"}
        if self.loss is not None:
            result["loss"] = self.loss
        result.update(
            {
                "count": self.count,
                "map": self.map,
                "micro_f1": self.micro["f1"],
                "macro_f1": self.macro["f1"],
                "exact_match": self.exact_match,
                "hamming_loss": self.hamming_loss,
                "label_names": list(self.label_names),
                "thresholds": {row.name: row.threshold for row in self.per_label},
                "per_label": [vars(row).copy() for row in self.per_label],
                "micro_avg": dict(self.micro),
                "macro_avg": dict(self.macro),
                "missing_labels": list(self.missing_labels),
                "never_predicted": list(self.never_predicted),
                "wrong_count": self.wrong_count,
                "worst": [vars(image).copy() for image in self.worst],
                "notes": list(self.notes),
            }
        )
        return result

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MultiLabelReport:
        """The report back from ``to_dict``'s output (extra keys are ignored; no curves)."""
        return cls(
            label_names=list(values["label_names"]),
            per_label=[LabelMetrics(**row) for row in values["per_label"]],
            count=int(values["count"]),
            map=float(values["map"]),
            micro=dict(values["micro_avg"]),
            macro=dict(values["macro_avg"]),
            exact_match=float(values["exact_match"]),
            hamming_loss=float(values["hamming_loss"]),
            worst=[WrongLabelSet(**image) for image in values["worst"]],
            wrong_count=int(values["wrong_count"]),
            loss=values.get("loss"),
            missing_labels=list(values["missing_labels"]),
            never_predicted=list(values["never_predicted"]),
            notes=list(values["notes"]),
        )


def precision_recall_curve(targets: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of one label predicted at each distinct score, highest score first.

    Equal scores are one threshold (decided together), as in scikit-learn. Without a positive
    image recall is 0 throughout.
    """
    actual = np.asarray(targets).reshape(-1) > 0.5
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], actual[order]
    last_of_tie = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1)
    true_positives = np.cumsum(hits)[last_of_tie]
    predicted = last_of_tie + 1
    precision = true_positives / predicted
    recall = true_positives / max(1, int(actual.sum()))
    return precision, recall


def average_precision(targets: Any, scores: Any) -> float:
    """scikit-learn's ``average_precision_score``: the sum over thresholds of (R_n - R_n-1) P_n,
    highest threshold first (R_0 = 0); 0 without a positive image."""
    if not (np.asarray(targets) > 0.5).any():
        return 0.0
    precision, recall = precision_recall_curve(targets, scores)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def multi_label_report(
    targets: Any,
    probabilities: Any,
    label_names: Sequence[str],
    thresholds: Sequence[float] | None = None,
    loss: float | None = None,
    names: Sequence[str] | None = None,
    worst_limit: int = 25,
) -> MultiLabelReport:
    """The report of ``probabilities`` (N, labels) against multi-hot ``targets`` (N, labels).

    ``thresholds``: one a label (None: 0.5 each). ``loss`` is passed in (computed by the caller
    from the logits). The worst images: those whose predicted set is wrong, highest mean binary
    cross-entropy first (confident wrong decisions weigh most), at most ``worst_limit``, each
    named by ``names`` (file names) when given.
    """
    actual, probabilities, limits = _checked_inputs(
        targets, probabilities, label_names, thresholds, names, worst_limit
    )
    decided = MultiLabelTask.decide(probabilities, limits)
    per_label, curves = _per_label_metrics(actual, decided, probabilities, label_names, limits)
    true_positives = int((decided & actual).sum())
    micro = _precision_recall_f1(true_positives, int(decided.sum()), int(actual.sum()))
    macro = {key: float(np.mean([getattr(row, key) for row in per_label])) for key in micro}
    supported = [row.average_precision for row in per_label if row.support]
    wrong_sets = np.flatnonzero((decided != actual).any(axis=1))
    report = MultiLabelReport(
        label_names=list(label_names),
        per_label=per_label,
        count=len(actual),
        map=float(np.mean(supported)) if supported else 0.0,
        micro={**micro, "support": int(actual.sum())},
        macro={**macro, "support": int(actual.sum())},
        exact_match=float(1 - len(wrong_sets) / len(actual)),
        hamming_loss=float((decided != actual).mean()),
        worst=_worst_images(wrong_sets, actual, decided, probabilities, label_names, names, worst_limit),
        wrong_count=len(wrong_sets),
        loss=None if loss is None else float(loss),
        missing_labels=[row.name for row in per_label if row.support == 0],
        never_predicted=[row.name for row in per_label if row.predicted == 0],
        curves=curves,
    )
    report.notes = _notes(report)
    return report


def _checked_inputs(targets, probabilities, label_names, thresholds, names, limit):
    actual = np.asarray(targets)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    shape = (len(actual), len(label_names))
    if len(actual) == 0 or actual.shape != shape or probabilities.shape != shape:
        raise ValueError(
            f"targets and probabilities must be non-empty, of shape (N, {len(label_names)}). Received: "
            f"targets.shape={tuple(actual.shape)}, probabilities.shape={tuple(probabilities.shape)}"
        )
    limits = [DEFAULT_THRESHOLD] * len(label_names) if thresholds is None else list(thresholds)
    if len(limits) != len(label_names):
        raise ValueError(
            f"thresholds needs one a label ({len(label_names)}). Received: {len(limits)} thresholds"
        )
    if names is not None and len(names) != len(actual):
        raise ValueError(
            f"names must name every image. Received: len(names)={len(names)}, {len(actual)} images"
        )
    if limit < 0:
        raise ValueError(f"worst_limit must be >= 0. Received: worst_limit={limit}")
    return actual > 0.5, probabilities, np.asarray(limits, dtype=np.float64)


def _precision_recall_f1(true_positives: int, predicted: int, support: int) -> dict[str, float]:
    """Each 0 where its denominator is (scikit-learn's ``zero_division=0``)."""
    return {
        "precision": true_positives / predicted if predicted else 0.0,
        "recall": true_positives / support if support else 0.0,
        "f1": 2 * true_positives / (predicted + support) if predicted + support else 0.0,
    }


def _per_label_metrics(actual, decided, probabilities, label_names, limits):
    rows, curves = [], []
    for position, name in enumerate(label_names):
        truth, chosen = actual[:, position], decided[:, position]
        figures = _precision_recall_f1(int((truth & chosen).sum()), int(chosen.sum()), int(truth.sum()))
        precision, recall = precision_recall_curve(truth, probabilities[:, position])
        curves.append((np.append(0.0, recall), np.append(1.0, precision)))  # from (0, 1), as sklearn
        rows.append(
            LabelMetrics(
                name=name,
                **figures,
                average_precision=average_precision(truth, probabilities[:, position]),
                support=int(truth.sum()),
                predicted=int(chosen.sum()),
                threshold=float(limits[position]),
            )
        )
    return rows, curves


def _worst_images(wrong_sets, actual, decided, probabilities, label_names, names, limit):
    clipped = np.clip(probabilities[wrong_sets], _CLIP, 1 - _CLIP)
    truth = actual[wrong_sets]
    losses = -np.where(truth, np.log(clipped), np.log1p(-clipped)).mean(axis=1)
    chosen = np.argsort(-losses, kind="stable")[:limit]  # ties in data order
    worst = []
    for position in chosen:
        index = int(wrong_sets[position])
        row = probabilities[index]
        true_labels = [label_names[i] for i in np.flatnonzero(actual[index])]
        predicted = np.flatnonzero(decided[index])
        predicted = predicted[np.argsort(-row[predicted], kind="stable")]
        shown = np.flatnonzero(actual[index] | decided[index])
        worst.append(
            WrongLabelSet(
                index=index,
                true_labels=true_labels,
                predicted_labels=[label_names[i] for i in predicted],
                probabilities={label_names[i]: float(row[i]) for i in shown},
                wrong=int((actual[index] != decided[index]).sum()),
                loss=float(losses[position]),
                name=None if names is None else str(names[index]),
            )
        )
    return worst


def _notes(report: MultiLabelReport) -> list[str]:
    """Plain words for every number that is 0 by convention rather than by measurement."""
    rows = report.per_label
    absent = [row.name for row in rows if row.support == 0]
    unpredicted = [row.name for row in rows if row.predicted == 0 and row.support]
    notes = []
    if absent:
        notes.append(
            f"No image has: {', '.join(absent)} (support 0, recall and AP shown as 0; left out of "
            "mAP, counted in the macro averages)."
        )
    if unpredicted:
        notes.append(f"Never predicted: {', '.join(unpredicted)} (precision shown as 0).")
    return notes


def format_multi_label_table(report: MultiLabelReport, digits: int = 4) -> str:
    """The report as text: a row a label, the micro and macro averages, then the overall figures."""
    headers = ("precision", "recall", "f1-score", "AP", "support", "threshold")
    name_width = max(len("micro avg"), *(len(name) for name in report.label_names))
    column = max(digits + 6, *(len(h) for h in headers))

    def line(name: str, values: Sequence[str]) -> str:
        return (name.rjust(name_width) + "".join(value.rjust(column) for value in values)).rstrip()

    def number(value: float) -> str:
        return f"{value:.{digits}f}"

    lines = [line("", headers), ""]
    for row in report.per_label:
        figures = (row.precision, row.recall, row.f1, row.average_precision)
        lines.append(line(row.name, [*map(number, figures), str(row.support), number(row.threshold)]))
    lines.append("")
    for label, average, ap in (
        ("micro avg", report.micro, ""),
        ("macro avg", report.macro, number(report.map)),
    ):
        figures = [number(average[key]) for key in ("precision", "recall", "f1")]
        lines.append(line(label, [*figures, ap, str(average["support"]), ""]))
    extras = [f"mAP {number(report.map)}", f"exact match {number(report.exact_match)}"]
    extras.append(f"Hamming loss {number(report.hamming_loss)}")
    if report.loss is not None:
        extras.append(f"loss {number(report.loss)}")
    extras.append(f"{report.wrong_count} of {report.count} images with a wrong label set")
    lines += ["", " - ".join(extras)]
    lines += [f"Note: {note}" for note in report.notes]
    return "\n".join(lines)


PER_LABEL_FIELDS = ("label", "precision", "recall", "f1", "average_precision", "support", "threshold")


def write_per_label_csv(path: str | os.PathLike, report: MultiLabelReport) -> None:
    """``label,precision,recall,f1,average_precision,support,threshold``: one row a label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_LABEL_FIELDS)
    for row in report.per_label:
        figures = (row.precision, row.recall, row.f1, row.average_precision)
        writer.writerow(
            [row.name, *(f"{value:.6f}" for value in figures), row.support, f"{row.threshold:.6f}"]
        )
    atomic_write_text(path, buffer.getvalue())


def plot_precision_recall(path: str | os.PathLike, report: MultiLabelReport, title: str = "") -> None:
    """One precision-recall curve a label with a positive image, on one figure, the legend giving
    each label's AP. Over ``LEGEND_LIMIT`` labels, the best and worst by AP are coloured and named
    and the others drawn thin and grey under one legend entry, so that the picture stays legible."""
    if len(report.curves) != len(report.per_label):
        raise ValueError("The report holds no precision-recall curves (a report read back from a dict).")
    plt = _pyplot()
    shown = sorted(
        (position for position, row in enumerate(report.per_label) if row.support),
        key=lambda position: -report.per_label[position].average_precision,
    )
    named = shown
    if len(shown) > LEGEND_LIMIT:
        named = shown[: LEGEND_LIMIT // 2] + shown[-(LEGEND_LIMIT - LEGEND_LIMIT // 2) :]
    figure, axis = plt.subplots(figsize=(7.5, 6), constrained_layout=True)
    others = [position for position in shown if position not in named]
    for count, position in enumerate(others):
        label = f"{len(others)} other labels" if count == 0 else None
        axis.step(*report.curves[position], where="pre", color="0.75", linewidth=0.8, label=label)
    for position in named:  # the default colour cycle's 10 colours: one a named label
        row = report.per_label[position]
        label = f"{_clip(row.name)} (AP {row.average_precision:.3f})"
        axis.step(*report.curves[position], where="pre", linewidth=1.6, label=label)
    axis.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    axis.grid(alpha=0.3)
    if shown:
        axis.legend(loc="lower left", fontsize=8, framealpha=0.85)
    else:
        axis.text(0.5, 0.5, "No label has a positive image", ha="center", va="center")
    heading = title or "Precision-recall a label"
    axis.set_title(f"{heading}: mAP {report.map:.3f} over {len(shown)} labels", fontsize=12)
    _save(figure, path)


def plot_label_set_gallery(
    path: str | os.PathLike,
    images: Any,
    worst: Sequence[WrongLabelSet],
    total: int | None = None,
    title: str = "",
) -> None:
    """A gallery of ``worst`` in the given order, each panel captioned with the true label set,
    the predicted one (with probabilities) and the file name when known.

    ``images`` is indexable by ``WrongLabelSet.index`` and yields uint8 ``(H, W, 3)`` pixels.
    """
    total = len(worst) if total is None else total
    if not worst:
        save_empty_gallery(path, "No image with a wrong label set")
        return
    figure, axes = gallery_figure(len(worst), 2.5, 2.9)
    for axis, image in zip(axes, worst, strict=False):
        axis.imshow(np.asarray(images[image.index]), interpolation="nearest")
        # A no-break space keeps each label with its probability when the line wraps.
        predicted = [f"{name}\u00a0{image.probabilities[name]:.2f}" for name in image.predicted_labels]
        lines = [
            *_wrap("true: " + (", ".join(image.true_labels) or "(none)")),
            *_wrap("pred: " + (", ".join(predicted) or "(none)")),
            _shorten(image.name) if image.name else f"#{image.index}",
        ]
        axis.set_title("\n".join(lines), fontsize=8)
    heading = title or "Worst label sets"
    figure.suptitle(f"{heading}: {len(worst)} of {total}, highest cross-entropy first")
    _save(figure, path)


def _wrap(text: str, width: int = 38, lines: int = 2) -> list[str]:
    # A long label set over two lines at most, its end cut with an ellipsis.
    return textwrap.wrap(text, width, max_lines=lines, placeholder=" …", break_on_hyphens=False)


def _clip(text: str, width: int = 32) -> str:
    # Keep the start: a label list reads from its first, most probable, label.
    return text if len(text) <= width else text[: width - 1] + "…"
