"""Search spaces for ``cnnkit tune``: which recipe fields a study varies, and over what values.

A space maps recipe field names (a dotted key sets one model argument) to a distribution; in a
YAML file (``--space space.yaml``)::

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    epochs: {type: int, low: 3, high: 10}
    batch_size: {type: categorical, choices: [32, 64, 128]}
    model_arguments.widths: {type: categorical, choices: [[64, 256, 256], [96, 384, 384]]}

``default_space(recipe)`` gives each recipe a space around its own values; a file replaces it
whole. Every mistake in a file is one line naming the file and the key. Nothing here imports
Optuna: ``Distribution.suggest`` is handed the trial.
"""

from __future__ import annotations

import contextlib
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnkit.messages import short_repr
from cnnkit.recipes import Recipe, apply_overrides, get_recipe
from cnnkit.recipes.files import read_yaml_file
from cnnkit.recipes.recipe import check_field_name

DISTRIBUTION_TYPES = ("float", "int", "categorical")
_SETTINGS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}
# Fields a study cannot vary: the monitored metric fixes the study's direction (maximise
# val_accuracy, minimise val_loss), and the name is the recipe's, not a setting.
_UNSEARCHABLE = {"monitor": "it sets the study's direction", "name": "it only names the recipe"}
_FIELD_TYPES = typing.get_type_hints(Recipe)
_MAPPING_FIELDS = tuple(
    name for name, value in get_recipe("tutorial").to_dict().items() if isinstance(value, dict)
)
# The networks a recipe's "width" dimension chooses between, by model: the tutorial network has
# no width argument, so its dimension is the tutorial's own "improvement 1" (an extra convolution).
_NETWORK_CHOICES = {
    "tutorial": ("tutorial", "tutorial-extra-conv"),
    "tutorial-extra-conv": ("tutorial", "tutorial-extra-conv"),
}
_WIDTH_MODELS = {"fast": (64, 256, 256), "fast-ensemble": (64, 256, 256)}  # their default widths
_WIDTH_SCALES = (0.75, 1.0, 1.5)


