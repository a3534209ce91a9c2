"""Recipes: named, typed sets of hyperparameters (``Recipe``), and recipes read from text.

``get_recipe("fast")`` gives a named recipe, ``load_recipe("my.yaml", {"epochs": 4})`` a named
recipe or YAML file with overrides, ``recipe_to_yaml`` writes one back.
"""

from __future__ import annotations

from cnnkit.recipes.catalog import (
    DEFAULT_RECIPE,
    FINE_TUNE_RECIPE,
    MODEL_RECIPES,
    OTHER_MODEL_RECIPE,
    PHOTO_RECIPE,
    get_recipe,
    list_recipes,
)
from cnnkit.recipes.files import (
    apply_overrides,
    is_recipe_file,
    load_recipe,
    parse_assignment,
    read_recipe_file,
    recipe_to_yaml,
)
from cnnkit.recipes.recipe import Recipe, field_names

__all__ = [
    "DEFAULT_RECIPE",
    "FINE_TUNE_RECIPE",
    "MODEL_RECIPES",
    "OTHER_MODEL_RECIPE",
    "PHOTO_RECIPE",
    "Recipe",
    "apply_overrides",
    "field_names",
    "get_recipe",
    "is_recipe_file",
    "list_recipes",
    "load_recipe",
    "parse_assignment",
    "read_recipe_file",
    "recipe_to_yaml",
]
