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
from cnnkit.data import (
    DataSplits,
    ImageData,
    check_trainable,
    load_dataset,
    skipped_summary,
    split_train_val,
    write_skipped_list,
)
from cnnkit.engine import distributed
from cnnkit.engine.device import precision_name
from cnnkit.engine.history import History
from cnnkit.engine.interrupt import stop_on_signals
from cnnkit.engine.preprocess import Normalization
from cnnkit.evaluation_report import evaluate_classifier, report_folder, write_evaluation_report
from cnnkit.models import create_model, list_models
from cnnkit.prediction import predict_files  # noqa: F401  (re-exported: cnnkit.workflows.predict_files)
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
    strict: bool = False,
) -> TrainResult:
    """Load ``data``, train ``recipe`` into a new run folder, and evaluate the final model.

    The final evaluation uses the data's test split, or the validation split where there is none.
    Files that are not usable images are skipped and listed in the run's ``skipped.txt``;
    ``strict`` makes the first of them an error instead.
    """
    recipe = recipe or get_recipe(DEFAULT_RECIPE)
    stream = stream or sys.stdout
    if recipe.model not in list_models():  # fail before spending time on the data
        create_model(recipe.model)  # raises, naming the close matches
    # Under torchrun, every process runs this; rank 0 alone prints and writes the run folder.
    job, device = distributed.initialize(device)
    verbose = verbose and job.is_main
    splits = load_dataset(data, image_size=recipe.image_size, progress=verbose, strict=strict)
    check_trainable(splits.train, splits.source)
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
    folder = _create_shared_run_folder(out, name, job)
    config = _run_config(data, splits, recipe, classifier, train_data, val_data)
    if job.is_main:
        write_config(folder, config)
    if splits.skipped and job.is_main:
        listing = folder / "skipped.txt"
        write_skipped_list(listing, splits.skipped)
        # Verbose loading has printed the summary line already; quiet runs still get it once.
        line = (
            f"Skipped files and reasons: {listing}"
            if verbose
            else skipped_summary(splits.skipped, splits.file_count, listing)
        )
        print(line, file=sys.stderr)
    if verbose:
        stream.write(
            f"Training {recipe.model} ({recipe.name} recipe) on {splits.source}: "
            f"{len(train_data)} train, {len(val_data) if val_data else 0} validation images, "
            f"{classifier.device.type} {precision_name(classifier.precision)}\n"
        )
    run = _Run(folder, classifier, recipe, splits, train_data, val_data, config)
    return _train_in_folder(run, verbose, stream)


