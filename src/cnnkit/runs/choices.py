"""What a run decides from its data when the user did not say: the recipe and the image sizes.

``cnnkit train --data photos`` must work with no other flag on a folder of mixed-size photos, as
Keras's ``image_dataset_from_directory`` and Ultralytics do: the sizes are read from the files'
headers (``data.survey``), the photo recipe is chosen for images larger than CIFAR's 32 px, and
each choice is said in one line that names the flag to change it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.data.survey import SizeSurvey, choose_image_size
from cnnkit.models import minimum_image_size, model_takes
from cnnkit.recipes import (
    DEFAULT_RECIPE,
    FINE_TUNE_RECIPE,
    MODEL_RECIPES,
    OTHER_MODEL_RECIPE,
    PHOTO_RECIPE,
    Recipe,
)
from cnnkit.runs.initialization import InitialWeights

CIFAR_SIZE = 32


def default_recipe(
    survey: SizeSurvey | None, initial: InitialWeights | None, model: str | None = None
) -> tuple[str, str | None]:
    """The recipe to train with when none is named, and the line that says why (None: the default).

    ``model`` is the network the user named (``--model``), if any: the default and photo recipes
    are the fast network's (Muon's step sizes suit its filters; a ResNet-18 does not learn with
    them), so another network gets the recipe made for it (``MODEL_RECIPES``) or Adam's."""
    if initial is not None:
        return (
            FINE_TUNE_RECIPE,
            f"Fine-tuning trained weights: the {FINE_TUNE_RECIPE} recipe (--recipe to change).",
        )
    if model is not None and not model_takes(model, "stem_stride"):  # outside the fast family
        recipe = MODEL_RECIPES.get(model, OTHER_MODEL_RECIPE)
        return recipe, f"Training {model}: the {recipe} recipe (--recipe to change)."
    if survey is not None and survey.median > CIFAR_SIZE:
        return (
            PHOTO_RECIPE,
            f"Images larger than {CIFAR_SIZE} px: the {PHOTO_RECIPE} recipe (--recipe to change).",
        )
    return DEFAULT_RECIPE, None


@dataclass(frozen=True)
class SizePlan:
    """The model's input size and the size images are stored at (and resized to by prediction)."""

    input_size: int | None  # None: the data's own size (read once it is decoded)
    stored_size: int | None
    note: str | None = None  # the line saying what was chosen, when something was


def plan_sizes(recipe: Recipe, survey: SizeSurvey | None, initial: InitialWeights | None) -> SizePlan:
    """The recipe's ``image_size``; else, from trained weights, the size they were trained at;
    else the survey's choice (``choose_image_size``), raised to the model's minimum (small images
    are upsampled); stored ``image_size / eval_crop``."""
    note = None
    size = recipe.image_size
    if size is None and initial is not None and initial.image_size is not None:
        size = initial.image_size
        note = f"Training at {size} px, the size {initial.source} was trained at (--img-size to change)."
    elif size is None and survey is not None:
        size = choose_image_size(survey)
        if not survey.is_uniform_square:
            note = (
                f"Images vary in size ({survey.shortest}-{survey.longest} px on their shorter side, "
                f"median {survey.median}); training at {size} px (--img-size to change)."
            )
    if size is None:
        return SizePlan(None, None, note)
    minimum = minimum_image_size(recipe.model)
    if recipe.image_size is None and size < minimum:
        note = (
            f"Images of {size} px are smaller than the {recipe.model} network takes: "
            f"upsampled to {minimum} px (--img-size to choose another size)."
        )
        size = minimum
    return SizePlan(size, recipe.stored_size(size), note)
