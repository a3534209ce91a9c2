"""Evaluation jobs: a checkpoint's predictions on labelled data, measured, written and printed.

``evaluate_checkpoint`` is the whole job (``cnnkit evaluate``); ``evaluate_classifier`` measures
(with the classifier's test-time augmentation); ``write_evaluation_report`` fills a report folder;
``format_evaluation`` is what the CLI prints. Nothing here imports the trainer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cnnkit.api import Classifier
from cnnkit.checkpoint import Checkpoint, load_checkpoint, to_plain
from cnnkit.data import ImageData, load_dataset
from cnnkit.engine.metrics import score_logits
from cnnkit.fileio import atomic_write_text, json_text
from cnnkit.reports.classification import (
    ClassificationReport,
    classification_report,
    format_report_table,
    write_per_class_csv,
)
from cnnkit.reports.evaluation_plots import plot_confusion_matrix, plot_misclassified
from cnnkit.runs.folders import create_run_folder
from cnnkit.runs.splits import training_splits
from cnnkit.runtime.device import configure_process

# The headline figures of an evaluation, by the metric objects the epoch lines use.
REPORTED_METRICS = ("loss", "accuracy", "balanced_accuracy", "macro_f1")

REPORT_FILES = {
    "per_class_csv": "per_class.csv",
    "confusion_matrix": "confusion_matrix.png",
    "confusion_matrix_normalized": "confusion_matrix_normalized.png",
    "misclassified": "misclassified.png",
    "report_json": "report.json",
}


def evaluate_classifier(
    classifier: Classifier,
    data: ImageData,
    labels: torch.Tensor | None = None,
    batch_size: int = 1024,
    misclassified_limit: int = 25,
) -> ClassificationReport:
    """The full report of ``classifier`` on ``data`` (``labels`` override ``data.labels``, e.g. matched).

    Probabilities and loss come from the same test-time-augmented logits that
    ``Classifier.evaluate`` uses, so accuracy and loss agree with it.
    """
    if len(data) == 0:
        raise ValueError("Cannot evaluate on an empty set of images.")
    labels = (data.labels if labels is None else labels).long().cpu()
    logits = classifier.logits(data.images, batch_size)
    headline = score_logits(logits, labels, REPORTED_METRICS)
    report = classification_report(
        labels.numpy(),
        classifier.task.probabilities(logits).numpy(),
        classifier.class_names,
        loss=headline["loss"],
        # ``names`` (each image's relative path) is optional in the data layer.
        names=getattr(data, "names", None),
        misclassified_limit=misclassified_limit,
    )
    report.balanced_accuracy, report.macro_f1 = headline["balanced_accuracy"], headline["macro_f1"]
    return report


def report_folder(checkpoint_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``out`` (new or empty), or a fresh ``evaluate``, ``evaluate2``... beside the checkpoint.

    A folder holding files is refused: a report never replaces a run's own files or another report.
    """
    if out is None:
        return create_run_folder(Path(checkpoint_path).parent, "evaluate")
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        held = "is a file" if not folder.is_dir() else "already holds files"
        raise ValueError(
            f"The report folder {folder} {held}: give a new or empty folder (or no --out for a new "
            f"one beside the checkpoint). Received: out={str(out)!r}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_evaluation_report(
    folder: str | os.PathLike,
    report: ClassificationReport,
    images: Any,
    result: dict[str, Any],
) -> dict[str, str]:
    """Write the CSV, the three pictures and ``report.json`` (``result`` plus file paths) into ``folder``.

    Returns the written files' paths by kind (the keys of ``REPORT_FILES``).
    """
    folder = Path(folder)
    files = {kind: str(folder / name) for kind, name in REPORT_FILES.items()}
    write_per_class_csv(files["per_class_csv"], report)
    plot_confusion_matrix(files["confusion_matrix"], report.confusion_matrix, report.class_names)
    plot_confusion_matrix(
        files["confusion_matrix_normalized"], report.confusion_matrix, report.class_names, normalize=True
    )
    plot_misclassified(files["misclassified"], images, report.misclassified, report.misclassified_count)
    contents = {**result, "report_folder": str(folder), "files": files}
    atomic_write_text(
        files["report_json"], json_text(to_plain(contents), indent=2, ensure_ascii=False) + "\n"
    )
    return files


