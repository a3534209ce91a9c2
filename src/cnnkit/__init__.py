"""cnnkit: build, train, evaluate and serve convolutional image classifiers.

The public API is imported lazily, so ``import cnnkit`` stays light (and torch-free until a
name that needs torch is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Classifier": "cnnkit.api",
    "load_data": "cnnkit.api",
    "load_dataset": "cnnkit.data",
    "split_train_val": "cnnkit.data",
    "CIFAR10_CLASSES": "cnnkit.data",
    "create_model": "cnnkit.models",
    "list_models": "cnnkit.models",
    "register_model": "cnnkit.models",
    "get_recipe": "cnnkit.recipes",
    "list_recipes": "cnnkit.recipes",
    "Recipe": "cnnkit.recipes",
    "load_checkpoint": "cnnkit.checkpoint",
    "load_recipe": "cnnkit.recipes",
    "configure_process": "cnnkit.runtime.device",
    "train": "cnnkit.runs.training",
    "resume": "cnnkit.runs.training",
    "evaluate_checkpoint": "cnnkit.runs.evaluation",
    "predict_files": "cnnkit.inference.batch_prediction",
    "predict_paths": "cnnkit.inference.batch_prediction",
    "load_predictor": "cnnkit.inference.predictor",
    "OnnxClassifier": "cnnkit.inference.onnx_runtime",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")
