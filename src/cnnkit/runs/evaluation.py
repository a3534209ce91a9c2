"""Evaluation jobs: a checkpoint's predictions on labelled data, measured, written and printed.

``evaluate_checkpoint`` is the whole job (``cnnkit evaluate``); ``evaluate_classifier`` measures
(with the classifier's test-time augmentation); ``write_evaluation_report`` fills a report folder,
its gallery of confident mistakes each beside its Grad-CAM overlay (``misclassified_overlays``);
``format_evaluation`` is what the CLI prints. Nothing here imports the trainer.

A multi-label checkpoint (issue 21) gets a ``MultiLabelReport`` instead: ``per_label.csv``, the
precision-recall curves, the worst label sets and ``report.json`` (with ``task: "multi_label"``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.api import Classifier
from cnnkit.checkpoint import Checkpoint, load_checkpoint, to_plain
from cnnkit.data import ImageData, load_dataset
from cnnkit.data.exclusion import exclude_images
from cnnkit.engine.metrics import score_logits
from cnnkit.fileio import atomic_write_text, json_text
from cnnkit.reports.calibration import (
    calibration_report,
    describe_calibration_report,
    plot_calibration_report,
)
from cnnkit.reports.classification import (
    ClassificationReport,
    classification_report,
    format_report_table,
    write_per_class_csv,
)
from cnnkit.reports.evaluation_plots import plot_confusion_matrix, plot_misclassified
from cnnkit.reports.multi_label import (
    MultiLabelReport,
    format_multi_label_table,
    multi_label_report,
    plot_label_set_gallery,
    plot_precision_recall,
    write_per_label_csv,
)
from cnnkit.runs.folders import output_folder
from cnnkit.runs.splits import training_splits
from cnnkit.runtime.device import configure_process
from cnnkit.tasks.multi_label import DEFAULT_THRESHOLD

# The headline figures of an evaluation, by the metric objects the epoch lines use.
REPORTED_METRICS = ("loss", "accuracy", "balanced_accuracy", "macro_f1")

REPORT_FILES = {
    "per_class_csv": "per_class.csv",
    "confusion_matrix": "confusion_matrix.png",
    "confusion_matrix_normalized": "confusion_matrix_normalized.png",
    "misclassified": "misclassified.png",
    "reliability": "reliability.png",
    "report_json": "report.json",
}

# A multi-label report's files, by kind.
MULTI_LABEL_REPORT_FILES = {
    "per_label_csv": "per_label.csv",
    "precision_recall": "precision_recall.png",
    "worst_images": "worst_images.png",
    "report_json": "report.json",
}


def evaluate_classifier(
    classifier: Classifier,
    data: ImageData,
    labels: torch.Tensor | None = None,
    batch_size: int = 1024,
    misclassified_limit: int = 25,
) -> ClassificationReport | MultiLabelReport:
    """The full report of ``classifier`` on ``data`` (``labels`` override ``data.labels``, e.g. matched).

    Probabilities and loss come from the same test-time-augmented logits that
    ``Classifier.evaluate`` uses, so accuracy and loss agree with it. A multi-label classifier
    gets a ``MultiLabelReport`` at its thresholds (``misclassified_limit``: its worst images).
    """
    if len(data) == 0:
        raise ValueError("Cannot evaluate on an empty set of images.")
    labels = (data.labels if labels is None else labels).long().cpu()
    trained = classifier.logits(data.images, batch_size, calibrated=False)
    logits = classifier.calibrated_logits(trained)
    if classifier.task.multi_label:
        return _multi_label_report(classifier, data, labels, logits, misclassified_limit)
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
    report.calibration = _calibration(classifier, logits, trained, labels)
    return report


def _calibration(
    classifier: Classifier, logits: torch.Tensor, trained: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """The calibration section: the probabilities given and, when calibrated, those as trained."""
    task, temperature = classifier.task, classifier.temperature
    given = task.probabilities(logits.double()).numpy()
    as_trained = None if temperature is None else task.probabilities(trained.double()).numpy()
    section = calibration_report(labels.numpy(), given, as_trained, temperature)
    section["confidence_map"] = classifier.confidence_map is not None
    return section


def _multi_label_report(
    classifier: Classifier, data: ImageData, labels: torch.Tensor, logits: torch.Tensor, limit: int
) -> MultiLabelReport:
    """The multi-label report of ``logits``: the loss as ``Classifier.evaluate`` scores it, the
    rest from the sigmoid probabilities at the classifier's thresholds."""
    if labels.dim() != 2:
        raise ValueError(
            "A multi-label classifier is evaluated on multi-hot labels (N, labels). "
            f"Received: labels of shape {tuple(labels.shape)}"
        )
    headline = score_logits(logits, labels, ("loss",), classifier.task, classifier.thresholds)
    return multi_label_report(
        labels.numpy(),
        # In float64: a float32 sigmoid ties every confident image at exactly 1, blunting AP's ranking.
        classifier.task.probabilities(logits.double()).numpy(),
        classifier.class_names,
        classifier.thresholds,
        loss=headline["loss"],
        names=getattr(data, "names", None),
        worst_limit=limit,
    )


