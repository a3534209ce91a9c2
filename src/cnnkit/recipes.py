"""Named hyperparameter sets. Every default cnnkit trains with lives here.

A recipe is plain data: the engine reads it, the run folder records it, a checkpoint carries it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


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
    loss_reduction: str = "mean"  # "sum" makes the step size independent of the batch size
    drop_last: bool = False  # drop the last partial batch of each epoch
    flip: str = (
        "none"  # "none", "random" (each epoch), "alternating" (random in epoch 0, then every other epoch)
    )
    translate: int = 0  # random shifts of up to this many pixels (reflect padding)
    cutout: int = 0  # zero a random square of this side in each training image (0: off)
    lookahead: bool = False  # every lookahead_every steps, move the weights to an EMA of themselves
    lookahead_every: int = 5
    lookahead_start_epoch: int = 3
    lookahead_decay: float = 0.95  # per step; the EMA's decay is decay**every * (step / total)**power
    lookahead_power: float = 3.0
    first_layer_bias_epochs: int = (
        0  # models with a data-initialised first layer: epochs its bias trains (0: always)
    )
    tta: int = 0  # test-time augmentation: 0 none, 1 mirror, 2 mirror and 1-px translates
    val_fraction: float = 0.2  # share of the training data held out (stratified, seeded)
    # "scale": pixels / 255, the tutorial's preprocessing. "standardize": per-channel mean and std
    # of the training data. Either way the checkpoint stores the numbers.
    normalization: str = "scale"
    image_size: int | None = None  # None: the data's own size
    model_arguments: dict = field(default_factory=dict)  # e.g. {"widths": [64, 256, 256]}
    eval_batch_size: int = 1024  # evaluation only: larger batches, same results, faster
    # The metric that picks best.pt and drives early stopping: "val_accuracy" (higher is better)
    # or "val_loss" (lower is better); without a validation split, its training counterpart.
    monitor: str = "val_accuracy"
    # Early stopping: stop after this many epochs without a better monitored value and restore
    # the best weights (Keras's EarlyStopping(restore_best_weights=True)); 0 never stops early.
    patience: int = 0
    seed: int = 0

    def replace(self, **changes: object) -> Recipe:
        """A copy with ``changes`` applied; unknown or invalid values fail with a clear message."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"Unknown recipe field(s): {', '.join(sorted(unknown))}.")
        recipe = dataclasses.replace(self, **changes)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        checks = [
            (self.epochs > 0, "epochs", "> 0"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.learning_rate > 0, "learning_rate", "> 0"),
            (0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)"),
            (self.optimizer in ("adam", "sgd", "muon"), "optimizer", "'adam', 'sgd' or 'muon'"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (
                self.lr_schedule in ("constant", "linear", "triangle"),
                "lr_schedule",
                "'constant', 'linear' or 'triangle'",
            ),
            (self.loss_reduction in ("mean", "sum"), "loss_reduction", "'mean' or 'sum'"),
            (self.flip in ("none", "random", "alternating"), "flip", "'none', 'random' or 'alternating'"),
            (self.translate >= 0, "translate", ">= 0"),
            (self.cutout >= 0, "cutout", ">= 0"),
            (self.tta in (0, 1, 2), "tta", "0, 1 or 2"),
            (self.normalization in ("scale", "standardize"), "normalization", "'scale' or 'standardize'"),
            (self.image_size is None or self.image_size >= 4, "image_size", "None or >= 4"),
            (self.monitor in ("val_accuracy", "val_loss"), "monitor", "'val_accuracy' or 'val_loss'"),
            (self.patience >= 0, "patience", ">= 0"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}. Received: {name}={getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        """The recipe ``to_dict`` wrote (as stored in checkpoints, lists for tuples)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown recipe field(s): {', '.join(sorted(unknown))}.")
        values = dict(values)
        if "adam_betas" in values:
            values["adam_betas"] = tuple(values["adam_betas"])
        recipe = cls(**values)
        recipe.validate()
        return recipe


_TUTORIAL = Recipe(name="tutorial", model="tutorial", epochs=5, batch_size=32, learning_rate=1e-3)

# airbench94's recipe (Keller Jordan, 2024), as published, on the fast network.
_AIRBENCH94 = Recipe(
    name="airbench94",
    model="fast",
    epochs=9.9,
    batch_size=1024,
    optimizer="sgd",
    learning_rate=11.5,
    momentum=0.85,
    weight_decay=0.0153,
    bias_lr_scale=64.0,
    lr_schedule="triangle",
    lr_start=0.2,
    lr_peak=0.23,
    lr_end=0.07,
    label_smoothing=0.2,
    loss_reduction="sum",
    drop_last=True,
    flip="alternating",
    translate=2,
    lookahead=True,
    first_layer_bias_epochs=3,
    tta=2,
    normalization="standardize",
    model_arguments={"logit_scale": 1 / 9, "unit_head": False},
)

# airbench94's Muon variant (2024): 8 epochs at batch 2000 reach what airbench94 reaches in 9.9,
# with Muon on the filters, SGD on biases and head, a linear decay and no lookahead.
_AIRBENCH94_MUON = _AIRBENCH94.replace(
    name="airbench94-muon",
    epochs=8,
    batch_size=2000,
    optimizer="muon",
    learning_rate=0.67,  # the head's; biases get 0.053
    bias_lr_scale=0.053 / 0.67,
    momentum=0.85,
    muon_learning_rate=0.24,
    muon_momentum=0.6,
    weight_decay=2e-6,  # per example
    lr_schedule="linear",
    lookahead=False,
    model_arguments={},  # the fast network's defaults are this variant's head
)

_RECIPES: dict[str, Recipe] = {
    # The reference tutorial, exactly: Adam (Keras defaults), batch 32, 5 epochs, 20% validation.
    "tutorial": _TUTORIAL,
    "airbench94": _AIRBENCH94,
    "airbench94-muon": _AIRBENCH94_MUON,
    # The default: on this 2-core CPU the Muon variant measured 90.45% (TTA, seed 0, 40k/10k split)
    # in 257 s against airbench94's 89.71% in 355 s (docs/benchmarks.md).
    "fast": _AIRBENCH94_MUON.replace(name="fast"),
    # The longer preset: the Muon recipe at airbench95's widths (128/384/384), 20 epochs. On this
    # CPU (40k/10k split): 12 epochs 91.17% in 849 s (seed 0); 20 epochs 91.53 +- 0.21% over
    # seeds 0-2 in 1,470 s, about 31 min on all 50,000 images against a 40 min budget. Wider
    # (128/384/512), residual groups and a two-member ensemble measured no better for their
    # time (docs/benchmarks.md).
    "best": _AIRBENCH94_MUON.replace(
        name="best",
        epochs=20,
        model_arguments={"widths": [128, 384, 384]},
    ),
}

DEFAULT_RECIPE = "fast"


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``."""
    if name not in _RECIPES:
        raise ValueError(
            f"Unknown recipe. Received: recipe={name!r}. Available: {', '.join(list_recipes())}."
        )
    return _RECIPES[name]