def format_evaluation(result: dict[str, Any]) -> str:
    """The text ``cnnkit evaluate`` prints for an ``evaluate_checkpoint`` result."""
    lines = [f"{result['data']} [{result['split']}] {result['count']} images", ""]
    lines.append(format_report_table(ClassificationReport.from_dict(result)))
    if result.get("report_folder"):
        lines.append(f"Report folder: {result['report_folder']}")
    return "\n".join(lines)


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    data: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 1024,
    out: str | os.PathLike | None = None,
    reports: bool = True,
) -> dict[str, Any]:
    """The full classification report of a checkpoint on ``data``'s test split (or all of it).

    Without ``data``, the run's own data: its test split, or the exact validation split it held out.
    Returns plain values: ``accuracy``, ``loss``, ``count``, per-class metrics, averages, confusion
    matrix, most confident errors, ``missing_classes`` (see ``ClassificationReport.to_dict``), plus
    ``split``, ``data`` and ``checkpoint``. With ``reports``, the report's files are written to
    ``out`` (a new or empty folder) or to a new ``evaluate``, ``evaluate2``... folder beside the
    checkpoint, and ``report_folder`` and ``files`` name them.
    """
    configure_process()
    checkpoint = load_checkpoint(checkpoint_path)
    if reports and out is not None:
        report_folder(checkpoint_path, out)  # refuse a folder holding files before the work, not after
    classifier = Classifier.from_checkpoint(
        checkpoint, device=device, precision=precision, source=checkpoint_path
    )
    evaluation_data, split_name, source = _evaluation_data(checkpoint, data)
    labels = match_labels(evaluation_data, checkpoint.class_names)
    report = evaluate_classifier(classifier, evaluation_data, labels, batch_size)
    result = {
        **report.to_dict(),
        "split": split_name,
        "data": source,
        "checkpoint": str(checkpoint_path),
    }
    if reports:
        # The folder is made only once the evaluation has succeeded: a failure leaves nothing behind.
        folder = report_folder(checkpoint_path, out)
        files = write_evaluation_report(folder, report, evaluation_data.images, result)
        result.update(report_folder=str(folder), files=files)
    return result


def _evaluation_data(checkpoint: Checkpoint, data) -> tuple[ImageData, str, str]:
    """The images to score: ``data``'s test split (else its validation folder, else all of it), or
    without ``data`` the run's own test split, validation folder or exactly the share it held out."""
    source = data if data is not None else checkpoint.config.get("data", "cifar10")
    # Decoded as the run stored its images (resize_size); the classifier crops the centre it sees.
    splits = load_dataset(source, image_size=checkpoint.resize_size)
    if splits.test is not None:
        return splits.test, "test", splits.folders.get("test", splits.source)
    if splits.validation is not None:
        return splits.validation, "validation", splits.folders["validation"]
    if data is not None:
        return splits.train, "all", splits.source
    if checkpoint.recipe is None:
        raise ValueError("The checkpoint records no recipe, so not its validation split: pass --data.")
    _, validation = training_splits(splits, checkpoint.recipe)
    if validation is None:
        raise ValueError(f"The run trained on all of {splits.source} and it has no test split: pass --data.")
    return validation, "validation", splits.source


def match_labels(data: ImageData, class_names: list[str]) -> torch.Tensor:
    """Labels of ``data`` re-indexed to ``class_names`` by name (folder order may differ)."""
    index = {name: position for position, name in enumerate(class_names)}
    unknown = [name for name in data.class_names if name not in index]
    if unknown:
        raise ValueError(
            f"The data has classes the model does not know: {', '.join(unknown)}. "
            f"Model classes: {', '.join(class_names)}."
        )
    mapping = torch.tensor([index[name] for name in data.class_names], dtype=torch.long)
    return mapping[data.labels.long()]