@dataclass(frozen=True)
class Distribution:
    """Where one recipe field's values come from: a float or int range, or a list of choices."""

    type: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any, key: str) -> Any:
        """The recipe value ``trial`` (an ``optuna.Trial``) samples for the field ``key``."""
        if self.type == "float":
            return trial.suggest_float(key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(key, int(self.low), int(self.high), step=step, log=self.log)
        label = trial.suggest_categorical(key, [choice_label(choice) for choice in self.choices])
        return self.recipe_value(label)

    def recipe_value(self, stored: Any) -> Any:
        """The recipe value of a parameter as Optuna stored it (a list choice's text -> the list)."""
        if self.type != "categorical":
            return stored
        return next((choice for choice in self.choices if choice_label(choice) == stored), stored)

    def to_dict(self) -> dict[str, Any]:
        """The distribution as a space file writes it (``parse_space`` reads it back)."""
        if self.type == "categorical":
            return {"type": "categorical", "choices": [_plain(choice) for choice in self.choices]}
        values: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            values["log"] = True
        if self.step is not None:
            values["step"] = self.step
        return values


def choice_label(choice: Any) -> Any:
    """A categorical choice as Optuna stores it: scalars as they are, a list as its YAML text.

    Optuna persists only None, bools, numbers and strings; ``[64, 256, 256]`` becomes
    ``"[64, 256, 256]"`` in the study and back to the list in the recipe.
    """
    if choice is None or isinstance(choice, bool | int | float | str):
        return choice
    return yaml.safe_dump(_plain(choice), default_flow_style=True, width=1000).strip()


def default_space(recipe: Recipe) -> dict[str, Distribution]:
    """A space around ``recipe``'s own values: the knobs that usually matter, at sensible ranges.

    Learning rate on a log scale from a tenth to ten times the recipe's (Muon's filter rate from a
    third to three times), weight decay on a log scale, label smoothing 0-0.3, epochs from half to
    twice the recipe's, the batch halved, kept or doubled, augmentation strength (flip, 0-4 px
    translation) and the network's width (the fast network's widths x0.75 / x1 / x1.5; the
    tutorial network with or without its extra convolution).
    """
    learning_rate, batch = recipe.learning_rate, recipe.batch_size
    space = {
        "learning_rate": Distribution("float", _round(learning_rate / 10), _round(learning_rate * 10), True),
        "weight_decay": _weight_decay_range(recipe.weight_decay),
        "label_smoothing": Distribution("float", 0.0, 0.3),
        "epochs": Distribution(
            "int", max(1, math.ceil(recipe.epochs / 2)), max(2, math.ceil(recipe.epochs * 2))
        ),
        "batch_size": Distribution(
            "categorical", choices=tuple(dict.fromkeys((max(1, batch // 2), batch, 2 * batch)))
        ),
        "flip": Distribution("categorical", choices=("none", "random", "alternating")),
        "translate": Distribution("int", 0, 4),
    }
    if recipe.optimizer == "muon":
        rate = recipe.muon_learning_rate or 0.24
        space["muon_learning_rate"] = Distribution("float", _round(rate / 3), _round(rate * 3), True)
    if recipe.model in _NETWORK_CHOICES:
        space["model"] = Distribution("categorical", choices=_NETWORK_CHOICES[recipe.model])
    elif recipe.model in _WIDTH_MODELS:
        widths = recipe.model_arguments.get("widths", _WIDTH_MODELS[recipe.model])
        choices = [[max(8, round(width * scale / 8) * 8) for width in widths] for scale in _WIDTH_SCALES]
        space["model_arguments.widths"] = Distribution("categorical", choices=tuple(choices))
    return space


def read_space_file(path: str | os.PathLike) -> dict[str, Distribution]:
    """The search space a YAML file describes (see the module's docstring); one-line errors."""
    path = Path(path)
    values = read_yaml_file(path, "search space file")
    return parse_space(values, str(path))


def parse_space(values: Any, source: str) -> dict[str, Distribution]:
    """A space from plain values (a YAML file's, or a study's record); ``source`` names them in errors."""
    if not isinstance(values, Mapping) or not values:
        raise ValueError(
            f"{source} must map recipe fields to distributions, e.g. "
            "learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
        )
    return {
        str(key): _parse_distribution(str(key), value, f"{source}: {key}") for key, value in values.items()
    }


def check_space(space: Mapping[str, Distribution], recipe: Recipe, source: str) -> None:
    """Fail in one line when a bound or choice of ``space`` is not a valid value for ``recipe``.

    Ranges are checked at both ends; a combination of values can still be invalid, and then that
    trial fails with the reason while the study goes on.
    """
    from cnnkit.models import check_model_arguments

    for key, distribution in space.items():
        values = (
            distribution.choices
            if distribution.type == "categorical"
            else (distribution.low, distribution.high)
        )
        for value in values:
            try:
                candidate = apply_overrides(recipe, {key: value})
                check_model_arguments(candidate.model, **candidate.model_arguments)
            except ValueError as error:
                raise ValueError(f"{source}: {key}: {error}") from None


def space_to_yaml(space: Mapping[str, Distribution], comments: tuple[str, ...] = ()) -> str:
    """``space`` as a space file (what ``--space`` takes), one field a line."""
    header = "".join(f"# {line}\n" for line in comments)
    values = {key: distribution.to_dict() for key, distribution in space.items()}
    return header + yaml.safe_dump(values, sort_keys=False, default_flow_style=None, width=1000)


def space_to_plain(space: Mapping[str, Distribution]) -> dict[str, dict[str, Any]]:
    """``space`` as JSON-ready values (a study records its space with them)."""
    return {key: distribution.to_dict() for key, distribution in space.items()}


def _parse_distribution(key: str, value: Any, where: str) -> Distribution:
    _check_key(key, where)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{where} must be a distribution like {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}. "
            f"Received: {short_repr(value)}"
        )
    kind = value.get("type")
    if kind not in DISTRIBUTION_TYPES:
        raise ValueError(
            f"{where}: type must be float, int or categorical. Received: type={short_repr(kind)}"
        )
    unknown = [str(name) for name in value if name not in _SETTINGS[kind]]
    if unknown:
        takes = ", ".join(_SETTINGS[kind])
        article = "an" if kind == "int" else "a"
        raise ValueError(f"{where}: {article} {kind} distribution takes {takes}. Received: {unknown[0]}")
    if kind == "categorical":
        return _categorical(value.get("choices"), where)
    name = key.partition(".")[0]
    if (
        kind == "float"
        and "." not in key
        and float not in (typing.get_args(_FIELD_TYPES[name]) or (_FIELD_TYPES[name],))
    ):
        raise ValueError(
            f"{where}: {name} takes no fractions: use type int or categorical. Received: type=float"
        )
    return _range(kind, value, where)


def _check_key(key: str, where: str) -> None:
    name, dot, _ = key.partition(".")
    try:
        check_field_name(name)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if name in _UNSEARCHABLE:
        raise ValueError(f"{where}: {name} cannot be searched: {_UNSEARCHABLE[name]}.")
    if dot and name not in _MAPPING_FIELDS:
        raise ValueError(f"{where}: only {' and '.join(_MAPPING_FIELDS)} takes dotted keys.")


def _categorical(choices: Any, where: str) -> Distribution:
    if not isinstance(choices, list | tuple) or not choices:
        raise ValueError(
            f"{where}: choices must be a non-empty list. Received: choices={short_repr(choices)}"
        )
    labels = [choice_label(choice) for choice in choices]
    if len(set(map(repr, labels))) != len(labels):
        raise ValueError(
            f"{where}: choices must differ from each other. Received: choices={short_repr(choices)}"
        )
    return Distribution("categorical", choices=tuple(choices))


def _range(kind: str, value: Mapping, where: str) -> Distribution:
    low, high = (_number(value.get(name), name, kind, where) for name in ("low", "high"))
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false. Received: log={short_repr(log)}")
    step = None if value.get("step") is None else _number(value["step"], "step", kind, where)
    if low >= high:
        raise ValueError(f"{where}: low must be below high. Received: low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"{where}: a log scale needs low > 0. Received: low={low}")
    if step is not None and (step <= 0 or log):
        reason = "a log scale takes no step" if log else "step must be > 0"
        raise ValueError(f"{where}: {reason}. Received: step={step}")
    return Distribution(kind, low, high, log, step)


def _number(value: Any, name: str, kind: str, where: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if value is None:
        raise ValueError(f"{where}: the {kind} distribution needs {name}.")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be a number. Received: {name}={short_repr(value)}")
    if kind == "int":
        if not float(value).is_integer():
            raise ValueError(
                f"{where}: {name} of an int distribution must be whole. Received: {name}={short_repr(value)}"
            )
        return int(value)
    return float(value)


def _weight_decay_range(weight_decay: float) -> Distribution:
    """A tenth to ten times the recipe's weight decay; without one, 1e-6 to 1e-3 (log: never 0)."""
    if weight_decay > 0:
        return Distribution("float", _round(weight_decay / 10), _round(weight_decay * 10), True)
    return Distribution("float", 1e-6, 1e-3, True)


def _round(value: float) -> float:
    """Three significant digits: bounds that read well in a space file."""
    return float(f"{value:.3g}")


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
