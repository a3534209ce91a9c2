"""Recipes from text: ``--set field=value`` assignments and YAML recipe files, and back to YAML.

A recipe file names a base recipe and the fields it changes (any field, dotted keys merge into
``model_arguments``)::

    base: fast            # a named recipe (default: fast)
    epochs: 12
    label_smoothing: 0.1
    model_arguments.widths: [128, 384, 384]

``recipe_to_yaml`` writes every field, so a file it wrote gives back the same recipe whatever
the named recipes become.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cnnkit.messages import short_repr
from cnnkit.recipes.catalog import DEFAULT_RECIPE, get_recipe
from cnnkit.recipes.recipe import Recipe, check_field_name

YAML_SUFFIXES = (".yaml", ".yml")
BASE_KEY = "base"


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"label_smoothing=0.1"`` -> ``("label_smoothing", 0.1)``; values are read as YAML.

    ``key=[128,384,384]`` gives a list, ``key=true`` a bool, ``key=null`` None; a string field
    takes the text as it is (``flip=none`` is the string ``"none"``).
    """
    key, separator, value = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ValueError(f"--set takes FIELD=VALUE (e.g. label_smoothing=0.1). Received: {short_repr(text)}")
    check_field_name(key.split(".", 1)[0])
    if "." not in key and key in _STRING_FIELDS and not value.lstrip().startswith("["):
        return key, value  # a string field's text as it is; class_weights=[...] is a list
    return key, _yaml_value(value, key)


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """``recipe`` with ``overrides`` applied; ``"model_arguments.widths"`` merges one argument.

    An ``epochs`` set here without ``min_steps`` turns ``min_steps`` off: it lengthens a recipe's
    own epochs on small data, never a number the user asked for (``--epochs 0.3`` trains 0.3).
    """
    changes: dict[str, Any] = {}
    if "epochs" in overrides and "min_steps" not in overrides:
        changes["min_steps"] = 0
    for key, value in overrides.items():
        name, _, inner = key.partition(".")
        check_field_name(name)
        if not inner:
            changes[name] = value
            continue
        current = changes.get(name, getattr(recipe, name))
        if not isinstance(current, dict):
            raise ValueError(f"Only a mapping field takes dotted keys. Received: {key}={short_repr(value)}")
        changes[name] = _with_nested(current, inner.split("."), value)
    return recipe.replace(**changes)


def is_recipe_file(source: str | os.PathLike) -> bool:
    return Path(source).suffix.lower() in YAML_SUFFIXES


def load_recipe(source: str | os.PathLike | Recipe, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """A named recipe, a YAML recipe file, or a ``Recipe``, with ``overrides`` applied."""
    if isinstance(source, Recipe):
        recipe = source
    elif is_recipe_file(source):
        recipe = read_recipe_file(source)
    else:
        recipe = get_recipe(str(source))
    return apply_overrides(recipe, overrides or {})


def read_recipe_file(path: str | os.PathLike) -> Recipe:
    """The recipe a YAML file describes: its ``base`` recipe with the file's fields applied."""
    path = Path(path)
    values = _read_mapping(path)
    if "recipe" in values and "data" in values:
        raise ValueError(f"{path} is a run's config, not a recipe: pass it with --config.")
    base = values.pop(BASE_KEY, DEFAULT_RECIPE)
    if not isinstance(base, str):
        raise ValueError(f"{path}: base must be a recipe name. Received: base={short_repr(base)}")
    values.setdefault("name", path.stem)
    try:
        return apply_overrides(get_recipe(base), values)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def recipe_to_yaml(recipe: Recipe, comments: Iterable[str] = ()) -> str:
    """Every field of ``recipe`` as a YAML recipe file (``read_recipe_file`` reads it back)."""
    header = "".join(f"# {line}\n" for line in comments)
    body = yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=None)
    return header + body


def read_yaml_file(path: Path, kind: str) -> Any:
    """The YAML in ``path``; one-line errors naming the file and ``kind`` ("recipe file", ...)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{kind[0].upper()}{kind[1:]} not found: {path}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file: a {kind} is YAML.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    values = read_yaml_file(path, "recipe file")
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of recipe fields. Received: {type(values).__name__}")
    return {str(key): value for key, value in values.items()}


def _yaml_value(text: str, key: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(
            f"Cannot read the value of {key} as YAML. Received: {key}={short_repr(text)}"
        ) from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            return value
    return value


def _with_nested(mapping: dict, keys: list[str], value: Any) -> dict:
    updated = dict(mapping)
    head, rest = keys[0], keys[1:]
    if rest:
        inner = updated.get(head, {})
        if not isinstance(inner, dict):
            raise ValueError(f"{head} is not a mapping. Received: {head}={short_repr(inner)}")
        updated[head] = _with_nested(inner, rest, value)
    else:
        updated[head] = value
    return updated


_STRING_FIELDS = {
    name for name, value in get_recipe(DEFAULT_RECIPE).to_dict().items() if isinstance(value, str)
}
