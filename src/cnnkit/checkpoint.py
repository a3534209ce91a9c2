"""Self-describing checkpoints: everything needed to predict is in the file.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(weights_only=True)``, which cannot run code hidden in a crafted file. It holds the
recipe once, as a typed ``Recipe``, and its metrics grouped by the data they were measured on.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import __version__
from cnnkit.fileio import atomic_write_with
from cnnkit.messages import short_repr
from cnnkit.models import create_model
from cnnkit.recipes import Recipe
from cnnkit.reports.splits import metrics_by_split
from cnnkit.runtime.normalization import Normalization
from cnnkit.tasks import get_task
from cnnkit.tasks.calibration import check_confidence_map

FORMAT = "cnnkit-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model_name", "model_arguments", "class_names", "image_size", "normalization", "state_dict")


@dataclass
class Checkpoint:
    """The contents of a checkpoint file, unpacked."""

    model_name: str
    model_arguments: dict[str, Any]
    class_names: list[str]
    image_size: int
    normalization: Normalization
    state_dict: dict[str, torch.Tensor]
    recipe: Recipe | None = None  # None for a model that was never trained by a recipe
    config: dict[str, Any] = field(default_factory=dict)  # the run's settings (runs.training)
    epoch: int = 0
    # By split: {"train": {"loss": .., "accuracy": ..}, "validation": {...}, "test": {...}}.
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    cnnkit_version: str = __version__
    optimizer_state: dict[str, Any] | None = None
    # last.pt only: step, RNG states, data position, history... (engine.training_state)
    training_state: dict[str, Any] | None = None
    # Prediction resizes images to this square, then keeps the centre image_size square (None:
    # image_size, no crop). Recipes trained on random crops store theirs (eval_crop).
    resize_size: int | None = None
    # The kind of labels (cnnkit.tasks): what the outputs mean and how a prediction is decided.
    task: str = "single_label"
    # Added to the logits at prediction (a post-hoc logit adjustment for imbalanced classes, one
    # number a class; None: none). Part of the model: evaluate, predict, export and serve apply it.
    logit_offset: list[float] | None = None
    # Multi-label only: a probability threshold a label, chosen on the validation split for that
    # label's best F1 (None: 0.5 each, e.g. trained without a validation split).
    thresholds: list[float] | None = None
    # The logits are divided by it before the output activation (temperature scaling, chosen on
    # the validation split: runs.calibration); None: 1, the probabilities as trained.
    temperature: float | None = None
    # Single-label, after the temperature: knots [confidences, accuracies] of the map from the top
    # probability to how often it is right, fitted on validation (tasks.calibration); None: none.
    confidence_map: list[list[float]] | None = None

    def __post_init__(self) -> None:
        self.resize_size = int(self.resize_size or self.image_size)
        get_task(self.task)  # one line naming an unknown task
        if self.logit_offset is not None and len(self.logit_offset) != len(self.class_names):
            raise ValueError(
                f"logit_offset needs one number a class ({len(self.class_names)}). "
                f"Received: {len(self.logit_offset)} numbers"
            )
        if self.thresholds is not None:
            values = list(self.thresholds)
            if len(values) != len(self.class_names) or not all(
                isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1
                for value in values
            ):
                raise ValueError(
                    f"thresholds needs one probability in (0, 1) a label ({len(self.class_names)}). "
                    f"Received: {short_repr(self.thresholds)}"
                )
            self.thresholds = [float(value) for value in values]
        if self.temperature is not None:
            value = self.temperature
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"temperature must be a positive number. Received: temperature={value!r}")
            self.temperature = float(value)
        if self.confidence_map is not None:
            self.confidence_map = check_confidence_map(self.confidence_map)

    @property
    def tta(self) -> int:
        """The test-time augmentation level of the recipe it was trained with (0: none)."""
        return self.recipe.tta if self.recipe is not None else 0

    def build_model(self, source: str | os.PathLike = "the checkpoint") -> nn.Module:
        """The model, rebuilt from the registry and loaded with the stored weights (on CPU)."""
        model = create_model(self.model_name, **self.model_arguments)
        load_weights(model, self.state_dict, source)
        return model


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``model.load_state_dict`` with one line naming what is missing, unexpected or misshapen."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    misshapen = [
        f"{name} {tuple(state_dict[name].shape)} (the model has {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state_dict and tuple(state_dict[name].shape) != tuple(tensor.shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape differs", misshapen)):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ValueError(
            f"The weights in {source} do not fit the {model.model_name} model ({'; '.join(problems)})."
        )
    model.load_state_dict(state_dict)


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically: the previous file survives any failure mid-write.

    A checkpoint with a NaN or infinite weight or metric is refused (``FloatingPointError``): a
    diverged model is never saved as a result, and the file it would replace is kept.
    """
    _check_finite(path, checkpoint)
    contents = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cnnkit_version": checkpoint.cnnkit_version,
        "model_name": checkpoint.model_name,
        "model_arguments": to_plain(checkpoint.model_arguments),
        "class_names": list(checkpoint.class_names),
        "image_size": int(checkpoint.image_size),
        "resize_size": int(checkpoint.resize_size),
        "task": checkpoint.task,
        "logit_offset": checkpoint.logit_offset,
        "thresholds": checkpoint.thresholds,
        "temperature": checkpoint.temperature,
        "confidence_map": checkpoint.confidence_map,
        "normalization": checkpoint.normalization.to_dict(),
        "recipe": checkpoint.recipe.to_dict() if checkpoint.recipe is not None else None,
        "config": to_plain({key: value for key, value in checkpoint.config.items() if key != "recipe"}),
        "epoch": int(checkpoint.epoch),
        "metrics": to_plain(metrics_by_split(checkpoint.metrics)),
        "state_dict": {
            key: value.detach().cpu().contiguous() for key, value in checkpoint.state_dict.items()
        },
    }
    if checkpoint.optimizer_state is not None:
        contents["optimizer_state"] = checkpoint.optimizer_state
    if checkpoint.training_state is not None:
        contents["training_state"] = checkpoint.training_state
    path = Path(path)
    atomic_write_with(path, lambda file: torch.save(contents, file))
    return path


