"""The ``Recipe``: how to train, as one typed, validated, frozen dataclass.

A recipe is plain data: the command line builds one (a named recipe or a YAML file, plus
overrides), the engine reads it, the run folder and the checkpoint record it, and it reads back
as the same ``Recipe``. Every field is settable by name (``recipe.replace(field=value)``, or
``cnnkit train --set field=value``); values are checked against the field's type and range,
and an unknown name fails with the closest field names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from cnnkit.messages import short_repr

# Older cnnkit versions called these fields otherwise; checkpoints and run folders they wrote
# still load.
RENAMED_FIELDS = {"val_fraction": "validation_split"}


@dataclass(frozen=True)
class Recipe:
    """How to train: model, optimisation, augmentation. Override with ``recipe.replace(...)``."""

    name: str
    model: str  # registry name, see cnnkit.models.list_models()
    epochs: float  # may be fractional: training stops after ceil(steps_per_epoch * epochs) steps
    batch_size: int
    # Adam: the learning rate as PyTorch takes it. SGD: "decoupled", per 1024 examples and
    # independent of momentum: PyTorch's lr = learning_rate / (1024 * (1 + 1 / (1 - momentum))).
    learning_rate: float
    optimizer: str = "adam"  # "adam", "sgd" (Nesterov), "muon" (Muon for conv filters, SGD for the rest)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # Keras's Adam epsilon (1e-7), not PyTorch's (1e-8): the tutorial ran on Keras.
    adam_epsilon: float = 1e-7
    momentum: float = 0.9  # SGD only
    muon_learning_rate: float = 0.24  # Muon only
    muon_momentum: float = 0.6
    # Adam: PyTorch's weight_decay. SGD: decoupled, per 1024 examples and independent of the lr.
    weight_decay: float = 0.0
    bias_lr_scale: float = 1.0  # learning-rate multiplier for BatchNorm biases (SGD only)
    # "constant"; "linear": from 1 down to 0; "triangle": rises linearly from lr_start to 1 over
    # the first lr_peak of the steps, then falls linearly to lr_end.
    lr_schedule: str = "constant"
    lr_start: float = 1.0
    lr_peak: float = 0.0
    lr_end: float = 1.0
    label_smoothing: float = 0.0
    # Imbalanced classes. "balanced": each class's loss weighted by n / (classes * its count), as
    # scikit-learn's and Keras's class_weight="balanced"; a list: one weight a class, in class
    # order; "none": every image alike.
    class_weights: str | tuple[float, ...] = "none"
    # Logit-adjusted loss (Menon et al., ICLR 2021): training adds tau * log(class prior) to the
    # logits, so the model learns margins against the frequent classes; prediction uses the plain
    # logits. tau = 1 is the paper's; 0: off.
    logit_adjustment: float = 0.0
    # The order images are drawn in each epoch: "shuffle" (each image once) or "balanced" (every
    # class equally often, images drawn with replacement; seeded and resumable like a shuffle).
    sampler: str = "shuffle"
    # Imbalanced classes (largest over smallest > 3), "auto" (runs.imbalance): a recipe with none of
    # the settings above trains with logit_adjustment 0.5, and with a validation split best.pt's
    # logits then get -tau * log(class prior), tau in [-1, 2] chosen for the best validation
    # balanced accuracy (post-hoc logit adjustment, Menon et al.). "none": neither.
    imbalance_handling: str = "auto"
    # After training, "temperature": best.pt's logits are divided by one temperature fitted on the
    # validation split's negative log-likelihood (Guo et al., ICML 2017), so that a printed 0.9 is
    # right about 90 % of the time; decisions do not change. "none": probabilities as trained.
    calibration: str = "temperature"
    loss_reduction: str = "mean"  # "sum" makes the step size independent of the batch size
    drop_last: bool = False  # drop the last partial batch of each epoch
    # "none", "random" (each epoch), "alternating" (random in epoch 0, then every other epoch)
    flip: str = "none"
    translate: int = 0  # random shifts of up to this many pixels (reflect padding)
    cutout: int = 0  # zero a random square of this side in each training image (0: off)
    # Random-resized crops: each training image is a crop of this share of the stored image's area
    # (and aspect ratio, width / height, in crop_ratio), resized to image_size; (1, 1): the whole image.
    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)
    # Images are stored at image_size / eval_crop (1.15x for 0.87) and evaluated on their centre
    # image_size crop, as prediction later decodes them; 1: stored at image_size, no margin.
    eval_crop: float = 1.0
    lookahead: bool = False  # every lookahead_every steps, move the weights to an EMA of themselves
    lookahead_every: int = 5
    lookahead_start_epoch: int = 3
    lookahead_decay: float = 0.95  # per step; the EMA's decay is decay**every * (step / total)**power
    lookahead_power: float = 3.0
    # Models with a data-initialised first layer: epochs its bias trains (0: always).
    first_layer_bias_epochs: int = 0
    tta: int = 0  # test-time augmentation: 0 none, 1 mirror, 2 mirror and 1-px translates
    # Share of the training data held out for validation (stratified, seeded); 0: none. Ignored
    # when the data has its own validation folder.
    validation_split: float = 0.2
    # "scale": pixels / 255, the tutorial's preprocessing. "standardize": per-channel mean and std
    # of the training data. Either way the checkpoint stores the numbers.
    normalization: str = "scale"
    image_size: int | None = None  # None: the data's own size
    model_arguments: dict = field(default_factory=dict)  # e.g. {"widths": [64, 256, 256]}
    eval_batch_size: int = 1024  # evaluation only: larger batches, same results, faster
    # The metric that picks best.pt and drives early stopping: any metric's validation column
    # (engine.metrics: val_accuracy, val_loss, val_balanced_accuracy, val_macro_f1), whose metric
    # says which way is better; without a validation split, its training counterpart.
    monitor: str = "val_accuracy"
    # Early stopping: stop after this many epochs without a better monitored value and restore
    # the best weights (Keras's EarlyStopping(restore_best_weights=True)); 0 never stops early.
    patience: int = 0
    # Small data sets: epochs grow until training takes at least this many steps (0: as given).
    min_steps: int = 0
    # Peak memory the training batch may take; a batch that would not fit runs as micro-batches
    # whose gradients add up to the batch's (BatchNorm then normalises each micro-batch).
    memory_budget_gb: float = 4.0
    # Fine-tuning: train only the head for this many epochs, then everything with the learning
    # rate scaled by fine_tune_lr_scale (fastai's fine_tune halves it).
    freeze_epochs: int = 0
    fine_tune_lr_scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            object.__setattr__(self, item.name, coerce_field(item.name, getattr(self, item.name)))
        self.validate()

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` applied; unknown names and invalid values fail with a clear message."""
        for name in changes:
            check_field_name(name)
        replaced = dataclasses.replace(self, **changes)
        _check_schedule_shape(self, replaced, changes)
        return replaced

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field outside its allowed values."""
        for name, (allowed, ok) in _range_checks(self).items():
            if not ok:
                raise ValueError(
                    f"{name} must be {allowed}. Received: {name}={short_repr(getattr(self, name))}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain values (lists for tuples), in declaration order."""
        values = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}

    def check_input_size(self, input_size: int) -> None:
        """Fail in one line when an augmentation does not fit the model's ``input_size`` (known
        only once the data is: the recipe alone bounds them by ``image_size`` when it has one)."""
        for name in ("translate", "cutout"):
            value = getattr(self, name)
            # Reflect padding needs a shift below the side; a cutout square wider than the image
            # would blank every image.
            limit_ok = value < input_size if name == "translate" else value <= input_size
            if not limit_ok:
                bound = "below" if name == "translate" else "at most"
                raise ValueError(
                    f"{name} must be {bound} the input size ({input_size} px). Received: {name}={value}"
                )

    def stored_size(self, image_size: int) -> int:
        """The side images are stored (and prediction resizes them) at for training at ``image_size``."""
        return image_size if self.eval_crop == 1 else round(image_size / self.eval_crop)

    @property
    def random_crops(self) -> bool:
        return self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """The recipe ``to_dict`` wrote (also by older cnnkit versions: renamed fields are mapped)."""
        if not isinstance(values, dict):
            raise ValueError(f"A recipe must be a mapping of fields. Received: {type(values).__name__}")
        values = {RENAMED_FIELDS.get(key, key): value for key, value in values.items()}
        for name in values:
            check_field_name(name)
        missing = [
            item.name for item in dataclasses.fields(cls) if item.name not in values and _required(item)
        ]
        if missing:
            raise ValueError(f"A recipe needs {', '.join(missing)}. Received: fields {', '.join(values)}")
        return cls(**values)


