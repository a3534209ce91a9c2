"""Named hyperparameter sets. Every default cnnkit trains with lives here.

A recipe is plain data: the engine reads it, the run folder records it, a checkpoint carries it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    """How to train: model, optimisation, data handling. Override fields with ``recipe.replace(...)``."""

    name: str
    model: str  # registry name, see cnnkit.models.list_models()
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "adam"  # only "adam" so far
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # Keras's Adam epsilon (1e-7), not PyTorch's (1e-8): the tutorial ran on Keras.
    adam_epsilon: float = 1e-7
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    val_fraction: float = 0.2  # share of the training data held out (stratified, seeded)
    # "scale": pixels / 255, the tutorial's preprocessing. Later recipes standardise per channel
    # with statistics of the training data; either way the checkpoint stores the numbers.
    normalization: str = "scale"
    image_size: int | None = None  # None: the data's own size
    eval_batch_size: int = 1024  # evaluation only: larger batches, same results, faster
    seed: int = 0
    extra: dict = field(default_factory=dict)  # room for recipe-specific knobs

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
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.learning_rate > 0, "learning_rate", "> 0"),
            (0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)"),
            (self.optimizer == "adam", "optimizer", "'adam'"),
            (
                self.normalization in ("scale", "standardize"),
                "normalization",
                "'scale' or 'standardize'",
            ),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}. Received: {name}={getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_RECIPES: dict[str, Recipe] = {
    # The reference tutorial, exactly: Adam (Keras defaults), batch 32, 5 epochs, 20% validation.
    "tutorial": Recipe(name="tutorial", model="tutorial", epochs=5, batch_size=32, learning_rate=1e-3),
}

DEFAULT_RECIPE = "tutorial"


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``."""
    if name not in _RECIPES:
        raise ValueError(
            f"Unknown recipe. Received: recipe={name!r}. Available: {', '.join(list_recipes())}."
        )
    return _RECIPES[name]


def recipe_from_dict(values: dict) -> Recipe:
    """Rebuild a recipe from ``Recipe.to_dict()`` output (e.g. stored in a checkpoint)."""
    values = dict(values)
    values["adam_betas"] = tuple(values.get("adam_betas", (0.9, 0.999)))
    known = {f.name for f in dataclasses.fields(Recipe)}
    return Recipe(**{k: v for k, v in values.items() if k in known})
