"""An evaluation report: a classifier's predictions on labelled data, measured, written and printed.

``evaluate_classifier`` measures (with the classifier's test-time augmentation);
``write_evaluation_report`` fills a report folder; ``format_evaluation`` is what the CLI prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnnkit.api import Classifier
from cnnkit.checkpoint import to_plain
from cnnkit.data import ImageData
from cnnkit.engine.evaluation import predict_logits
from cnnkit.fileio import atomic_write_text
from cnnkit.reports.classification import (
    ClassificationReport,
    classification_report,
    format_report_table,
    write_per_class_csv,
)
from cnnkit.reports.evaluation_plots import plot_confusion_matrix, plot_misclassified
from cnnkit.runs import create_run_folder

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
    classifier.network.to(classifier.device)
    logits = predict_logits(
        classifier.network,
        data.images,
        classifier.normalization,
        classifier.device,
        classifier.precision,
        batch_size,
        classifier.tta,
    )
    return classification_report(
        labels.numpy(),
        torch.softmax(logits, dim=1).numpy(),
        classifier.class_names,
        loss=F.cross_entropy(logits, labels).item(),
        # ``names`` (each image's relative path) is optional in the data layer.
        names=getattr(data, "names", None),
        misclassified_limit=misclassified_limit,
    )


def report_folder(checkpoint_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``out`` (created if needed), or a fresh ``evaluate``, ``evaluate2``... beside the checkpoint."""
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return create_run_folder(Path(checkpoint_path).parent, "evaluate")


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
    atomic_write_text(files["report_json"], json.dumps(to_plain(contents), indent=2) + "\n")
    return files


def format_evaluation(result: dict[str, Any]) -> str:
    """The text ``cnnkit evaluate`` prints for an ``evaluate_checkpoint`` result."""
    lines = [f"{result['data']} [{result['split']}] {result['count']} images", ""]
    lines.append(format_report_table(ClassificationReport.from_dict(result)))
    if result.get("report_folder"):
        lines.append(f"Report folder: {result['report_folder']}")
    return "\n".join(lines)
