"""Model registry and the built-in models (importing this registers them)."""

from cnnkit.models import airbench as _airbench  # noqa: F401  (registers the fast network)
from cnnkit.models import ensemble as _ensemble  # noqa: F401  (registers the fast ensemble)
from cnnkit.models import resnet as _resnet  # noqa: F401  (registers resnet18 and resnet50)
from cnnkit.models import tutorial as _tutorial  # noqa: F401  (registers the tutorial models)
from cnnkit.models.registry import (
    check_model_arguments,
    create_model,
    list_models,
    minimum_image_size,
    model_takes,
    register_model,
)

__all__ = [
    "check_model_arguments",
    "create_model",
    "list_models",
    "minimum_image_size",
    "model_takes",
    "register_model",
]
