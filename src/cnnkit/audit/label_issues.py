"""Suspected label errors and outliers from out-of-sample probabilities: confident learning.

Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels"
(JAIR 2021). ``find_label_issues`` follows cleanlab 2.9's ``filter.find_label_issues`` step for
step (its rounding and tie-breaking included) for the filters "low_self_confidence" (cnnkit's
default; less the images whose given label is still the most probable), "prune_by_noise_rate"
(cleanlab's default) and "both", and is tested against it. It
is our own code so that cnnkit (MIT) needs no cleanlab at run time: earlier cleanlab releases are
AGPL-3.0 (2.9.0 ships as Apache-2.0) and it brings pandas and scikit-learn; it is a test
dependency only. The probabilities must be out of sample
(cross-validated, or from a model that never trained on the images): in-sample ones are
confidently right about their own mistakes. Torch-free: NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# cleanlab's constants: the fuzz of its comparisons and the floor of a class threshold.
_FUZZ = 1e-6
_THRESHOLD_FLOOR = 2e-6
_ABSENT_CLASS_THRESHOLD = 2.0  # above any probability: nothing is counted into an absent class


@dataclass
class LabelIssue:
    """One image whose given label looks wrong."""

    index: int
    given_label: int
    suggested_label: int  # the most probable class
    self_confidence: float  # probability of the given label: lower is more suspect

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "given_label": self.given_label,
            "suggested_label": self.suggested_label,
            "self_confidence": self.self_confidence,
        }


@dataclass
class LabelIssues:
    """What ``find_label_issues`` found.

    ``issues``: the flagged images, lowest self-confidence first. ``self_confidence``: every
    image's probability of its given label (N,), the ranking score (lower = more suspect).
    ``suggested_labels``: every image's most probable class (N,). ``thresholds``: each class's
    mean probability over the images labelled with it (K,). ``confident_joint``: the calibrated
    confident joint (K, K), rows the given labels, columns the suggested ones; its off-diagonal
    cells are how many images of each confusion were flagged (before the last step drops those
    whose most probable class is their given one).
    """

    issues: list[LabelIssue]
    self_confidence: np.ndarray
    suggested_labels: np.ndarray
    thresholds: np.ndarray
    confident_joint: np.ndarray
    filter_by: str = "low_self_confidence"

    @property
    def indices(self) -> np.ndarray:
        """The flagged images' indices, most suspect first."""
        return np.array([issue.index for issue in self.issues], dtype=np.int64)

    def to_dict(self, scores: bool = True) -> dict[str, Any]:
        """JSON-ready; ``scores=False`` leaves out the two per-image arrays."""
        result: dict[str, Any] = {
            "method": f"confident learning, {self.filter_by}, ranked by self-confidence",
            "count": len(self.issues),
            "issues": [issue.to_dict() for issue in self.issues],
            "thresholds": self.thresholds.tolist(),
            "confident_joint": self.confident_joint.tolist(),
        }
        if scores:
            result["self_confidence"] = self.self_confidence.tolist()
            result["suggested_labels"] = self.suggested_labels.tolist()
        return result


@dataclass
class OutlierRanking:
    """Every image ranked by how little any class claims it.

    ``scores`` (N,): 1 - the normalised entropy of the threshold-adjusted probabilities, in
    [0, 1]; 0 means every class is equally (un)likely. ``indices``: all images, lowest score first.
    """

    indices: np.ndarray
    scores: np.ndarray
    method: str = "entropy of threshold-adjusted probabilities (cleanlab OutOfDistribution default)"

    def top(self, count: int) -> np.ndarray:
        """The ``count`` most outlying images."""
        return self.indices[:count]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "indices": self.indices.tolist(), "scores": self.scores.tolist()}


def _checked(labels: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels (N,) and float probabilities (N, K), or a one-line ``ValueError``."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, classes >= 2). Received: shape={probabilities.shape}")
    if labels.ndim != 1 or len(labels) != len(probabilities) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be N={len(probabilities)} class indices (single-label). "
            f"Received: dtype={labels.dtype}, shape={labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        raise ValueError(f"labels must lie in 0..{probabilities.shape[1] - 1}")
    if (
        not np.isfinite(probabilities).all()
        or probabilities.min(initial=0) < 0
        or probabilities.max(initial=0) > 1
    ):
        raise ValueError("probabilities must be finite and between 0 and 1")
    return labels.astype(np.int64), probabilities


def confident_thresholds(labels: Any, probabilities: Any) -> np.ndarray:
    """Each class's threshold t_j: the mean of p_j over the images labelled j (K,).

    A class nobody is labelled with gets 2, above any probability.
    """
    labels, probabilities = _checked(labels, probabilities)
    # np.mean a class, as cleanlab: the same sums to the last bit, so the same images pass.
    thresholds = [
        probabilities[labels == k, k].mean() if np.any(labels == k) else _ABSENT_CLASS_THRESHOLD
        for k in range(probabilities.shape[1])
    ]
    return np.maximum(np.array(thresholds, dtype=np.float64), _THRESHOLD_FLOOR)


