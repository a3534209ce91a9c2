"""Predicting many images: classify what paths name (see ``image_paths``) in bounded chunks, and
write the results as a table, JSON or CSV as they come.

A bad input never stops a run: it becomes an error entry in its place among the results.
Nothing here imports torch: a checkpoint loads it (``load_predictor``), an ONNX model never does.
"""

from __future__ import annotations

import csv
import io
import os
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TextIO

import numpy as np

from cnnkit.data.bounded_read import READ_ERRORS, describe_read_error
from cnnkit.data.decode import decode_image
from cnnkit.fileio import atomic_open, json_text
from cnnkit.inference.image_inputs import InputItem, ItemReader, PathArgument, expand_inputs
from cnnkit.inference.predictor import Predictor, load_predictor
from cnnkit.runs.outputs import check_output_file

FORMATS = ("table", "json", "csv")
# An existing file predictions may replace: a text of results, never a model, image or archive.
RESULT_FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".txt", ".tsv")
CSV_COLUMNS = ("path", "rank", "class", "probability", "error")
# Images decoded and held at once. Decoding runs in this thread: on 2 busy cores a pool of 2-4
# threads or 2 processes decoded no faster (tiny PNGs, 500x375 JPEGs and PNGs), and the model
# costs 0.5-10 ms an image against 0.1-5 ms to decode, so a pool would mostly add contention.
DEFAULT_BATCH_SIZE = 256

__all__ = [
    "InputItem",
    "Prediction",
    "PredictionResult",
    "PredictionSummary",
    "check_output_path",
    "expand_inputs",
    "format_predictions",
    "predict_files",
    "predict_paths",
    "write_predictions",
    "write_predictions_file",
]


class Prediction(NamedTuple):
    """One ranked class of one image."""

    class_name: str
    probability: float