def _task_fields(classifier: Classifier) -> dict[str, Any]:
    """A multi-label result's ``thresholds_source``: "validation" where the checkpoint holds
    thresholds (``choose_thresholds`` on a validation split), else "default 0.5" (the report
    itself holds ``thresholds``). Nothing for a single-label classifier."""
    if not classifier.task.multi_label:
        return {}
    chosen = classifier.thresholds is not None
    return {"thresholds_source": "validation" if chosen else f"default {DEFAULT_THRESHOLD}"}


def misclassified_overlays(
    classifier: Classifier, images: Any, report: ClassificationReport | MultiLabelReport
) -> dict[int, np.ndarray]:
    """The Grad-CAM overlays of a single-label report's gallery of confident mistakes, by image
    index: where the network saw the class it wrongly predicted, over the crop it saw. None for a
    multi-label report; none, with a warning, for a network Grad-CAM cannot explain (a model
    registered without ``feature_layer_names``): the gallery is drawn without them."""
    errors = getattr(report, "misclassified", None)
    if not errors:
        return {}
    indices = [error.index for error in errors]
    pixels = images[torch.as_tensor(indices)]  # only these images are read from a store
    try:
        overlays = classifier.explanation_overlays(pixels, [error.predicted_class for error in errors])
    except ValueError as error:
        warnings.warn(f"The gallery of mistakes is drawn without explanations: {error}", stacklevel=2)
        return {}
    return dict(zip(indices, overlays, strict=True))