def _round_preserving_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers keeping the rounded total: cleanlab's rule, ties broken as it does."""
    rounded = values.round()
    target = np.sum(values).round()
    while abs(np.sum(rounded).round() - target) > _FUZZ:
        missing = np.round(target - np.sum(rounded).round())
        step = -1 if missing < 0 else 1
        changes = min(int(abs(missing)), len(values))
        # Those rounded furthest the other way move first (argsort's default kind, as cleanlab).
        rounded[np.argsort(values - rounded)[::-step][:changes]] += step
    return rounded.astype(np.int64)


def _round_rows(matrix: np.ndarray) -> np.ndarray:
    return np.stack([_round_preserving_sum(row) for row in matrix])


def _confident_guesses(probabilities: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's confident guess of its true class and whether any class reached its threshold.

    An image counts for class j when p_j >= t_j (the largest such p_j when several do).
    """
    above = probabilities >= thresholds - _FUZZ
    reached = above.sum(axis=1)
    guess = np.where(reached > 1, probabilities.argmax(axis=1), above.argmax(axis=1))
    return guess, reached > 0


def _given_label_wins(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """cleanlab's ``_reduce_issues``: the given label, nudged by the fuzz, is still the most probable."""
    nudged = probabilities.copy()
    nudged[np.arange(len(labels)), labels] += _FUZZ
    return nudged.argmax(axis=1) == labels


def estimated_error_count(labels: Any, probabilities: Any) -> int:
    """How many labels are wrong, by the confident joint before calibration (cleanlab's
    ``num_label_issues``, ``estimation_method="off_diagonal"``): the images whose confident guess
    differs from their given label, less those whose given label is still the most probable."""
    labels, probabilities = _checked(labels, probabilities)
    guess, counted = _confident_guesses(probabilities, confident_thresholds(labels, probabilities))
    off_diagonal = counted & (guess != labels)
    return int(np.count_nonzero(off_diagonal & ~_given_label_wins(labels, probabilities)))


def confident_joint(labels: Any, probabilities: Any, thresholds: np.ndarray | None = None) -> np.ndarray:
    """The calibrated confident joint C (K, K): C[i, j] ~ images labelled i that are really j.

    An image counts for class j when p_j >= t_j (the largest such p_j when several are); images
    no class reaches count nowhere. The counts are then calibrated so that row i sums to the
    number of images labelled i and the whole to N, and rounded keeping the row totals.
    """
    labels, probabilities = _checked(labels, probabilities)
    classes = probabilities.shape[1]
    if thresholds is None:
        thresholds = confident_thresholds(labels, probabilities)
    guess, counted = _confident_guesses(probabilities, thresholds)
    joint = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))  # every class keeps one right label
    label_counts = np.bincount(labels, minlength=classes)
    # cleanlab holds this matrix transposed in memory and np.sum adds in memory order; only the
    # same sum, to the last bit, makes rows with two equal halves (18.48, 354.48) round alike.
    scaled = np.ascontiguousarray(joint.T) / np.maximum(joint.sum(axis=1), 1e-100) * label_counts
    scaled = scaled / max(np.sum(scaled), 1e-100) * label_counts.sum()
    return _round_rows(scaled.T)


def _prune_counts(joint: np.ndarray) -> np.ndarray:
    """How many images to flag a cell, C transposed (cleanlab's ``_keep_at_least_n_per_class``, n=1).

    A class whose diagonal fell below 1 takes it back from its other cells, evenly; then the
    counts are truncated to integers (cleanlab's ``astype(int)``, not rounded).
    """
    counts = joint.T.astype(np.float64)
    diagonal = counts.diagonal()
    raised = np.maximum(diagonal, 1)
    cells = np.maximum(np.count_nonzero(counts, axis=0) - 1.0, 1.0)
    counts = counts - (raised - diagonal) / cells
    counts[counts < 0] = 0
    np.fill_diagonal(counts, raised)
    return counts.astype(np.int64)


def _flag_by_noise_rate(labels: np.ndarray, probabilities: np.ndarray, prune: np.ndarray) -> np.ndarray:
    """For each cell (labelled i, really j), flag the prune[j, i] images labelled i of largest p_j - p_i."""
    flagged = np.zeros(len(labels), dtype=bool)
    for given in range(probabilities.shape[1]):
        members = np.flatnonzero(labels == given)
        if len(members) <= 1:  # cleanlab leaves a class of one alone
            continue
        mine = probabilities[members]
        for suggested in range(probabilities.shape[1]):
            count = prune[suggested, given]
            if suggested != given and count > 0:
                margin = mine[:, suggested] - mine[:, given]
                flagged[members[np.argsort(-margin)[:count]]] = True
    return flagged


