"""Whole jobs, as the CLI runs them: train into a run folder, evaluate and predict from a checkpoint."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from cnnkit import __version__
from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint
from cnnkit.data import DataSplits, ImageData, decode_image, load_dataset, split_train_val
from cnnkit.engine.device import precision_name
from cnnkit.engine.preprocess import Normalization
from cnnkit.engine.trainer import History
from cnnkit.models import create_model, list_models
from cnnkit.recipes import DEFAULT_RECIPE, Recipe, get_recipe
from cnnkit.runs import (
    RunRecorder,
    create_run_folder,
    write_config,
    write_report,
)


@dataclass
class TrainResult:
    run_folder: Path
    history: History
    report: dict[str, Any]
    classifier: Classifier


def resolve_recipe(recipe: str = DEFAULT_RECIPE, **overrides: Any) -> Recipe:
    """The named recipe with every non-None override applied (and validated)."""
    return get_recipe(recipe).replace(**{key: value for key, value in overrides.items() if value is not None})


def train(
    data: str | os.PathLike = "cifar10",
    recipe: Recipe | None = None,
    device: str = "auto",
    precision: str = "auto",
    out: str | os.PathLike = "runs",
    name: str | None = None,
    verbose: bool = True,
    stream: TextIO | None = None,
) -> TrainResult:
    """Load ``data``, train ``recipe`` into a new run folder, and evaluate the final model.

    The final evaluation uses the data's test split, or the validation split where there is none.
    """
    recipe = recipe or get_recipe(DEFAULT_RECIPE)
    stream = stream or sys.stdout
    if recipe.model not in list_models():  # fail before spending time on the data
        create_model(recipe.model)  # raises, naming the close matches
    splits = load_dataset(data, image_size=recipe.image_size, progress=verbose)
    train_data, val_data = split_train_val(splits.train, recipe.val_fraction, recipe.seed)
    image_size = _square_size(train_data)
    normalization = Normalization.for_recipe(recipe.normalization, train_data.images)
    classifier = Classifier(
        recipe.model,
        class_names=train_data.class_names,
        image_size=image_size,
        normalization=normalization,
        device=device,
        precision=precision,
        seed=recipe.seed,
        **recipe.model_arguments,
    )
    folder = create_run_folder(out, name)
    config = _run_config(data, splits, recipe, classifier, train_data, val_data)
    write_config(folder, config)
    classifier.recipe = recipe.to_dict()
    # The run's checkpoints are the classifier's own, plus weights, epoch and metrics each epoch.
    recorder = RunRecorder(folder, classifier.to_checkpoint(config=config))
    if verbose:
        stream.write(
            f"Training {recipe.model} ({recipe.name} recipe) on {splits.source}: "
            f"{len(train_data)} train, {len(val_data) if val_data else 0} validation images, "
            f"{classifier.device.type} {precision_name(classifier.precision)}\n"
        )
    started = time.perf_counter()
    history = classifier.fit_data(
        train_data, val_data, recipe, callbacks=[recorder], verbose=verbose, stream=stream
    )
    report = _final_report(
        folder, classifier, history, recorder, splits, val_data, time.perf_counter() - started
    )
    write_report(folder, report)
    return TrainResult(folder, history, report, classifier)


def _final_report(folder, classifier, history, recorder, splits, val_data, seconds) -> dict[str, Any]:
    split_name, evaluation_data = (
        ("test", splits.test) if splits.test is not None else ("validation", val_data)
    )
    report: dict[str, Any] = {
        "run_folder": str(folder),
        "model": classifier.model_name,
        "epochs": len(history.rows),
        "train_seconds": round(seconds, 2),
        "final_epoch": history.rows[-1],
        "best_epoch": recorder.best_epoch,
        "best_checkpoint": str(folder / "best.pt"),
        "last_checkpoint": str(folder / "last.pt"),
    }
    if evaluation_data is not None:
        metrics = classifier.evaluate(evaluation_data.images, evaluation_data.labels)
        report["evaluation"] = {"split": split_name, **metrics}
    return report


def _run_config(
    data, splits: DataSplits, recipe: Recipe, classifier: Classifier, train_data, val_data
) -> dict:
    source = os.path.abspath(data) if data not in (None, "cifar10") else "cifar10"
    return {
        "data": source,
        "data_description": splits.source,
        "recipe": recipe.to_dict(),
        "model": classifier.model_name,
        "model_arguments": dict(classifier.network.model_arguments),
        "class_names": classifier.class_names,
        "image_size": classifier.image_size,
        "normalization": classifier.normalization.to_dict(),
        "train_images": len(train_data),
        "val_images": len(val_data) if val_data else 0,
        "device": str(classifier.device),
        "precision": precision_name(classifier.precision),
        "threads": torch.get_num_threads(),
        "cnnkit_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _square_size(data: ImageData) -> int:
    height, width = data.images.shape[1:3]
    if height != width:
        raise ValueError(f"Images must be square; pass an image size. Received: {height}x{width} images")
    return int(height)


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    data: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Loss and accuracy of a checkpoint on ``data``'s test split (or all of it, if it has none).

    Without ``data``, the run's own data: its test split, or the exact validation split it held out.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    classifier = Classifier.from_checkpoint(checkpoint, device=device, precision=precision)
    evaluation_data, split_name, source = _evaluation_data(checkpoint, data)
    labels = match_labels(evaluation_data, checkpoint.class_names)
    metrics = classifier.evaluate(evaluation_data.images, labels, batch_size)
    return {**metrics, "split": split_name, "data": source, "checkpoint": str(checkpoint_path)}


def _evaluation_data(checkpoint, data) -> tuple[ImageData, str, str]:
    if data is not None:
        splits = load_dataset(data, image_size=checkpoint.image_size)
        if splits.test is not None:
            return splits.test, "test", splits.source
        return splits.train, "all", splits.source
    source = checkpoint.config.get("data", "cifar10")
    splits = load_dataset(source, image_size=checkpoint.image_size)
    if splits.test is not None:
        return splits.test, "test", splits.source
    recipe = checkpoint.recipe
    _, val = split_train_val(splits.train, recipe.get("val_fraction", 0.2), recipe.get("seed", 0))
    if val is None:
        raise ValueError(f"The run trained on all of {source} and it has no test split: pass --data.")
    return val, "validation", splits.source


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


def predict_files(
    checkpoint_path: str | os.PathLike,
    paths: list[str | os.PathLike],
    top_k: int = 5,
    device: str = "auto",
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """Top-k class names and probabilities for each image file (any size or mode)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1. Received: top_k={top_k}")
    classifier = Classifier.load(checkpoint_path, device=device, precision=precision)
    images = []
    for path in paths:
        with open(path, "rb") as file:
            images.append(torch.tensor(decode_image(file.read(), classifier.image_size, str(path))))
    probabilities = torch.from_numpy(classifier.predict(torch.stack(images)))
    top = probabilities.topk(min(top_k, len(classifier.class_names)), dim=1)
    return [
        {
            "path": str(path),
            "predictions": [
                {"class": classifier.class_names[index], "probability": round(value, 6)}
                for value, index in zip(values.tolist(), indices.tolist(), strict=True)
            ],
        }
        for path, values, indices in zip(paths, top.values, top.indices, strict=True)
    ]