def field_names() -> list[str]:
    return [item.name for item in dataclasses.fields(Recipe)]


def check_field_name(name: str) -> None:
    """Fail with the closest field names when ``name`` is not a ``Recipe`` field."""
    names = field_names()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = (
        f"Did you mean {' or '.join(repr(match) for match in close)}?"
        if close
        else f"Fields: {', '.join(names)}."
    )
    raise ValueError(f"Unknown recipe field. Received: {short_repr(name)}. {hint}")


def coerce_field(name: str, value: Any) -> Any:
    """``value`` as the type of the field ``name``, or a ``ValueError`` saying what the field takes.

    Integers are accepted for float fields (``epochs=8``) and integral floats for integer fields
    (``batch_size=512.0``): numbers read from YAML or a command line come either way.
    """
    hint = _TYPE_HINTS[name]
    if hint == str | tuple[float, ...]:  # class_weights: a name, or one number a class
        return _name_or_numbers(name, value)
    optional = type(None) in typing.get_args(hint)
    if value is None and optional:
        return None
    kind = typing.get_origin(hint) or hint
    if optional:
        kind = next(argument for argument in typing.get_args(hint) if argument is not type(None))
    try:
        return _coerce(kind, value)
    except (TypeError, ValueError):
        allowed = _TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind)))
        raise ValueError(
            f"{name} must be {allowed}{' or null' if optional else ''}. Received: {name}={short_repr(value)}"
        ) from None


