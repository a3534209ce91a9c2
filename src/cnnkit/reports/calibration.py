"""How far a model's probabilities can be believed: expected calibration error, negative
log-likelihood and Brier score, and the reliability diagram (numpy and matplotlib only).

Single-label: an image's confidence is its top probability, right when that class is its label
(Guo et al., ICML 2017: 15 equal-width bins). Multi-label: every (image, label) probability is a
yes/no forecast, right when the image has the label.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

ECE_BINS = 15


def _forecasts(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidences, outcomes in 0/1) of the forecasts the calibration figures are about."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if labels.ndim == 2:  # multi-label: each label of each image a forecast
        return probabilities.ravel(), (labels > 0.5).ravel().astype(np.float64)
    predicted = probabilities.argmax(1)
    return probabilities.max(1), (predicted == labels).astype(np.float64)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Per equal-width confidence bin: ``count``, mean ``confidence`` and ``accuracy`` (None where empty)."""
    confidences, outcomes = _forecasts(probabilities, labels)
    # A confidence of exactly 1 belongs to the last bin, as in Guo et al.'s code.
    index = np.minimum((confidences * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    confidence_sums = np.bincount(index, weights=confidences, minlength=bins)
    outcome_sums = np.bincount(index, weights=outcomes, minlength=bins)
    present = counts > 0
    return {
        "count": counts.tolist(),
        "confidence": [
            float(value) if ok else None
            for value, ok in zip(confidence_sums / np.maximum(counts, 1), present, strict=True)
        ],
        "accuracy": [
            float(value) if ok else None
            for value, ok in zip(outcome_sums / np.maximum(counts, 1), present, strict=True)
        ],
    }


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """The bins' |accuracy - confidence|, weighted by their share of the forecasts."""
    table = reliability_bins(probabilities, labels, bins)
    total = sum(table["count"])
    gaps = [
        count * abs(accuracy - confidence)
        for count, accuracy, confidence in zip(
            table["count"], table["accuracy"], table["confidence"], strict=True
        )
        if count
    ]
    return float(sum(gaps) / total) if total else 0.0


def calibration_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{"ece", "nll", "brier"}``: the expected calibration error (15 bins), the mean negative
    log-likelihood of the labels, and the Brier score (single-label: the squared distance to the
    one-hot label summed over classes, averaged over images; multi-label: the mean over labels)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    if labels.ndim == 2:
        targets = (labels > 0.5).astype(np.float64)
        nll = float(-(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped)).mean(1).mean())
        brier = float(((probabilities - targets) ** 2).mean())
    else:
        rows = np.arange(len(labels))
        nll = float(-np.log(clipped[rows, labels]).mean())
        targets = np.zeros_like(probabilities)
        targets[rows, labels] = 1
        brier = float(((probabilities - targets) ** 2).sum(1).mean())
    return {"ece": expected_calibration_error(probabilities, labels), "nll": nll, "brier": brier}


def plot_reliability(path: str | os.PathLike, curves: dict[str, dict[str, Any]], title: str = "") -> None:
    """The reliability diagram: accuracy against confidence a bin, one line a curve (e.g. "as
    trained" and "calibrated", each ``reliability_bins`` plus its ``ece``), the diagonal perfect."""
    from cnnkit.reports.evaluation_plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, curve in curves.items():
        points = [
            (c, a) for c, a in zip(curve["confidence"], curve["accuracy"], strict=True) if c is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, "o-", label=f"{name} (ECE {curve['ece']:.4f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    axis.set_title(title or f"Reliability ({ECE_BINS} bins)")
    _save(figure, path)


def calibration_report(
    labels: np.ndarray,
    probabilities: np.ndarray,
    uncalibrated: np.ndarray | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    """An evaluation's calibration section: ``temperature`` (None: the model has none) and, for
    the probabilities as trained (``uncalibrated``, when the model has a temperature) and those it
    gives (``probabilities``), the ``calibration_metrics`` and ``reliability_bins``."""
    curves = {"as_trained": probabilities} if uncalibrated is None else {"as_trained": uncalibrated}
    if uncalibrated is not None:
        curves["calibrated"] = probabilities
    section: dict[str, Any] = {"temperature": temperature, "bins": ECE_BINS}
    for name, values in curves.items():
        section[name] = {
            **calibration_metrics(values, labels),
            "reliability": reliability_bins(values, labels),
        }
    return section


def describe_calibration_report(section: dict[str, Any]) -> str:
    """One line: the expected calibration error, NLL and Brier score, before and after scaling."""
    trained = section["as_trained"]
    if "calibrated" not in section:
        return (
            f"Calibration (no temperature): ECE {trained['ece']:.4f} - NLL {trained['nll']:.4f} - "
            f"Brier {trained['brier']:.4f}"
        )
    calibrated = section["calibrated"]
    return (
        f"Calibration (temperature {section['temperature']:.3f}"
        + (", then a confidence map" if section.get("confidence_map") else "")
        + f"): ECE {trained['ece']:.4f} -> "
        f"{calibrated['ece']:.4f} - NLL {trained['nll']:.4f} -> {calibrated['nll']:.4f} - Brier "
        f"{trained['brier']:.4f} -> {calibrated['brier']:.4f} (as trained -> calibrated)"
    )


def plot_calibration_report(path: str | os.PathLike, section: dict[str, Any]) -> None:
    """``plot_reliability`` of an evaluation's calibration section."""
    curves = {
        name.replace("_", " "): {**section[name]["reliability"], "ece": section[name]["ece"]}
        for name in ("as_trained", "calibrated")
        if name in section
    }
    plot_reliability(path, curves)
