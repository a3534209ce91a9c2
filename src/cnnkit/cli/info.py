"""``cnnkit summary`` (a model's layers) and ``cnnkit models`` (models, recipes, a recipe's fields)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(commands: Any) -> None:
    summary = commands.add_parser("summary", help="print a model's layers and parameters")
    summary.add_argument("--model", default="tutorial")
    summary.add_argument("--num-classes", type=int, default=10)
    summary.add_argument("--img-size", type=int, default=32)
    summary.set_defaults(handler=_summary)

    models = commands.add_parser("models", help="list models and recipes, or one recipe's fields")
    models.add_argument(
        "--recipe", metavar="NAME_OR_YAML", help="print every field of this recipe, as a recipe file"
    )
    models.set_defaults(handler=_models)


def _summary(arguments: argparse.Namespace) -> int:
    from cnnkit.models import create_model
    from cnnkit.reports.summary import format_summary

    model = create_model(arguments.model, num_classes=arguments.num_classes, image_size=arguments.img_size)
    print(format_summary(model, arguments.img_size))
    return 0


def _models(arguments: argparse.Namespace) -> int:
    from cnnkit.models import list_models
    from cnnkit.recipes import DEFAULT_RECIPE, get_recipe, list_recipes, load_recipe, recipe_to_yaml

    if arguments.recipe:
        recipe = load_recipe(arguments.recipe)
        comments = [
            f"Recipe {recipe.name}: every field. Save as a .yaml file, change what you like, and",
            "train with `cnnkit train --recipe FILE`; or change single fields with --set FIELD=VALUE.",
        ]
        print(recipe_to_yaml(recipe, comments), end="")
        return 0
    print("Models:  " + ", ".join(list_models()))
    for name in list_recipes():
        recipe = get_recipe(name)
        default = " (default)" if name == DEFAULT_RECIPE else ""
        print(
            f"Recipe {name}{default}: model {recipe.model}, {recipe.epochs:g} epochs, "
            f"batch {recipe.batch_size}, "
            f"lr {recipe.learning_rate:g}, validation split {recipe.validation_split:g}"
        )
    print("Every field of one: cnnkit models --recipe NAME")
    return 0