def _with_legacy_defaults(model_name: str, arguments: dict) -> dict:
    """A checkpoint's model arguments, completed with what its network was built with when a
    default has changed since: the fast family's stem was full-resolution (stride 1) at every
    input size before its default became "auto" (which differs above 48 px), and its BatchNorm's
    eps was airbench's 1e-12 before it became 1e-3."""
    if model_name not in ("fast", "fast-ensemble"):
        return arguments
    legacy = {"stem_stride": 1, "batchnorm_eps": 1e-12}
    return {**{key: value for key, value in legacy.items() if key not in arguments}, **arguments}


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (any version); fails in one line on anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    contents = _read_contents(path)
    if not isinstance(contents, dict) or contents.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cnnkit checkpoint (no '{FORMAT}' marker).")
    if contents.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer cnnkit ({contents.get('cnnkit_version')}); "
            f"this is cnnkit {__version__}. Upgrade cnnkit to read it."
        )
    missing = [key for key in REQUIRED_KEYS if key not in contents]
    if missing:
        raise ValueError(f"{path} is an incomplete cnnkit checkpoint: it has no {', '.join(missing)}.")
    config = dict(contents.get("config") or {})
    # Older checkpoints kept the recipe twice (also in the config) and as a plain dict.
    recipe_values = contents.get("recipe") or config.get("recipe")
    config.pop("recipe", None)
    try:
        recipe = Recipe.from_dict(recipe_values) if recipe_values else None
    except ValueError as error:
        raise ValueError(f"{path} holds a recipe this cnnkit cannot read ({error})") from None
    try:
        return Checkpoint(
            model_name=contents["model_name"],
            model_arguments=_with_legacy_defaults(contents["model_name"], contents["model_arguments"]),
            class_names=list(contents["class_names"]),
            image_size=contents["image_size"],
            normalization=Normalization.from_dict(contents["normalization"]),
            state_dict=contents["state_dict"],
            recipe=recipe,
            config=config,
            epoch=contents.get("epoch", 0),
            metrics=metrics_by_split(contents.get("metrics") or {}),
            cnnkit_version=contents.get("cnnkit_version", "unknown"),
            optimizer_state=contents.get("optimizer_state"),
            training_state=contents.get("training_state"),
            resize_size=contents.get("resize_size"),
            task=contents.get("task") or "single_label",  # every checkpoint before tasks was single-label
            logit_offset=contents.get("logit_offset"),
            thresholds=contents.get("thresholds"),
            temperature=contents.get("temperature"),
            confidence_map=contents.get("confidence_map"),
        )
    except ValueError as error:  # a field out of range (task, logit_offset): name the file
        raise ValueError(f"{path}: {error}") from None


def _read_contents(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # A foreign pickle draws torch's notes ("Detected pickle protocol 5 ..."): the one-line
            # error below says what matters.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # torch's own message suggests weights_only=False, which is exactly what we must not do.
        raise ValueError(f"Cannot read {path} as a cnnkit checkpoint: {_why_unreadable(path)}.") from None


def _why_unreadable(path: Path) -> str:
    """torch.save writes a zip archive (``PK``); older files are bare pickles (``0x80``)."""
    with open(path, "rb") as file:
        head = file.read(2)
    if head == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError):
            return "the file is truncated or damaged (its archive cannot be read); copy or save it again"
        if damaged is not None:
            return f"the file is damaged (its part {damaged} fails its checksum); copy or save it again"
    elif head not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "it is not a PyTorch checkpoint file"
    return (
        "it holds objects other than tensors and plain containers, which cnnkit refuses to load "
        "because they could run code"
    )


def _check_finite(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    broken = [
        name
        for name, tensor in checkpoint.state_dict.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    broken += [
        f"metric {name}"
        for name, value in _flat_items(checkpoint.metrics)
        if isinstance(value, float) and not math.isfinite(value)
    ]
    if broken:
        shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        raise FloatingPointError(f"Refusing to write {path}: non-finite values in {shown}.")


def _flat_items(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(values, dict):
        return [(prefix, values)]
    return [
        item for key, value in values.items() for item in _flat_items(value, f"{prefix}.{key}".lstrip("."))
    ]


def to_plain(value: Any) -> Any:
    """Tuples -> lists, paths -> strings, recursively: only types ``weights_only`` accepts."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool):
        return value
    for kind in (str, int, float):  # exact built-in types: subclasses (TorchVersion) don't serialise
        if isinstance(value, kind):
            return kind(value)
    return str(value)
