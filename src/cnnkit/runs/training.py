"""Training jobs, as ``cnnkit train`` runs them: train into a run folder, resume a stopped one.

A job is where a process starts working, so it sets the process up (``configure_process``), loads
the data, trains with the run folder's recorder and the console logger listening, and ends with
a report on the weights it tells the user to use (``best.pt``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint
from cnnkit.data import (
    DataSplits,
    ImageData,
    check_trainable,
    classes_without_validation,
    load_dataset,
    skipped_summary,
    write_skipped_list,
)
from cnnkit.data.balance import MULTI_LABEL_SETTINGS, SETTINGS, class_balance_summary, imbalance_note
from cnnkit.data.exclusion import exclude_images
from cnnkit.data.survey import SizeSurvey, survey_image_sizes
from cnnkit.engine import distributed
from cnnkit.engine.callbacks import CallbackList, History
from cnnkit.engine.console import ConsoleLogger
from cnnkit.engine.interrupt import stop_on_signals
from cnnkit.engine.metrics import check_metric_name
from cnnkit.engine.planning import min_steps_note, plan_steps
from cnnkit.models import check_model_arguments, model_takes
from cnnkit.recipes import DEFAULT_RECIPE, Recipe, load_recipe
from cnnkit.runs.calibration import calibrate_best_checkpoint, describe_calibration
from cnnkit.runs.choices import default_recipe, plan_sizes
from cnnkit.runs.folders import CONFIG_FILE, create_run_folder, write_config, write_report
from cnnkit.runs.imbalance import adjust_best_checkpoint, describe_adjustment, imbalance_plan
from cnnkit.runs.initialization import InitialWeights, apply_initial_weights, initial_weights
from cnnkit.runs.recorder import RunRecorder
from cnnkit.runs.records import final_report, run_config
from cnnkit.runs.splits import training_splits
from cnnkit.runs.thresholds import choose_best_thresholds, describe_thresholds
from cnnkit.runtime.device import configure_process, precision_name, precision_warning, resolve_device
from cnnkit.runtime.normalization import Normalization
from cnnkit.tasks import MULTI_LABEL, SINGLE_LABEL


@dataclass
class TrainResult:
    run_folder: Path
    history: History
    report: dict[str, Any]
    classifier: (
        Classifier  # as training left it: the last epoch's weights (or, with early stopping, the best)
    )


def train(
    data: str | os.PathLike = "cifar10",
    recipe: Recipe | str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    out: str | os.PathLike = "runs",
    name: str | None = None,
    verbose: bool = True,
    stream: TextIO | None = None,
    strict: bool = False,
    refresh_cache: bool = False,
    overrides: Mapping[str, Any] | None = None,
    init: str | os.PathLike | None = None,
    pretrained: str | os.PathLike | bool | None = None,
    callbacks: Sequence[object] = (),
    labels: str | os.PathLike | None = None,
    exclude: str | os.PathLike | None = None,
) -> TrainResult:
    """Load ``data``, train ``recipe`` into a new run folder, and evaluate ``best.pt``.

    ``recipe`` is a ``Recipe``, a recipe name or a YAML recipe file; without one, the fast recipe,
    or the photo recipe for images larger than 32 px, or the finetune recipe when starting from
    trained weights. ``overrides`` change its fields (``{"epochs": 4, "model_arguments.widths":
    [...]}``). Without an ``image_size``, photos of mixed sizes are trained at a size read from
    their headers (``runs.choices``). ``init`` starts from another run's checkpoint, ``pretrained``
    (True, or a local file) from the published ImageNet weights of the recipe's model.
    ``callbacks`` listen to the training beside the console and the run folder (e.g. a tuner's
    pruning hook, see ``cnnkit.engine.callbacks``).
    Data with a label table (``labels``, or a ``labels.csv`` in the data) trains a multi-label
    model: one sigmoid a label, mAP monitored, a threshold a label chosen on validation.
    ``exclude``: a file listing images to leave out, one path a line (``cnnkit audit``'s
    ``exclude.txt``); the run's config says how many were.
    The final evaluation uses the data's test split, or the validation split where there is none.
    Files that are not usable images are skipped and listed in the run's ``skipped.txt``;
    ``strict`` makes the first of them an error instead. ``refresh_cache`` decodes the data again
    into a new store rather than read the one kept for it (a folder's store is keyed by its files'
    names, sizes and times, so a file rewritten with the same ones is not noticed otherwise).
    ``verbose`` prints progress to ``stream``.
    """
    stream = stream or sys.stdout
    overrides = dict(overrides or {})
    check_metric_name(load_recipe(recipe or DEFAULT_RECIPE, overrides).monitor)  # fails now, before any work
    configure_process()
    job, device = distributed.initialize(device)  # under torchrun rank 0 alone prints and writes
    verbose = verbose and job.is_main
    survey = survey_image_sizes(data, refresh=refresh_cache)
    requested = overrides.get("model") or (load_recipe(recipe).model if recipe is not None else None)
    initial = initial_weights(init, pretrained, requested, progress=verbose)
    recipe, notes = _resolve_recipe(recipe, overrides, survey, initial)
    sizes = plan_sizes(recipe, survey, initial)
    if sizes.input_size is not None:
        recipe.check_input_size(sizes.input_size)  # before the data is read
    if verbose:
        for line in (*notes, sizes.note):
            if line:
                print(line, file=sys.stderr)
    splits = load_dataset(
        data,
        image_size=sizes.stored_size,
        progress=verbose,
        strict=strict,
        refresh_cache=refresh_cache,
        labels=labels,
    )
    splits, exclusion = _leave_out(splits, exclude, verbose)
    check_trainable(splits.train, splits.source)
    train_data, val_data = training_splits(splits, recipe)
    balance = class_balance_summary(train_data.labels, train_data.class_names)
    task, recipe, countering = _task_plan(recipe, train_data, val_data, balance, overrides)
    if verbose:
        _note_setup(splits, train_data, val_data, device, precision)
    classifier = _new_classifier(recipe, train_data, sizes.input_size, device, precision, task.name)
    if initial is not None:
        line = apply_initial_weights(classifier, initial)
        if verbose:
            print(line, file=sys.stderr)
    folder = _create_shared_run_folder(out, name, job)
    config = run_config(data, splits, recipe, classifier, train_data, val_data, strict)
    config["init"] = initial.source if initial is not None else None
    config["labels"] = os.path.abspath(labels) if labels is not None else None
    config["exclude"] = {**exclusion.to_dict(), "file": os.path.abspath(exclude)} if exclusion else None
    config.update(balance)  # class_counts, imbalance_ratio: also in report.json
    _plan_on_data(config, recipe, len(train_data), job.world_size, verbose)
    if verbose and (note := imbalance_note(balance, countering or SETTINGS)):
        print(note, file=sys.stderr)
    if job.is_main:
        write_config(folder, config)
        _report_skipped(folder, splits, verbose)
    if verbose:
        stream.write(_training_line(recipe, splits, classifier, train_data, val_data) + "\n")
    run = _Run(folder, classifier, recipe, splits, train_data, val_data, config, list(callbacks))
    return _train_in_folder(run, stream if verbose else None, initialize_from_data=initial is None)


def _leave_out(
    splits: DataSplits, exclude: str | os.PathLike | None, verbose: bool
) -> tuple[DataSplits, Any]:
    """``splits`` without the images ``exclude`` lists (``--exclude``), and what was left out."""
    if exclude is None:
        return splits, None
    splits, exclusion = exclude_images(splits, exclude)
    if verbose:
        print(exclusion.describe(), file=sys.stderr)
    return splits, exclusion


def _task_plan(
    recipe: Recipe, train_data: ImageData, val_data: ImageData | None, balance: dict, overrides: dict
) -> tuple[Any, Recipe, str | None]:
    """(the task the labels call for, the recipe to train, what is done about imbalance): a label
    table monitors mAP and weighs rare labels up only if asked; single-label imbalance is
    countered as ``runs.imbalance`` says."""
    task = MULTI_LABEL if train_data.multi_label else SINGLE_LABEL
    if task.multi_label:
        return task, recipe.replace(monitor=task.monitor_for(recipe.monitor)), MULTI_LABEL_SETTINGS
    recipe, countering = imbalance_plan(recipe, balance["imbalance_ratio"], bool(val_data), overrides)
    return task, recipe, countering


def _training_line(
    recipe: Recipe,
    splits: DataSplits,
    classifier: Classifier,
    train_data: ImageData,
    val_data: ImageData | None,
) -> str:
    kind = f"{len(train_data.class_names)}-label " if classifier.task.multi_label else ""
    return (
        f"Training {kind}{recipe.model} ({recipe.name} recipe) on {splits.source} "
        f"at {classifier.image_size} px: "
        f"{len(train_data)} train, {len(val_data) if val_data else 0} validation images, "
        f"{classifier.device.type} {precision_name(classifier.precision)}"
    )


def _resolve_recipe(
    recipe: Recipe | str | os.PathLike | None,
    overrides: dict[str, Any],
    survey: SizeSurvey | None,
    initial: InitialWeights | None,
) -> tuple[Recipe, list[str | None]]:
    """The run's recipe (named, or chosen for the data) with the trained weights' model and the
    overrides applied, checked before any data is read; and the lines saying what was chosen."""
    note = None
    if recipe is None:
        recipe, note = default_recipe(survey, initial, overrides.get("model"))
    chosen = load_recipe(recipe)
    if initial is not None:
        chosen = chosen.replace(model=initial.model_name, model_arguments=initial.model_arguments)
    base, chosen = chosen, load_recipe(chosen, overrides)
    if chosen.model != base.model and "model_arguments" not in overrides:
        # The recipe's model arguments were chosen for its own model (the photo recipe's
        # stem_stride is the fast network's): another model keeps those it takes, and what the
        # user set with --set model_arguments.KEY, which is checked below.
        chosen = chosen.replace(
            model_arguments={
                key: value
                for key, value in chosen.model_arguments.items()
                if model_takes(chosen.model, key) or f"model_arguments.{key}" in overrides
            }
        )
    if initial is not None and chosen.model != initial.model_name:
        raise ValueError(
            f"{initial.source} holds a {initial.model_name} network. Received: --model {chosen.model}"
        )
    check_model_arguments(chosen.model, **chosen.model_arguments)
    return chosen, [note]


def _new_classifier(
    recipe: Recipe,
    train_data: ImageData,
    input_size: int | None,
    device: str,
    precision: str,
    task: str = "single_label",
) -> Classifier:
    """The untrained classifier: the input size planned (else the images' own), stored larger by
    the recipe's evaluation crop, normalised as the recipe says."""
    stored = _square_size(train_data)
    classifier = Classifier(
        recipe.model,
        class_names=train_data.class_names,
        image_size=input_size or stored,
        normalization=Normalization.for_recipe(recipe.normalization, train_data.images),
        device=device,
        precision=precision,
        seed=recipe.seed,
        task=task,
        **recipe.model_arguments,
    )
    classifier.resize_size = stored
    return classifier


def resume(
    run_folder: str | os.PathLike,
    device: str = "auto",
    precision: str = "auto",
    verbose: bool = True,
    stream: TextIO | None = None,
    callbacks: Sequence[object] = (),
) -> TrainResult:
    """Continue the stopped run in ``run_folder`` from its ``last.pt``, as if never interrupted.

    On the same device and thread count, the final weights and metrics equal those of an
    uninterrupted run. After a hard kill, ``last.pt`` is the last finished epoch's. ``callbacks``
    listen as in ``train``; those with a ``state_key`` get back the state they saved.
    """
    folder = Path(run_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Run folder not found: {folder}")
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(
            f"{folder} is not a run folder (it has no {CONFIG_FILE}); --resume takes the folder "
            "`cnnkit train` made, e.g. runs/train"
        )
    if not (folder / "last.pt").is_file():
        raise FileNotFoundError(
            f"{folder} has no last.pt: the run stopped before finishing its first epoch. Start it again."
        )
    checkpoint = load_checkpoint(folder / "last.pt")
    state = checkpoint.training_state
    if state is None or checkpoint.recipe is None:
        raise ValueError(f"{folder / 'last.pt'} holds no training state (an older cnnkit wrote it).")
    if state["finished"]:
        raise ValueError(
            f"The run in {folder} already finished after {len(state['history'])} epochs: "
            "nothing to resume. Start a new run to train more."
        )
    recipe, config = checkpoint.recipe, checkpoint.config
    stream = stream or sys.stdout
    configure_process()
    job, device = distributed.initialize(device)
    verbose = verbose and job.is_main
    stored_size = config.get("resize_size", recipe.image_size)  # runs before resize_size: the recipe's
    splits = load_dataset(
        config["data"], image_size=stored_size, progress=verbose, labels=config.get("labels")
    )
    if config.get("exclude"):  # the same images left out as when the run started
        splits, _ = exclude_images(splits, config["exclude"]["file"])
    train_data, val_data = training_splits(splits, recipe)
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
    config = {**config, "recipe": recipe}
    run = _Run(folder, classifier, recipe, splits, train_data, val_data, config, list(callbacks))
    return _train_in_folder(run, stream if verbose else None, resume_state)


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
    callbacks: list[object] = field(default_factory=list)  # the caller's own listeners


def _train_in_folder(
    run: _Run, stream: TextIO | None, resume_state: dict | None = None, initialize_from_data: bool = True
) -> TrainResult:
    """Fit with the run folder recorder, stop cleanly on SIGINT/SIGTERM, evaluate, write the report.

    ``stream``: where progress goes (None: quiet).
    """
    folder, classifier = run.folder, run.classifier
    classifier.recipe, classifier.tta = run.recipe, run.recipe.tta
    is_main = distributed.current().is_main
    callbacks: list[object] = [ConsoleLogger(stream)] if stream is not None else []
    callbacks += run.callbacks
    if is_main:
        # The run's checkpoints are the classifier's own, plus weights, epoch and metrics each epoch.
        callbacks.append(RunRecorder(folder, classifier.to_checkpoint(config=run.config)))
    started = time.perf_counter()
    try:
        with stop_on_signals() as stop_request:
            job = classifier.training_job(
                run.train_data,
                run.val_data,
                run.recipe,
                callbacks=callbacks,
                resume_state=resume_state,
                stop_request=stop_request,
                initialize_from_data=initialize_from_data,
            )
            history = classifier.fit_job(job)
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
    adjustment = adjust_best_checkpoint(run)  # imbalanced classes: best.pt decides for the prior
    if adjustment is not None and stream is not None:
        print(describe_adjustment(adjustment), file=sys.stderr)
    calibration = calibrate_best_checkpoint(run)  # single-label: a temperature, on validation
    if calibration is not None and stream is not None:
        print(describe_calibration(calibration), file=sys.stderr)
    thresholds = choose_best_thresholds(run)  # multi-label: a threshold a label, on validation
    if thresholds is not None and stream is not None:
        print(describe_thresholds(thresholds), file=sys.stderr)
    report = final_report(run, history, time.perf_counter() - started)
    if adjustment is not None:
        report["decision_adjustment"] = adjustment
    if thresholds is not None:
        report["thresholds"] = thresholds
    if calibration is not None:
        report["calibration"] = calibration
    write_report(folder, report)
    CallbackList(callbacks).call("on_report", report)  # e.g. an experiment tracker's summary
    return TrainResult(folder, history, report, classifier)


def _plan_on_data(config: dict, recipe: Recipe, images: int, world_size: int, verbose: bool) -> None:
    """Record in ``config`` what the recipe's batch and epochs come to on ``images`` training
    images (a small set gets a smaller batch, min_steps may lengthen it); say so when that surprises."""
    plan = plan_steps(images, recipe, world_size)
    config["training_plan"] = dataclasses.asdict(plan)
    note = min_steps_note(images, recipe, plan)
    if verbose and note:
        print(note, file=sys.stderr)


def _note_setup(
    splits: DataSplits, train_data: ImageData, val_data: ImageData | None, device: str, precision: str
) -> None:
    """One line for each choice that silently costs: classes never validated, an emulated precision,
    and where validation comes from when the data brings its own folder."""
    if splits.validation is not None:
        folder = splits.folders["validation"]
        print(
            f"Validating on {folder} ({len(val_data)} images); validation_split does not apply.",
            file=sys.stderr,
        )
    unvalidated = classes_without_validation(train_data, val_data)
    if unvalidated:
        shown = ", ".join(unvalidated[:5]) + (
            f" and {len(unvalidated) - 5} more" if len(unvalidated) > 5 else ""
        )
        print(
            f"Note: too few images to hold one out for validation in class(es) {shown}: "
            "they are trained on but not validated.",
            file=sys.stderr,
        )
    warning = precision_warning(resolve_device(device), precision)
    if warning:
        print(f"Note: {warning}", file=sys.stderr)


def _create_shared_run_folder(out, name, job: distributed.Distributed) -> Path:
    """Rank 0 creates the run folder; under torchrun the other ranks learn its name from it."""
    folder = create_run_folder(out, name) if job.is_main else None
    if job.enabled:
        shared = [str(folder) if folder else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        folder = Path(shared[0])
    return folder


def _report_skipped(folder: Path, splits: DataSplits, verbose: bool) -> None:
    if not splits.skipped:
        return
    listing = folder / "skipped.txt"
    write_skipped_list(listing, splits.skipped)
    # Verbose loading has printed the summary line already; quiet runs still get it once.
    line = (
        f"Skipped files and reasons: {listing}"
        if verbose
        else skipped_summary(splits.skipped, splits.file_count, listing)
    )
    print(line, file=sys.stderr)


def _square_size(data: ImageData) -> int:
    height, width = data.images.shape[1:3]
    if height != width:
        raise ValueError(f"Images must be square; pass an image size. Received: {height}x{width} images")
    return int(height)
