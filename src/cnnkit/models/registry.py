"""The model registry: ``@register_model`` a builder, ``create_model(name)`` it, ``list_models()``.

Builders take ``num_classes`` and ``image_size`` plus their own keyword arguments. The model
remembers its name and arguments (``model.model_name``, ``model.model_arguments``) so that a
checkpoint can rebuild it with nothing but the file.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Builder | None = None, *, name: str | None = None) -> Any:
    """Register a model builder under ``name`` (default: the function's name, ``_`` -> ``-``).

    Use as ``@register_model`` or ``@register_model(name="my-net")``.
    """

    def decorate(function: Builder) -> Builder:
        key = name or function.__name__.replace("_", "-")
        if key in _BUILDERS:
            raise ValueError(f"A model named {key!r} is already registered.")
        _BUILDERS[key] = function
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
    """Fail in one line, naming what is allowed, unless ``name`` is registered and takes ``kwargs``."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, _BUILDERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown model. Received: name={name!r}. Available: {', '.join(list_models())}.{hint}"
        )
    parameters = inspect.signature(_BUILDERS[name]).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    allowed = [key for key in parameters if key not in ("num_classes", "image_size")]
    for key, value in kwargs.items():
        if key not in parameters:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"Did you mean {close[0]!r}?" if close else f"It takes: {', '.join(allowed) or 'none'}."
            raise ValueError(f"Unknown argument of model {name!r}. Received: {key}={value!r}. {hint}")


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