def report_folder(checkpoint_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``out`` (new or empty), or a fresh ``evaluate``, ``evaluate2``... beside the checkpoint.

    A folder holding files is refused: a report never replaces a run's own files or another report.
    """
    beside = Path(checkpoint_path).parent
    return output_folder(out, beside, "evaluate", "report", "or no --out for a new one beside the checkpoint")


def write_evaluation_report(
    folder: str | os.PathLike,
    report: ClassificationReport | MultiLabelReport,
    images: Any,
    result: dict[str, Any],
    overlays: dict[int, np.ndarray] | None = None,
) -> dict[str, str]:
    """Write the CSV, the three pictures and ``report.json`` (``result`` plus file paths) into ``folder``;
    ``overlays`` (``misclassified_overlays``) are drawn beside the gallery's images.

    Returns the written files' paths by kind (the keys of ``REPORT_FILES``). A multi-label report
    writes ``per_label.csv``, the precision-recall curves, the worst label sets and ``report.json``
    (the keys of ``MULTI_LABEL_REPORT_FILES``).
    """
    folder = Path(folder)
    if isinstance(report, MultiLabelReport):
        files = _write_multi_label_files(folder, report, images)
    else:
        files = {kind: str(folder / name) for kind, name in REPORT_FILES.items()}
        write_per_class_csv(files["per_class_csv"], report)
        plot_confusion_matrix(files["confusion_matrix"], report.confusion_matrix, report.class_names)
        plot_confusion_matrix(
            files["confusion_matrix_normalized"], report.confusion_matrix, report.class_names, normalize=True
        )
        plot_misclassified(
            files["misclassified"],
            images,
            report.misclassified,
            report.misclassified_count,
            overlays=overlays,
        )
        plot_calibration_report(files["reliability"], report.calibration)
    contents = {**result, "report_folder": str(folder), "files": files}
    atomic_write_text(
        files["report_json"], json_text(to_plain(contents), indent=2, ensure_ascii=False) + "\n"
    )
    return files


def _write_multi_label_files(folder: Path, report: MultiLabelReport, images: Any) -> dict[str, str]:
    """The CSV and the two pictures of a multi-label report; the paths of all its files."""
    files = {kind: str(folder / name) for kind, name in MULTI_LABEL_REPORT_FILES.items()}
    write_per_label_csv(files["per_label_csv"], report)
    plot_precision_recall(files["precision_recall"], report)
    plot_label_set_gallery(files["worst_images"], images, report.worst, report.wrong_count)
    return files


def format_evaluation(result: dict[str, Any]) -> str:
    """The text ``cnnkit evaluate`` prints for an ``evaluate_checkpoint`` result."""
    lines = [f"{result['data']} [{result['split']}] {result['count']} images", ""]
    if result.get("task") == "multi_label":
        lines.append(format_multi_label_table(MultiLabelReport.from_dict(result)))
        source = result.get("thresholds_source")
        if source == "validation":
            lines.append("Thresholds: one a label, chosen on the training run's validation split.")
        elif source:
            lines.append(f"Thresholds: {source.removeprefix('default ')} for every label (none chosen).")
    else:
        lines.append(format_report_table(ClassificationReport.from_dict(result)))
        if result.get("calibration"):
            lines.append(describe_calibration_report(result["calibration"]))
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
    checkpoint, and ``report_folder`` and ``files`` name them. A multi-label checkpoint gives
    ``MultiLabelReport.to_dict`` (``task`` "multi_label", loss, mAP, micro- and macro-F1, exact
    match, Hamming loss, per label figures, the worst images) plus ``thresholds`` and
    ``thresholds_source``, and writes ``MULTI_LABEL_REPORT_FILES``.
    """
    configure_process()
    checkpoint = load_checkpoint(checkpoint_path)
    if reports and out is not None:
        report_folder(checkpoint_path, out)  # refuse a folder holding files before the work, not after
    classifier = Classifier.from_checkpoint(
        checkpoint, device=device, precision=precision, source=checkpoint_path
    )
    evaluation_data, split_name, source = _evaluation_data(checkpoint, data)
    labels = match_labels(evaluation_data, checkpoint.class_names, classifier.task.multi_label)
    report = evaluate_classifier(classifier, evaluation_data, labels, batch_size)
    result = {
        **report.to_dict(),
        **_task_fields(classifier),
        "split": split_name,
        "data": source,
        "checkpoint": str(checkpoint_path),
    }
    if reports:
        # The folder is made only once the evaluation has succeeded: a failure leaves nothing behind.
        overlays = misclassified_overlays(classifier, evaluation_data.images, report)
        folder = report_folder(checkpoint_path, out)
        files = write_evaluation_report(folder, report, evaluation_data.images, result, overlays)
        result.update(report_folder=str(folder), files=files)
    return result


def _evaluation_data(checkpoint: Checkpoint, data) -> tuple[ImageData, str, str]:
    """The images to score: ``data``'s test split (else its validation folder, else all of it), or
    without ``data`` the run's own test split, validation folder or exactly the share it held out."""
    source = data if data is not None else checkpoint.config.get("data", "cifar10")
    # The run's own data with the label table it was given apart (--labels), if any.
    labels = checkpoint.config.get("labels") if data is None else None
    # Decoded as the run stored its images (resize_size); the classifier crops the centre it sees.
    splits = load_dataset(source, image_size=checkpoint.resize_size, labels=labels)
    if data is None and checkpoint.config.get("exclude"):  # the images the run left out stay out
        splits, _ = exclude_images(splits, checkpoint.config["exclude"]["file"])
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


def match_labels(data: ImageData, class_names: list[str], multi_label: bool | None = None) -> torch.Tensor:
    """Labels of ``data`` re-indexed to ``class_names`` by name (folder order may differ).

    ``multi_label`` (the model's task; None: the data's): multi-hot label columns are re-ordered to
    the model's labels, a model label the data lacks getting a column of zeros.
    """
    multi_label = data.multi_label if multi_label is None else multi_label
    if multi_label != data.multi_label:
        raise ValueError(
            f"A {'multi' if multi_label else 'single'}-label model cannot be evaluated on "
            f"{'multi-hot labels' if data.multi_label else 'one class an image'}: give data labelled "
            f"as it was trained. Received: labels of shape {tuple(data.labels.shape)}"
        )
    what = "labels" if multi_label else "classes"
    index = {name: position for position, name in enumerate(class_names)}
    unknown = [name for name in data.class_names if name not in index]
    if unknown:
        raise ValueError(
            f"The data has {what} the model does not know: {', '.join(unknown)}. "
            f"Model {what}: {', '.join(class_names)}."
        )
    if multi_label:
        columns = torch.zeros((len(data), len(class_names)), dtype=torch.long)
        columns[:, [index[name] for name in data.class_names]] = data.labels.long()
        return columns
    mapping = torch.tensor([index[name] for name in data.class_names], dtype=torch.long)
    return mapping[data.labels.long()]
