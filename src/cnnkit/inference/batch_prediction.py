"""Predicting many images: classify what paths name (see ``image_paths``) in bounded chunks, and
write the results as a table, JSON or CSV as they come.

A single-label model gives each image its ``top_k`` classes; a multi-label one (issue 21) gives
each image its label set, every label at or above its threshold (the model's, or one ``threshold``
for all), most probable first, maybe none, and every label's probability.

A bad input never stops a run: it becomes an error entry in its place among the results.
With ``explain`` (a checkpoint only), each classified image's Grad-CAM overlay is written to a
folder and its path given in the result's ``explanation`` (see ``inference.explanations``).
Nothing here imports torch: a checkpoint loads it (``load_predictor``), an ONNX model never does.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from cnnkit.inference.decode_ahead import DecodedChunk, decode_workers, decoded_chunks
from cnnkit.inference.explanations import ExplanationWriter, check_explainable_path
from cnnkit.inference.image_inputs import InputItem, PathArgument, expand_inputs
from cnnkit.inference.predictor import Predictor, load_predictor
from cnnkit.inference.tta_level import at_tta, check_tta

FORMATS = ("table", "json", "csv")
# An existing file predictions may replace: a text of results, never a model, image or archive.
RESULT_FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".txt", ".tsv")
CSV_COLUMNS = ("path", "rank", "class", "probability", "error")
# With explanations: the CSV's column (and JSON's field) of each image's overlay file.
EXPLANATION_COLUMN = "explanation"
# A multi-label model's CSV: these, then one column a label holding its probability.
MULTI_LABEL_CSV_COLUMNS = ("path", "labels", "error")
# Between the names of an image's labels in the CSV's "labels" column.
LABEL_SEPARATOR = ";"
# Images decoded and classified at once (see inference.decode_ahead for who decodes them): the
# default network's best on 2 cores (1,560 images/s at TTA 0, 1,510 at 128, 1,330 at 512).
DEFAULT_BATCH_SIZE = 256

__all__ = [
    "InputItem",
    "Prediction",
    "PredictionResult",
    "PredictionSummary",
    "check_threshold",
    "expand_inputs",
    "predict_files",
    "predict_paths",
]


class Prediction(NamedTuple):
    """One ranked class of one image."""

    class_name: str
    probability: float


@dataclass(frozen=True)
class PredictionResult:
    """The top classes of one image, most probable first, or the error that stopped it.

    A multi-label model's result has ``labels`` (those at or above their thresholds, most probable
    first; maybe none) and ``probabilities`` (every label's, in the model's order) instead of
    ``predictions``; both are None for a single-label model.
    """

    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str | None = None
    labels: tuple[Prediction, ...] | None = None
    probabilities: tuple[Prediction, ...] | None = None
    # With a minimum confidence: whether the top class's probability is below it (then the
    # predictions are best guesses, not an answer); None without one.
    uncertain: bool | None = None
    # With explanations (predict --explain): the path of the image's Grad-CAM overlay.
    explanation: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def multi_label(self) -> bool:
        """A multi-label model's result (a label set), not a ranking of classes."""
        return self.probabilities is not None

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "predictions": [{"class", "probability"}, ...]}``, or ``{"path", "error"}``;
        multi-label: ``{"path", "labels": [{"label", "probability"}, ...], "probabilities":
        {label: probability}}``; ``"explanation"`` (the overlay's path) last when there is one."""
        if self.failed:
            return {"path": self.path, "error": self.error}
        explained = {} if self.explanation is None else {EXPLANATION_COLUMN: self.explanation}
        if self.labels is not None and self.probabilities is not None:
            return {
                "path": self.path,
                "labels": [{"label": name, "probability": value} for name, value in self.labels],
                "probabilities": dict(self.probabilities),
                **explained,
            }
        predictions = [{"class": name, "probability": value} for name, value in self.predictions]
        doubt = {} if self.uncertain is None else {"uncertain": self.uncertain}
        return {"path": self.path, **doubt, "predictions": predictions, **explained}


@dataclass
class PredictionSummary:
    """How many results were written, and how many of them are errors."""

    count: int = 0
    failed: int = 0


def predict_paths(
    model: Predictor | PathArgument,
    paths: Iterable[PathArgument] | PathArgument,
    top_k: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    precision: str = "auto",
    threshold: float | None = None,
    min_confidence: float | None = None,
    calibrated: bool = True,
    explain: PathArgument | None = None,
    tta: int | None = None,
    workers: int | None = None,
) -> Iterator[PredictionResult]:
    """The ``top_k`` classes of every image ``paths`` name (see ``expand_inputs``), lazily, in order;
    a multi-label model's label set of each (see ``PredictionResult``).

    Images are read, decoded and classified ``batch_size`` at a time, so memory stays bounded
    however many there are. A path without images, or a file that cannot be read or decoded,
    gives a result with ``error`` set in its place; the others go on.

    Args:
        model: a ``Classifier`` (or any ``Predictor``), or the path of a checkpoint to load onto
            ``device`` or of an ``.onnx`` file (see ``load_predictor``).
        top_k: classes per image, at most the model's class count (single-label models).
        device, precision: used to load a checkpoint (see ``Classifier``); a given model keeps its own.
        threshold: a multi-label model's one threshold for every label, in (0, 1), instead of its
            own (``model.thresholds``; 0.5 each where it has none). Refused for a single-label model.
        min_confidence: single-label: an image whose top probability is below it is ``uncertain``
            (its top classes are then best guesses, not an answer). Refused for a multi-label model.
        calibrated: load a checkpoint with its calibrated probabilities (its temperature), or as
            trained (see ``load_predictor``).
        explain: a folder (made if missing) to write each classified image's Grad-CAM overlay
            into, ``<position>-<stem>.png``, replacing a file of that name; its path is the
            result's ``explanation``. Needs a checkpoint (see ``inference.explanations``).
        tta: the test-time augmentation level (``runtime.constants.TTA_LEVELS``: 0 the plain
            network, one view; 2 six views) instead of the model's own (None); a model given
            is left at its own. An ``.onnx`` model predicts at its exported level only: another
            is refused (see ``inference.tta_level``).
        workers: processes decoding the next chunks while the model classifies (0: decoding in
            this thread, between chunks); None: some when there are many images
            (``inference.decode_ahead.decode_workers``). The results are the same either way.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1. Received: top_k={top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    check_threshold(threshold)
    check_threshold(min_confidence, name="min_confidence")
    check_tta(tta)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(
            f"workers must be an integer >= 0 (0: decode in this thread). Received: workers={workers!r}"
        )
    if explain is not None and isinstance(model, str | os.PathLike):
        check_explainable_path(model)  # before the model loads
    classifier = (
        load_predictor(model, device=device, precision=precision, calibrated=calibrated)
        if isinstance(model, str | os.PathLike)
        else model
    )
    classifier = at_tta(classifier, tta)  # an .onnx model at another level: refused here
    check_threshold(threshold, classifier.task.multi_label)
    check_min_confidence(min_confidence, classifier.task.multi_label)
    # The decision of a multi-label model: the one threshold given, else its own (None: 0.5 each).
    thresholds = threshold if threshold is not None else getattr(classifier, "thresholds", None)
    items = expand_inputs(paths)
    writer = None if explain is None else ExplanationWriter(classifier, explain, len(items))
    top_k = min(top_k, len(classifier.class_names))
    decision = Decision(thresholds, min_confidence)
    workers = decode_workers(len(items)) if workers is None else workers
    return _predict_items(classifier, items, top_k, batch_size, decision, writer, workers)


class Decision(NamedTuple):
    """How results are decided: a multi-label model's thresholds (None: 0.5 each), a single-label
    model's minimum confidence (None: always an answer)."""

    thresholds: Any = None
    min_confidence: float | None = None


def check_min_confidence(min_confidence: Any, multi_label: bool, name: str = "min_confidence") -> None:
    """Refuse a minimum confidence for a multi-label model, which decides by thresholds instead."""
    if min_confidence is not None and multi_label:
        raise ValueError(
            f"{name} is for single-label models; a multi-label model decides by a threshold a label "
            f"(see threshold). Received: {name}={min_confidence!r}"
        )


def check_threshold(threshold: Any, multi_label: bool = True, name: str = "threshold") -> None:
    """Refuse, in one line naming ``name`` and the value, a threshold outside (0, 1) or one given
    for a single-label model (``multi_label`` False). None (the model's own) always passes."""
    if threshold is None:
        return
    key = name.lstrip("-").replace("-", "_")  # --min-confidence: Received: min_confidence=...
    if not (isinstance(threshold, int | float) and not isinstance(threshold, bool)) or not (
        math.isfinite(threshold) and 0 < threshold < 1
    ):
        raise ValueError(
            f"{name} must be a probability between 0 and 1 (both excluded). Received: {key}={threshold!r}"
        )
    if not multi_label:
        raise ValueError(
            f"{name} is for multi-label models; this model is single-label (it predicts its "
            f"most probable classes, see top_k). Received: {key}={threshold!r}"
        )


def _predict_items(
    classifier: Predictor,
    items: list[InputItem],
    top_k: int,
    batch_size: int,
    decision: Decision,
    writer: ExplanationWriter | None = None,
    workers: int = 0,
) -> Iterator[PredictionResult]:
    chunks = decoded_chunks(items, classifier.image_size, classifier.resize_size, batch_size, workers)
    start = 0
    with contextlib.closing(chunks):  # a run stopped early ends the decoding workers
        for chunk in chunks:
            yield from _classify_chunk(classifier, chunk, top_k, batch_size, decision, writer, start)
            start += len(chunk.items)


def _classify_chunk(
    classifier: Predictor,
    chunk: DecodedChunk,
    top_k: int,
    batch_size: int,
    decision: Decision,
    writer: ExplanationWriter | None = None,
    start: int = 0,
) -> Iterator[PredictionResult]:
    """The chunk's results in order; with a ``writer``, each classified image's overlay written
    (``start``: the chunk's place among all the results, which names the overlays)."""
    outcomes: Iterator[dict[str, Any]] = iter(())
    explanations: Iterator[str | None] = itertools.repeat(None)
    if len(chunk.images):
        probabilities = classifier.predict(chunk.images, batch_size)
        outcomes = iter(_outcomes(classifier, probabilities, top_k, decision))
        if writer is not None:
            kept = [offset for offset in range(len(chunk.items)) if offset not in chunk.errors]
            places, paths = (
                [start + 1 + offset for offset in kept],
                [chunk.items[offset].path for offset in kept],
            )
            explanations = iter(writer.write(places, paths, chunk.images, probabilities))
    for offset, item in enumerate(chunk.items):
        error = chunk.errors.get(offset)
        if error is not None:
            yield PredictionResult(item.path, error=error)
        else:
            yield PredictionResult(item.path, **next(outcomes), explanation=next(explanations))


def _outcomes(
    classifier: Predictor, probabilities: np.ndarray, top_k: int, decision: Decision
) -> list[dict[str, Any]]:
    """Each image's ``PredictionResult`` fields: its ``top_k`` classes (and whether it is
    ``uncertain``), or (multi-label) its label set at the thresholds and every label's probability.
    Probabilities are rounded to 6 places after the decision, which takes them as given."""
    names = classifier.class_names
    if classifier.task.multi_label:
        sets = classifier.task.label_sets(probabilities, names, decision.thresholds)
        return [
            {
                "labels": tuple(Prediction(name, round(value, 6)) for name, value in chosen),
                "probabilities": tuple(
                    Prediction(name, round(value, 6)) for name, value in zip(names, row, strict=True)
                ),
            }
            for chosen, row in zip(sets, probabilities.astype(np.float64).tolist(), strict=True)
        ]
    # The task ranks them (single-label: most probable first; of equals, the first class).
    indices, values = classifier.task.top_k(probabilities, top_k)
    uncertain = classifier.task.uncertain(probabilities, decision.min_confidence)
    return [
        {
            "predictions": tuple(
                Prediction(names[index], round(value, 6)) for value, index in zip(row, order, strict=True)
            ),
            "uncertain": doubt,
        }
        for row, order, doubt in zip(values.tolist(), indices.tolist(), uncertain, strict=True)
    ]


def predict_files(
    checkpoint_path: PathArgument,
    paths: Iterable[PathArgument] | PathArgument,
    top_k: int = 5,
    device: str = "auto",
    precision: str = "auto",
    threshold: float | None = None,
    tta: int | None = None,
) -> list[dict[str, Any]]:
    """Top-k classes and probabilities of every image ``paths`` name (see ``expand_inputs``), with
    the checkpoint or ``.onnx`` model at ``checkpoint_path``.

    Returns one ``{"path", "predictions": [{"class", "probability"}]}`` per image (multi-label:
    ``{"path", "labels", "probabilities"}``, see ``PredictionResult.to_dict``; ``threshold`` and
    ``tta`` as in ``predict_paths``), or ``{"path", "error"}`` for an input that yields no decodable image
    (instead of raising).
    """
    results = predict_paths(
        checkpoint_path, paths, top_k, device=device, precision=precision, threshold=threshold, tta=tta
    )
    return [result.to_dict() for result in results]