def resume(
    run_folder: str | os.PathLike,
    device: str = "auto",
    precision: str = "auto",
    verbose: bool = True,
    stream: TextIO | None = None,
) -> TrainResult:
    """Continue the stopped run in ``run_folder`` from its ``last.pt``, as if never interrupted.

    On the same device and thread count, the final weights and metrics equal those of an
    uninterrupted run. After a hard kill, ``last.pt`` is the last finished epoch's.
    """
    folder = Path(run_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Run folder not found: {folder}")
    if not (folder / "last.pt").is_file():
        raise FileNotFoundError(
            f"{folder} has no last.pt: the run stopped before finishing its first epoch. Start it again."
        )
    checkpoint = load_checkpoint(folder / "last.pt")
    state = checkpoint.training_state
    if state is None:
        raise ValueError(f"{folder / 'last.pt'} holds no training state (an older cnnkit wrote it).")
    if state["finished"]:
        raise ValueError(
            f"The run in {folder} already finished after {len(state['history'])} epochs: "
            "nothing to resume. Start a new run to train more."
        )
    recipe = Recipe.from_dict(checkpoint.recipe)
    config = checkpoint.config
    stream = stream or sys.stdout
    job, device = distributed.initialize(device)
    verbose = verbose and job.is_main
    splits = load_dataset(config["data"], image_size=recipe.image_size, progress=verbose)
    train_data, val_data = split_train_val(splits.train, recipe.val_fraction, recipe.seed)
    if train_data.class_names != checkpoint.class_names:
        raise ValueError(
            f"The classes of {config['data']} changed since the run started: "
            f"now {', '.join(train_data.class_names)}, then {', '.join(checkpoint.class_names)}."
        )
    classifier = Classifier.from_checkpoint(checkpoint, device=device, precision=precision)
    if verbose:
        position = state["position"]
        where = (
            f"epoch {position['epoch']}, step {position['step'] + 1}"
            if position
            else f"epoch {len(state['history']) + 1}"
        )
        stream.write(f"Resuming {folder} at {where} ({recipe.name} recipe, {splits.source})\n")
    resume_state = {
        "model": checkpoint.state_dict,
        "optimizer": checkpoint.optimizer_state,
        "training": state,
    }
    run = _Run(folder, classifier, recipe, splits, train_data, val_data, config)
    return _train_in_folder(run, verbose, stream, resume_state)


@dataclass
class _Run:
    """What a run folder's training needs, set up by ``train`` or read back by ``resume``."""

    folder: Path
    classifier: Classifier
    recipe: Recipe
    splits: DataSplits
    train_data: ImageData
    val_data: ImageData | None
    config: dict[str, Any]


def _train_in_folder(
    run: _Run, verbose: bool, stream: TextIO, resume_state: dict | None = None
) -> TrainResult:
    """Fit with the run folder recorder, stop cleanly on SIGINT/SIGTERM, evaluate, write the report."""
    folder, classifier = run.folder, run.classifier
    classifier.recipe = run.recipe.to_dict()
    # The run's checkpoints are the classifier's own, plus weights, epoch and metrics each epoch.
    recorder = RunRecorder(folder, classifier.to_checkpoint(config=run.config))
    is_main = distributed.current().is_main
    started = time.perf_counter()
    try:
        with stop_on_signals() as stop_request:
            history = classifier.fit_data(
                run.train_data,
                run.val_data,
                run.recipe,
                callbacks=[recorder] if is_main else [],
                verbose=verbose,
                stream=stream,
                resume_state=resume_state,
                stop_request=stop_request,
            )
    except FloatingPointError as error:
        last = folder / "last.pt"
        kept = (
            f"the last good checkpoint is {last}"
            if last.is_file()
            else "no epoch finished, so there is no checkpoint"
        )
        raise FloatingPointError(f"{error} Training stopped; {kept}.") from None
    if not is_main:  # the other ranks' work is done: rank 0 evaluates and reports
        return TrainResult(folder, history, {}, classifier)
    report = _final_report(run, history, time.perf_counter() - started)
    write_report(folder, report)
    return TrainResult(folder, history, report, classifier)


def _create_shared_run_folder(out, name, job: distributed.Distributed) -> Path:
    """Rank 0 creates the run folder; under torchrun the other ranks learn its name from it."""
    folder = create_run_folder(out, name) if job.is_main else None
    if job.enabled:
        shared = [str(folder) if folder else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        folder = Path(shared[0])
    return folder


def _final_report(run: _Run, history: History, seconds: float) -> dict[str, Any]:
    folder, classifier = run.folder, run.classifier
    split_name, evaluation_data = (
        ("test", run.splits.test) if run.splits.test is not None else ("validation", run.val_data)
    )
    report: dict[str, Any] = {
        "run_folder": str(folder),
        "model": classifier.model_name,
        "epochs": len(history.rows),
        "train_seconds": round(seconds, 2),
        "final_epoch": history.rows[-1],
        "best_epoch": history.best_epoch,
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
    out: str | os.PathLike | None = None,
    reports: bool = True,
) -> dict[str, Any]:
    """The full classification report of a checkpoint on ``data``'s test split (or all of it).

    Without ``data``, the run's own data: its test split, or the exact validation split it held out.
    Returns plain values: ``accuracy``, ``loss``, ``count``, per-class metrics, averages, confusion
    matrix, most confident errors, ``missing_classes`` (see ``ClassificationReport.to_dict``), plus
    ``split``, ``data`` and ``checkpoint``. With ``reports``, the report's files are written to
    ``out`` or to a new ``evaluate``, ``evaluate2``... folder beside the checkpoint, and
    ``report_folder`` and ``files`` name them.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    classifier = Classifier.from_checkpoint(checkpoint, device=device, precision=precision)
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
