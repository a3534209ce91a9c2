"""Prediction results written out: a table, JSON or CSV (a column a label for a multi-label model),
to the console or atomically to a file that replaces nothing of the user's (``check_output_path``).

``batch_prediction`` makes the results; this module only renders them. Torch-free.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from typing import TextIO

from cnnkit.fileio import atomic_open, json_text
from cnnkit.inference.batch_prediction import (
    CSV_COLUMNS,
    EXPLANATION_COLUMN,
    FORMATS,
    LABEL_SEPARATOR,
    MULTI_LABEL_CSV_COLUMNS,
    RESULT_FILE_SUFFIXES,
    PredictionResult,
    PredictionSummary,
)
from cnnkit.inference.image_inputs import PathArgument
from cnnkit.runs.outputs import check_output_file


def write_predictions(
    results: Iterable[PredictionResult],
    file: TextIO,
    format: str = "table",
    label_names: Sequence[str] | None = None,
) -> PredictionSummary:
    """Write ``results`` to ``file`` as each comes, in ``format``, and count them.

    ``table``: ``path: class probability, ...`` a line, ``path: error: message`` for an error;
    multi-label: ``path: label (0.930), label (0.710)``, or ``path: (no labels)``.
    ``json``: a list of ``PredictionResult.to_dict()`` (the same text as ``json.dumps(indent=2)``).
    ``csv``: columns ``path, rank, class, probability, error``; a row per (image, rank), or one
    row with only the path and error. Multi-label: columns ``path, labels`` (the label set joined
    by ``;``), ``error``, then one a label holding its probability; a row an image.
    Results with an ``explanation`` (``predict_paths(explain=...)``) add its path: after the
    table's line, a JSON field, an ``explanation`` CSV column (after ``error``, multi-label; last,
    single-label).
    ``label_names``: a multi-label model's labels, the CSV's columns even when every image fails
    (default: those of the first multi-label result).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}. Received: format={format!r}")
    summary = PredictionSummary()
    counted = _counted(results, summary)
    if format == "csv":
        _write_csv(counted, file, label_names)
    else:
        {"table": _write_table, "json": _write_json}[format](counted, file)
    return summary


def format_predictions(
    results: Iterable[PredictionResult], format: str = "table", label_names: Sequence[str] | None = None
) -> str:
    """``results`` as text in ``format`` (see ``write_predictions``)."""
    buffer = io.StringIO()
    write_predictions(results, buffer, format, label_names)
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
    path: PathArgument,
    results: Iterable[PredictionResult],
    format: str = "table",
    label_names: Sequence[str] | None = None,
) -> PredictionSummary:
    """Write ``results`` to ``path`` atomically: an interrupted run leaves no partial file."""
    with atomic_open(path, "w") as file:
        return write_predictions(results, file, format, label_names)


def _counted(results: Iterable[PredictionResult], summary: PredictionSummary) -> Iterator[PredictionResult]:
    for result in results:
        summary.count += 1
        summary.failed += result.failed
        yield result


def _write_table(results: Iterable[PredictionResult], file: TextIO) -> None:
    for result in results:
        explained = "" if result.explanation is None else f" | explanation: {result.explanation}"
        if result.failed:
            file.write(f"{result.path}: error: {result.error}\n")
        elif result.labels is not None:
            chosen = ", ".join(f"{name} ({value:.3f})" for name, value in result.labels)
            file.write(f"{result.path}: {chosen or '(no labels)'}{explained}\n")
        else:
            ranked = ", ".join(f"{name} {value:.3f}" for name, value in result.predictions)
            doubt = "uncertain, best guesses: " if result.uncertain else ""
            file.write(f"{result.path}: {doubt}{ranked}{explained}\n")


def _write_json(results: Iterable[PredictionResult], file: TextIO) -> None:
    # Item by item, so that a long run's results appear (and leave memory) as they come.
    opening = "[\n"
    for result in results:
        file.write(opening + textwrap.indent(json_text(result.to_dict(), indent=2), "  "))
        opening = ",\n"
    file.write("[]\n" if opening == "[\n" else "\n]\n")


def _write_csv(
    results: Iterable[PredictionResult], file: TextIO, label_names: Sequence[str] | None = None
) -> None:
    if label_names is None:
        results, first = _first_classified(results)
        if first is not None and first.probabilities is not None:
            label_names = [name for name, _ in first.probabilities]
    if label_names is not None:
        _write_label_set_csv(results, file, list(label_names))
    else:
        _write_ranked_csv(results, file)


def _write_ranked_csv(results: Iterable[PredictionResult], file: TextIO) -> None:
    """A row an (image, rank); with a minimum confidence (seen on the first image classified) an
    ``uncertain`` column after them, 1 where the image's top probability is below it; with
    explanations (seen likewise) an ``explanation`` column last, the overlay's path."""
    results, first = _first_classified(results)
    with_doubt = first is not None and first.uncertain is not None
    explained = first is not None and first.explanation is not None
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *["uncertain"] * with_doubt, *[EXPLANATION_COLUMN] * explained])
    doubt: list = []
    for result in results:
        if with_doubt:
            doubt = ["" if result.failed else int(bool(result.uncertain))]
        overlay = [result.explanation or ""] * explained
        if result.failed:
            writer.writerow([result.path, "", "", "", result.error, *doubt, *overlay])
            continue
        writer.writerows(
            [result.path, rank, name, value, "", *doubt, *overlay]
            for rank, (name, value) in enumerate(result.predictions, 1)
        )


def _first_classified(
    results: Iterable[PredictionResult],
) -> tuple[Iterator[PredictionResult], PredictionResult | None]:
    """(the same results, the first that is no error): a CSV's columns follow it, so the errors
    before it wait for it."""
    results = iter(results)
    waiting = []
    for result in results:
        waiting.append(result)
        if not result.failed:
            return itertools.chain(waiting, results), result
    return iter(waiting), None


def _write_label_set_csv(results: Iterable[PredictionResult], file: TextIO, label_names: list[str]) -> None:
    """A row an image: path, its label set, error, with explanations (seen on the first image
    classified) the overlay's path, then every label's probability."""
    results, first = _first_classified(results)
    explained = first is not None and first.explanation is not None
    fixed = [*MULTI_LABEL_CSV_COLUMNS, *[EXPLANATION_COLUMN] * explained]
    # A label named like a fixed column gets its own name in the header all the same.
    columns = [f"{name} (probability)" if name in fixed else name for name in label_names]
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow([*fixed, *columns])
    for result in results:
        overlay = [result.explanation or ""] * explained
        if result.failed or result.labels is None or result.probabilities is None:
            writer.writerow([result.path, "", result.error or "", *overlay, *[""] * len(label_names)])
            continue
        chosen = LABEL_SEPARATOR.join(name for name, _ in result.labels)
        writer.writerow([result.path, chosen, "", *overlay, *[value for _, value in result.probabilities]])
