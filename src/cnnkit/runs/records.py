"""What a run writes about itself: its configuration (``config.yaml``) and its final report."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

import torch

from cnnkit import __version__
from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.data import DataSplits
from cnnkit.data.balance import IMBALANCE_RATIO
from cnnkit.engine.callbacks import History
from cnnkit.recipes import Recipe
from cnnkit.reports.chance import chance_verdict, map_chance_verdict
from cnnkit.reports.splits import metrics_by_split
from cnnkit.runs.splits import report_split, split_roles
from cnnkit.runtime.device import precision_name


def final_report(run: Any, history: History, seconds: float) -> dict[str, Any]:
    """The run's report: what trained how long, and ``best.pt`` scored on held-out data.

    The user is pointed at ``best.pt``, so that is what is scored (with the recipe's test-time
    augmentation); a test score is also written into ``best.pt`` so the model carries it.
    """
    folder = run.folder
    best_path = folder / "best.pt"
    split_name, evaluation_data = report_split(run.splits, run.val_data)
    report: dict[str, Any] = {
        "run_folder": str(folder),
        "model": run.classifier.model_name,
        "epochs": len(history.rows),
        "train_seconds": round(seconds, 2),
        "final_epoch": named_by_split(history.rows[-1]),
        "best_epoch": history.best_epoch,
        "best_checkpoint": str(best_path),
        "last_checkpoint": str(folder / "last.pt"),
    }
    if evaluation_data is not None:
        best = load_checkpoint(best_path)
        model = Classifier.from_checkpoint(
            best, device=str(run.classifier.device), precision=precision_name(run.classifier.precision)
        )
        # Balanced accuracy and macro-F1 beside accuracy when the classes are imbalanced.
        ratio = run.config.get("imbalance_ratio", 1)  # the training split's; None: a class has none
        imbalanced = ratio is None or ratio > IMBALANCE_RATIO
        imbalanced = imbalanced or model.task.is_imbalanced(evaluation_data.labels, len(model.class_names))
        names = model.task.metric_names(imbalanced)
        metrics = model.evaluate(evaluation_data.images, evaluation_data.labels, metrics=names)
        scored = {"split": split_name, "data": run.config["splits"][split_name], "checkpoint": "best.pt"}
        report["evaluation"] = {**scored, "epoch": best.epoch, **metrics}
        if split_name == "test":
            best.metrics["test"] = metrics
            save_checkpoint(best_path, best)
    report.update(learning_check(run.val_data, history, report.get("evaluation"), evaluation_data))
    for key in ("class_counts", "imbalance_ratio"):  # the training split's, from the config
        if key in run.config:
            report[key] = run.config[key]
    return report


def learning_check(val_data, history: History, evaluation: dict | None, evaluation_data) -> dict[str, Any]:
    """``{"learned": bool, "chance": verdict}`` (see ``reports.chance``): the best validation
    accuracy of any epoch against the validation split's largest class; without validation, the
    final evaluation's. Multi-label: the best validation mAP against random scores'. Empty when
    nothing held out was scored."""
    multi_label = any(getattr(data, "multi_label", False) for data in (val_data, evaluation_data))
    metric = "map" if multi_label else "accuracy"
    scores = [row["val_" + metric] for row in history.rows if "val_" + metric in row]
    if val_data is not None and len(val_data) and scores:
        split, score, labels = "validation", max(scores), val_data.labels
    elif evaluation is not None and metric in evaluation:
        split, score, labels = evaluation["split"], evaluation[metric], evaluation_data.labels
    else:
        return {}
    labels = torch.as_tensor(labels)
    if multi_label:
        positives = labels.sum(0).tolist()
        if not any(positives):
            return {}
        verdict = map_chance_verdict(score, positives, len(labels))
    else:
        counts = torch.bincount(labels.flatten().long()).tolist()
        verdict = chance_verdict(score, [count for count in counts if count])
    verdict = {"split": split, **verdict}
    return {"learned": verdict["learned"], "chance": verdict}


def named_by_split(row: dict[str, float]) -> dict[str, Any]:
    """A history row, metrics grouped by split: ``{"epoch", "seconds", "train": .., "validation": ..}``."""
    return {"epoch": int(row["epoch"]), "seconds": row["seconds"], **metrics_by_split(row)}


def run_config(
    data, splits: DataSplits, recipe: Recipe, classifier: Classifier, train_data, val_data, strict: bool
) -> dict:
    source = os.path.abspath(data) if data not in (None, "cifar10") else "cifar10"
    return {
        "data": source,
        "data_description": splits.source,
        "splits": split_roles(splits, recipe),  # which data served as what
        "recipe": recipe.to_dict(),
        "precision": precision_name(classifier.precision),
        "strict": strict,
        "model": classifier.model_name,
        "model_arguments": dict(classifier.network.model_arguments),
        "task": classifier.task.name,
        "class_names": classifier.class_names,
        "image_size": classifier.image_size,
        "resize_size": classifier.resize_size,
        "normalization": classifier.normalization.to_dict(),
        "train_images": len(train_data),
        "val_images": len(val_data) if val_data else 0,
        "device": str(classifier.device),
        "threads": torch.get_num_threads(),
        "cnnkit_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