# "low_self_confidence": the estimated number of errors, taken from the lowest self-confidence
# up. On benchmarks/audit.py (1,000 of 10,000 CIFAR-10 labels flipped, 4-fold probabilities from
# 79 %-accurate models) it flagged with precision 0.786 / recall 0.817, against 0.629 / 0.825 for
# "both" and 0.525 / 0.849 for "prune_by_noise_rate": the calibrated joint those two prune by
# over-estimated the errors (1,734) where the uncalibrated count came close (1,059).
FILTERS = ("low_self_confidence", "prune_by_noise_rate", "both")


def _flag_by_class(labels: np.ndarray, probabilities: np.ndarray, prune: np.ndarray) -> np.ndarray:
    """For each class i, flag the images labelled i of lowest p_i, as many as the cells of row i
    estimate are wrong (cleanlab's "prune_by_class")."""
    flagged = np.zeros(len(labels), dtype=bool)
    for given in range(probabilities.shape[1]):
        members = np.flatnonzero(labels == given)
        count = int(prune[:, given].sum() - prune[given, given])
        if len(members) > 1 and count > 0:
            flagged[members[np.argsort(probabilities[members, given], kind="stable")[:count]]] = True
    return flagged


def find_label_issues(labels: Any, probabilities: Any, filter_by: str = "low_self_confidence") -> LabelIssues:
    """Images whose given label is likely wrong, most suspect first (confident learning).

    ``labels``: class indices (N,); ``probabilities``: out-of-sample predicted probabilities
    (N, K). "low_self_confidence" (default) flags as many images as the confident joint counts
    wrong (``estimated_error_count``), those of lowest self-confidence (p of the given label).
    The other filters prune by the calibrated confident joint, which estimates how many images
    labelled i are really j: for each such cell that many images labelled i with the largest
    p_j - p_i are flagged ("prune_by_noise_rate"); "both" keeps only those also among the images
    of lowest p_i of their class ("prune_by_class"). No filter flags an image whose most probable
    class is its given label. Flagged images are ranked by self-confidence, lowest first.
    """
    if filter_by not in FILTERS:
        raise ValueError(f"filter_by must be one of {', '.join(FILTERS)}. Received: filter_by={filter_by!r}")
    labels, probabilities = _checked(labels, probabilities)
    thresholds = confident_thresholds(labels, probabilities)
    joint = confident_joint(labels, probabilities, thresholds)
    rows = np.arange(len(labels))
    self_confidence = probabilities[rows, labels]
    if filter_by == "low_self_confidence":
        flagged = np.zeros(len(labels), dtype=bool)
        # np.argsort's default kind, as cleanlab: ties among equal scores fall alike.
        flagged[np.argsort(self_confidence)[: estimated_error_count(labels, probabilities)]] = True
    else:
        prune = _prune_counts(joint)
        flagged = _flag_by_noise_rate(labels, probabilities, prune)
        if filter_by == "both":
            flagged &= _flag_by_class(labels, probabilities, prune)
    # cleanlab's last step (which its low_self_confidence skips): a label that is still the most
    # probable is not suspected; a list a user reviews should never suggest the label it holds.
    flagged &= ~_given_label_wins(labels, probabilities)
    suggested = probabilities.argmax(axis=1)
    ranked = np.flatnonzero(flagged)
    ranked = ranked[np.argsort(self_confidence[ranked], kind="stable")]
    issues = [
        LabelIssue(int(index), int(labels[index]), int(suggested[index]), float(self_confidence[index]))
        for index in ranked
    ]
    return LabelIssues(issues, self_confidence, suggested, thresholds, joint, filter_by)


def find_outliers(probabilities: Any, labels: Any) -> OutlierRanking:
    """Every image ranked by how little any class claims it, most outlying first.

    cleanlab's default out-of-distribution score from probabilities (``OutOfDistribution``,
    method "entropy", ``adjust_pred_probs=True``): subtract each class's threshold t_j (so a class
    the model is always sure of does not mask the rest), shift by the largest threshold and
    renormalise, then score 1 - normalised entropy. A confident image scores near 1; one spread
    evenly over every class scores 0.
    """
    labels, probabilities = _checked(labels, probabilities)
    thresholds = confident_thresholds(labels, probabilities)
    adjusted = probabilities - thresholds + thresholds.max()
    adjusted /= adjusted.sum(axis=1, keepdims=True)
    logs = np.log(np.where(adjusted > 0, adjusted, 1.0))
    entropy = -(adjusted * logs).sum(axis=1) / np.log(probabilities.shape[1])
    scores = 1.0 - entropy
    return OutlierRanking(indices=np.argsort(scores, kind="stable"), scores=scores)
