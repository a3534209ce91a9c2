"""The model registry: ``@register_model`` a builder, ``create_model(name)`` it, ``list_models()``.

Builders take ``num_classes`` and ``image_size`` plus their own keyword arguments. The model
remembers its name and arguments (``model.model_name``, ``model.model_arguments``) so that a
checkpoint can rebuild it with nothing but the file.

Each model names the layer Grad-CAM explains (its last convolutional block) in a
``feature_layer_names`` attribute: dotted submodule names (``("layer4",)``; an ensemble names
every member's), which ``cnnkit.runtime.explanation`` resolves with ``get_submodule``.
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from cnnkit.messages import short_repr

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])
# An argument's allowed values beyond its annotated type: (what is allowed, whether a value is).
ArgumentCheck = tuple[str, Callable[[Any], bool]]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CHECKS: dict[str, Mapping[str, ArgumentCheck]] = {}
_FORWARDS: dict[str, str] = {}  # model -> the model its **kwargs go to


def register_model(
    builder: Builder | None = None,
    *,
    name: str | None = None,
    checks: Mapping[str, ArgumentCheck] | None = None,
    forwards_to: str | None = None,
) -> Any:
    """Register a model builder under ``name`` (default: the function's name, ``_`` -> ``-``).

    Use as ``@register_model`` or ``@register_model(name="my-net")``. Arguments are checked
    against the builder's annotations (``int``, ``float``, ``tuple[int, int, int]``, ...) and
    ``checks``; ``forwards_to`` names the model a builder's ``**kwargs`` are passed to, whose
    arguments they are then checked as.
    """

    def decorate(function: Builder) -> Builder:
        key = name or function.__name__.replace("_", "-")
        if key in _BUILDERS:
            raise ValueError(f"A model named {key!r} is already registered.")
        _BUILDERS[key] = function
        _CHECKS[key] = dict(checks or {})
        if forwards_to is not None:
            _FORWARDS[key] = forwards_to
        return function

    return decorate(builder) if builder is not None else decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_BUILDERS)


def model_takes(name: str, argument: str) -> bool:
    """Whether the registered model ``name`` takes ``argument`` (False for an unknown model)."""
    if name not in _BUILDERS:
        return False
    parameters = inspect.signature(_BUILDERS[name]).parameters
    return argument in parameters or any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()
    )


def check_model_arguments(name: str, **kwargs: Any) -> None:
    """Fail in one line, naming what is allowed, unless ``name`` is registered and takes ``kwargs``
    with values of the types its builder declares and within its ``checks``."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, _BUILDERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown model. Received: name={name!r}. Available: {', '.join(list_models())}.{hint}"
        )
    builder = _BUILDERS[name]
    parameters = inspect.signature(builder).parameters
    passed_on = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
    try:
        hints = typing.get_type_hints(builder)
    except (NameError, TypeError):  # annotations that don't resolve outside the builder: none
        hints = {}
    allowed = [key for key in parameters if key not in ("num_classes", "image_size")]
    rest = {}
    for key, value in kwargs.items():
        if key not in parameters:
            if passed_on:
                rest[key] = value
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"Did you mean {close[0]!r}?" if close else f"It takes: {', '.join(allowed) or 'none'}."
            raise ValueError(
                f"Unknown argument of model {name!r}. Received: {key}={short_repr(value)}. {hint}"
            )
        what, ok = _CHECKS[name].get(key, (None, None))
        if key in hints and not _matches(hints[key], value):
            what, ok = what or _describe(hints[key]), None
        elif ok is None or ok(value):
            continue
        raise ValueError(f"{key} of model {name!r} must be {what}. Received: {key}={short_repr(value)}")
    if rest and name in _FORWARDS:
        check_model_arguments(_FORWARDS[name], **rest)


def _matches(hint: Any, value: Any) -> bool:
    """Whether ``value`` (as YAML or a command line gives it: lists for tuples) fits ``hint``;
    hints this does not know accept anything."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(argument, value) for argument in arguments)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            return len(value) == len(arguments) and all(map(_matches, arguments, value))
        return all(_matches(arguments[0], item) for item in value) if arguments else True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True


def _describe(hint: Any) -> str:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(argument) for argument in arguments)
    if origin in (tuple, list):
        if origin is tuple and arguments and arguments[-1] is not Ellipsis and len(set(arguments)) == 1:
            return f"{len(arguments)} {_PLURALS.get(arguments[0], 'values')}"
        return f"a list of {_PLURALS.get(arguments[0], 'values') if arguments else 'values'}"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


_NAMES = {
    type(None): "null",
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    str: "a string",
}
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "true or false values"}


def create_model(name: str, num_classes: int = 10, image_size: int = 32, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes and square ``image_size`` inputs."""
    check_model_arguments(name, **kwargs)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}")
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"image_size must be an integer >= 4. Received: image_size={image_size!r}")
    model = _BUILDERS[name](num_classes=num_classes, image_size=image_size, **kwargs)
    model.model_name = name
    # A builder may resolve an argument ("auto"): checkpoints keep what it became.
    resolved = getattr(model, "resolved_arguments", {})
    model.model_arguments = {"num_classes": num_classes, "image_size": image_size, **kwargs, **resolved}
    return model


def minimum_image_size(name: str) -> int:
    """The smallest input side the registered model ``name`` takes (a builder's
    ``minimum_image_size`` attribute; 1 where it names none); smaller images are upsampled to it."""
    return int(getattr(_BUILDERS.get(name), "minimum_image_size", 1))