@dataclass(frozen=True)
class PredictionResult:
    """The top classes of one image, most probable first, or the error that stopped it."""

    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "predictions": [{"class", "probability"}, ...]}``, or ``{"path", "error"}``."""
        if self.failed:
            return {"path": self.path, "error": self.error}
        predictions = [{"class": name, "probability": value} for name, value in self.predictions]
        return {"path": self.path, "predictions": predictions}


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
) -> Iterator[PredictionResult]:
    """The ``top_k`` classes of every image ``paths`` name (see ``expand_inputs``), lazily, in order.

    Images are read, decoded and classified ``batch_size`` at a time, so memory stays bounded
    however many there are. A path without images, or a file that cannot be read or decoded,
    gives a result with ``error`` set in its place; the others go on.

    Args:
        model: a ``Classifier`` (or any ``Predictor``), or the path of a checkpoint to load onto
            ``device`` or of an ``.onnx`` file (see ``load_predictor``).
        top_k: classes per image, at most the model's class count.
        device, precision: used to load a checkpoint (see ``Classifier``); a given model keeps its own.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1. Received: top_k={top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    classifier = (
        load_predictor(model, device=device, precision=precision)
        if isinstance(model, str | os.PathLike)
        else model
    )
    items = expand_inputs(paths)
    return _predict_items(classifier, items, min(top_k, len(classifier.class_names)), batch_size)


def _predict_items(
    classifier: Predictor, items: list[InputItem], top_k: int, batch_size: int
) -> Iterator[PredictionResult]:
    with ItemReader() as reader:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            images = [_decode_item(item, classifier, reader) for item in chunk]
            yield from _classify_chunk(classifier, chunk, images, top_k, batch_size)


def _classify_chunk(
    classifier: Predictor,
    chunk: list[InputItem],
    images: list[np.ndarray | str],
    top_k: int,
    batch_size: int,
) -> Iterator[PredictionResult]:
    decoded = [image for image in images if not isinstance(image, str)]
    ranked: Iterator[tuple[list[float], list[int]]] = iter(())
    if decoded:
        probabilities = classifier.predict(np.stack(decoded), batch_size)
        # The task ranks them (single-label: most probable first; of equals, the first class).
        indices, values = classifier.task.top_k(probabilities, top_k)
        ranked = zip(values.tolist(), indices.tolist(), strict=True)
    for item, image in zip(chunk, images, strict=True):
        if isinstance(image, str):
            yield PredictionResult(item.path, error=image)
            continue
        values, indices = next(ranked)
        predictions = tuple(
            Prediction(classifier.class_names[index], round(value, 6))
            for value, index in zip(values, indices, strict=True)
        )
        yield PredictionResult(item.path, predictions)


def _decode_item(item: InputItem, classifier: Predictor, reader: ItemReader) -> np.ndarray | str:
    """The decoded image, or the one-line reason there is none."""
    if item.error is not None:
        return item.error
    try:
        data = reader.read(item)
    except READ_ERRORS as error:  # damaged, encrypted, too large: this image's error, not the run's
        return describe_read_error(error)
    try:
        return decode_image(data, classifier.image_size, item.path, classifier.resize_size)
    except ValueError as error:  # decode_image's DataError, naming the file
        return str(error)
    except Exception as error:
        # Pillow's rarer format plugins raise other types on corrupt files: one bad image among
        # thousands must not end the run.
        return f"Cannot decode {item.path} as an image ({type(error).__name__}: {error})"


def predict_files(
    checkpoint_path: PathArgument,
    paths: Iterable[PathArgument] | PathArgument,
    top_k: int = 5,
    device: str = "auto",
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """Top-k classes and probabilities of every image ``paths`` name (see ``expand_inputs``), with
    the checkpoint or ``.onnx`` model at ``checkpoint_path``.

    Returns one ``{"path", "predictions": [{"class", "probability"}]}`` per image, or
    ``{"path", "error"}`` for an input that yields no decodable image (instead of raising).
    """
    results = predict_paths(checkpoint_path, paths, top_k, device=device, precision=precision)
    return [result.to_dict() for result in results]


def write_predictions(
    results: Iterable[PredictionResult], file: TextIO, format: str = "table"
) -> PredictionSummary:
    """Write ``results`` to ``file`` as each comes, in ``format``, and count them.

    ``table``: ``path: class probability, ...`` a line, ``path: error: message`` for an error.
    ``json``: a list of ``PredictionResult.to_dict()`` (the same text as ``json.dumps(indent=2)``).
    ``csv``: columns ``path, rank, class, probability, error``; a row per (image, rank), or one
    row with only the path and error.
    """
    writers = {"table": _write_table, "json": _write_json, "csv": _write_csv}
    if format not in writers:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}. Received: format={format!r}")
    summary = PredictionSummary()
    writers[format](_counted(results, summary), file)
    return summary


def format_predictions(results: Iterable[PredictionResult], format: str = "table") -> str:
    """``results`` as text in ``format`` (see ``write_predictions``)."""
    buffer = io.StringIO()
    write_predictions(results, buffer, format)
    return buffer.getvalue()


def check_output_path(
    output: PathArgument, model: PathArgument, inputs: Iterable[PathArgument] = (), force: bool = False
) -> None:
    """Refuse, in one line, an ``output`` that would replace the model, an input, or another file.

    Only a file of results (``RESULT_FILE_SUFFIXES``) is replaced: a run's second ``--output
    predictions.csv`` overwrites its first, but never ``best.pt``, ``cat.jpg`` or a file a run
    folder holds (its ``report.json``, ``metrics.csv``: see ``runs.outputs.check_output_file``).
    ``force`` replaces those all the same; never the model or an input, which are being read.
    """
    target = os.path.realpath(output)
    protected = {os.path.realpath(model): "the model"}
    for path in inputs:
        protected.setdefault(os.path.realpath(_input_file(path)), "an input")
    if target in protected:
        raise ValueError(
            f"--output would overwrite {protected[target]}. Received: output={os.fspath(output)!r}"
        )
    if os.path.isdir(target):
        raise ValueError(f"--output names a folder; give a file. Received: output={os.fspath(output)!r}")
    check_output_file(output, force)
    if not force and os.path.exists(target) and not target.lower().endswith(RESULT_FILE_SUFFIXES):
        raise ValueError(
            f"{os.fspath(output)} exists and is not a results file ({', '.join(RESULT_FILE_SUFFIXES)}): "
            "cnnkit predict will not replace it; choose another --output, or pass --force to replace it"
        )


def _input_file(path: PathArgument) -> str:
    """The file an input argument reads: the archive of ``archive.zip/member.jpg``, else itself."""
    text = os.fspath(path)
    end = text.lower().find(".zip/") + len(".zip")
    return text[:end] if end >= len(".zip") and not os.path.exists(text) else text


def write_predictions_file(
    path: PathArgument, results: Iterable[PredictionResult], format: str = "table"
) -> PredictionSummary:
    """Write ``results`` to ``path`` atomically: an interrupted run leaves no partial file."""
    with atomic_open(path, "w") as file:
        return write_predictions(results, file, format)


def _counted(results: Iterable[PredictionResult], summary: PredictionSummary) -> Iterator[PredictionResult]:
    for result in results:
        summary.count += 1
        summary.failed += result.failed
        yield result


def _write_table(results: Iterable[PredictionResult], file: TextIO) -> None:
    for result in results:
        if result.failed:
            file.write(f"{result.path}: error: {result.error}\n")
        else:
            ranked = ", ".join(f"{name} {value:.3f}" for name, value in result.predictions)
            file.write(f"{result.path}: {ranked}\n")


def _write_json(results: Iterable[PredictionResult], file: TextIO) -> None:
    # Item by item, so that a long run's results appear (and leave memory) as they come.
    opening = "[\n"
    for result in results:
        file.write(opening + textwrap.indent(json_text(result.to_dict(), indent=2), "  "))
        opening = ",\n"
    file.write("[]\n" if opening == "[\n" else "\n]\n")


def _write_csv(results: Iterable[PredictionResult], file: TextIO) -> None:
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in results:
        if result.failed:
            writer.writerow([result.path, "", "", "", result.error])
            continue
        writer.writerows(
            [result.path, rank, name, value, ""] for rank, (name, value) in enumerate(result.predictions, 1)
        )