def _name_or_numbers(name: str, value: Any) -> str | tuple[float, ...]:
    if isinstance(value, str):
        return value
    try:
        if not isinstance(value, list | tuple) or not value:
            raise TypeError
        return tuple(_coerce(float, item) for item in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a name or a list of finite numbers. Received: {name}={short_repr(value)}"
        ) from None


def _coerce(kind: Any, value: Any) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise TypeError
    if kind is float:
        # NaN and infinities mean nothing in any field (epochs=.inf would train forever).
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise TypeError
        return float(value)
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise TypeError
        return value
    if kind is tuple:  # adam_betas, crop_scale, crop_ratio: two floats
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise TypeError
        return tuple(_coerce(float, item) for item in value)
    if kind in (bool, str, dict):
        if not isinstance(value, kind):
            raise TypeError
        return dict(value) if kind is dict else value
    raise TypeError


_TYPE_NAMES = {
    float: "a finite number",
    int: "an integer",
    bool: "true or false",
    str: "a string",
    dict: "a mapping",
    tuple: "a pair of finite numbers",
}


def _required(item: dataclasses.Field) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def _range_checks(recipe: Recipe) -> dict[str, tuple[str, bool]]:
    """Each constrained field: (what it allows, whether its value is allowed). Floats are finite
    already (``coerce_field``); every number here has a range outside which it means nothing."""
    size = recipe.image_size
    return {
        "name": ("a non-empty string", bool(recipe.name.strip())),
        "epochs": ("> 0", recipe.epochs > 0),
        "batch_size": ("an integer >= 1", recipe.batch_size >= 1),
        "learning_rate": ("> 0", recipe.learning_rate > 0),
        "optimizer": ("'adam', 'sgd' or 'muon'", recipe.optimizer in ("adam", "sgd", "muon")),
        "adam_betas": ("two numbers in [0, 1)", all(0 <= beta < 1 for beta in recipe.adam_betas)),
        "adam_epsilon": ("> 0", recipe.adam_epsilon > 0),
        "momentum": ("in [0, 1)", 0 <= recipe.momentum < 1),
        "muon_learning_rate": (">= 0", recipe.muon_learning_rate >= 0),
        "muon_momentum": ("in [0, 1)", 0 <= recipe.muon_momentum < 1),
        "weight_decay": (">= 0", recipe.weight_decay >= 0),
        "bias_lr_scale": (">= 0", recipe.bias_lr_scale >= 0),
        "lr_schedule": (
            "'constant', 'linear' or 'triangle'",
            recipe.lr_schedule in ("constant", "linear", "triangle"),
        ),
        # Multipliers of the learning rate around the triangle's peak of 1 (see the field).
        "lr_start": ("in [0, 1]", 0 <= recipe.lr_start <= 1),
        "lr_peak": ("in [0, 1]", 0 <= recipe.lr_peak <= 1),
        "lr_end": ("in [0, 1]", 0 <= recipe.lr_end <= 1),
        "label_smoothing": ("in [0, 1)", 0 <= recipe.label_smoothing < 1),
        "class_weights": (
            "'none', 'balanced' or one weight >= 0 a class (not all 0)",
            recipe.class_weights in ("none", "balanced")
            or (
                isinstance(recipe.class_weights, tuple)
                and min(recipe.class_weights) >= 0
                and max(recipe.class_weights) > 0
            ),
        ),
        "logit_adjustment": ("in [0, 4]", 0 <= recipe.logit_adjustment <= 4),
        "sampler": ("'shuffle' or 'balanced'", recipe.sampler in ("shuffle", "balanced")),
        "imbalance_handling": ("'auto' or 'none'", recipe.imbalance_handling in ("auto", "none")),
        "calibration": ("'temperature' or 'none'", recipe.calibration in ("temperature", "none")),
        "loss_reduction": ("'mean' or 'sum'", recipe.loss_reduction in ("mean", "sum")),
        "flip": ("'none', 'random' or 'alternating'", recipe.flip in ("none", "random", "alternating")),
        # Bounded by the input size too, once it is known (``check_input_size``).
        "translate": (
            ">= 0 and below image_size",
            recipe.translate >= 0 and (size is None or recipe.translate < size),
        ),
        "cutout": (
            ">= 0 and at most image_size",
            recipe.cutout >= 0 and (size is None or recipe.cutout <= size),
        ),
        "crop_scale": (
            "two numbers 0 < low <= high <= 1",
            0 < recipe.crop_scale[0] <= recipe.crop_scale[1] <= 1,
        ),
        "crop_ratio": ("two numbers 0 < low <= high", 0 < recipe.crop_ratio[0] <= recipe.crop_ratio[1]),
        "eval_crop": ("in (0, 1]", 0 < recipe.eval_crop <= 1),
        "lookahead_every": (">= 1", recipe.lookahead_every >= 1),
        "lookahead_start_epoch": (">= 0", recipe.lookahead_start_epoch >= 0),
        "lookahead_decay": ("in [0, 1]", 0 <= recipe.lookahead_decay <= 1),
        "lookahead_power": (">= 0", recipe.lookahead_power >= 0),
        "first_layer_bias_epochs": (">= 0", recipe.first_layer_bias_epochs >= 0),
        "tta": ("0, 1 or 2", recipe.tta in (0, 1, 2)),
        "validation_split": ("in [0, 1)", 0 <= recipe.validation_split < 1),
        "normalization": (
            "'scale' or 'standardize'",
            recipe.normalization in ("scale", "standardize"),
        ),
        "image_size": ("null or an integer >= 4", size is None or size >= 4),
        "eval_batch_size": ("an integer >= 1", recipe.eval_batch_size >= 1),
        # Which metric names exist is the engine's (engine.metrics.check_metric_name, at training).
        "monitor": (
            "a metric's history column, e.g. 'val_accuracy', 'val_loss' or 'val_macro_f1'",
            re.fullmatch(r"[a-z][a-z0-9_]*", recipe.monitor) is not None,
        ),
        "patience": (">= 0", recipe.patience >= 0),
        "min_steps": (">= 0", recipe.min_steps >= 0),
        "memory_budget_gb": ("> 0", recipe.memory_budget_gb > 0),
        "freeze_epochs": (">= 0", recipe.freeze_epochs >= 0),
        "fine_tune_lr_scale": ("> 0", recipe.fine_tune_lr_scale > 0),
        # numpy's generators (the split) take seeds in [0, 2**32); torch's, 64 bits.
        "seed": ("an integer in [0, 2**32)", 0 <= recipe.seed < 2**32),
    }


# The triangle schedule's shape. The linear and constant schedules ignore these fields, yet the
# named linear recipes carry airbench94's triangle values from the recipe they derive from (their
# published lineage; old run folders and best.yaml files hold them too), so a value alone says
# nothing: what is refused is a user *setting* one (--set, a recipe file, a search space,
# ``replace``) to a value that would change the triangle while the schedule is another. Setting
# it to its neutral default (where the triangle is flat) or to what it already was is no change.
TRIANGLE_FIELDS = ("lr_start", "lr_peak", "lr_end")


def _check_schedule_shape(before: Recipe, after: Recipe, changes: dict[str, Any]) -> None:
    if after.lr_schedule == "triangle":
        return
    for name in TRIANGLE_FIELDS:
        value = getattr(after, name)
        if name in changes and value not in (getattr(before, name), _DEFAULTS[name]):
            raise ValueError(
                f"{name} is used by the triangle schedule only. "
                f"Received: {name}={value!r} with lr_schedule={after.lr_schedule!r}"
            )


_TYPE_HINTS = typing.get_type_hints(Recipe)
_DEFAULTS = {item.name: item.default for item in dataclasses.fields(Recipe)}
