"""Which data a run trains, validates and reports on, and how a run's files name each part.

A source may bring its own validation folder (``val/``, ``valid/`` or ``validation/``) and test
folder (``test/``); without a validation folder, a stratified, seeded share of the training
images is held out (the recipe's ``validation_split``). The final report uses the test split,
or the validation split for data without one.
"""

from __future__ import annotations

from cnnkit.data import DataSplits, ImageData, split_train_val
from cnnkit.recipes import Recipe


def training_splits(splits: DataSplits, recipe: Recipe) -> tuple[ImageData, ImageData | None]:
    """(train, validation): the source's own validation folder, else a share carved from train."""
    if splits.validation is not None:
        return splits.train, splits.validation
    return split_train_val(splits.train, recipe.validation_split, recipe.seed)


def report_split(splits: DataSplits, validation: ImageData | None) -> tuple[str, ImageData | None]:
    """The split a run's final report scores: ``("test", ...)``, else ``("validation", ...)``."""
    if splits.test is not None:
        return "test", splits.test
    return "validation", validation


def split_roles(splits: DataSplits, recipe: Recipe) -> dict[str, str | None]:
    """What served as what, in words for a run's config and report."""
    train = splits.folders.get("train", splits.source)
    if "validation" in splits.folders:
        validation = splits.folders["validation"]
    elif recipe.validation_split:
        validation = f"{recipe.validation_split:g} of the training images (stratified, seed {recipe.seed})"
    else:
        validation = None
    test = splits.folders.get("test") or (
        f"{splits.source}: its test split" if splits.test is not None else None
    )
    return {"train": train, "validation": validation, "test": test}
