"""One interface to predict with a model file, whatever its kind: ``load_predictor(path)``.

An ``.onnx`` file (``cnnkit export``) runs on ONNX Runtime and never imports torch; any other
path is read as a checkpoint and imports torch then, not before. Prediction over files
(``cnnkit.inference.batch_prediction``) and the HTTP service use this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cnnkit.inference.onnx_runtime import OnnxClassifier
from cnnkit.reports.splits import metrics_by_split
from cnnkit.runtime.constants import ONNX_SUFFIX, UINT8_NHWC


@runtime_checkable
class Predictor(Protocol):
    """What a loaded model offers: its classes, input size, description and probabilities."""

    class_names: list[str]
    image_size: int
    resize_size: int  # decode to this square, then keep the centre image_size square
    metadata: dict[str, Any]
    task: Any  # cnnkit.tasks: how a prediction is decided and ranked
    # Multi-label: a probability threshold a label (None: DEFAULT_THRESHOLD each; single-label: None).
    thresholds: list[float] | None

    def predict(self, images: np.ndarray, batch_size: int = ...) -> np.ndarray:
        """Probabilities ``(N, classes)`` of uint8 RGB ``(N, image_size, image_size, 3)`` images."""
        ...


def load_predictor(
    path: str | os.PathLike, device: str = "auto", precision: str = "auto", calibrated: bool = True
) -> Predictor:
    """The model in ``path``, ready to ``predict``: an ``OnnxClassifier`` for a ``.onnx`` file,
    else a ``CheckpointPredictor`` (torch) on ``device`` with ``precision``.

    Both have ``class_names``, ``image_size``, ``task``, ``thresholds`` (multi-label), ``metadata``
    (``model_name``, ``class_names``, ``image_size``, ``normalization``, ``tta``, ``metrics``,
    ``epoch``, ``task``, ``cnnkit_version``, ``source``, ``path``, ...) and
    ``predict(uint8 images (N, H, W, 3)) -> probabilities (N, classes)``.
    An ONNX model runs on the CPU in float32: ``device`` and ``precision`` may only say so.
    ``calibrated``: the probabilities as the model's temperature scales them (``metadata``'s
    ``temperature``), or as trained (False); an ``.onnx`` file holds one or the other.
    """
    if Path(path).suffix.lower() == ONNX_SUFFIX:
        if device not in ("auto", "cpu"):
            raise ValueError(f"An ONNX model runs on the CPU. Received: device={device!r}")
        if precision not in ("auto", "fp32"):
            raise ValueError(f"An ONNX model runs in fp32. Received: precision={precision!r}")
        model = OnnxClassifier(path)
        if not calibrated and model.metadata.get("temperature") is not None:
            raise ValueError(
                f"{path} gives calibrated probabilities (temperature {model.metadata['temperature']:g} "
                "in its graph): export it again with --uncalibrated for the probabilities as trained"
            )
        return model
    return CheckpointPredictor(path, device=device, precision=precision, calibrated=calibrated)


class CheckpointPredictor:
    """A checkpoint's ``cnnkit.api.Classifier`` behind the ``Predictor`` interface (imports torch)."""

    def __init__(
        self, path: str | os.PathLike, device: str = "auto", precision: str = "auto", calibrated: bool = True
    ) -> None:
        try:
            from cnnkit.api import Classifier  # torch, only for checkpoints
            from cnnkit.checkpoint import load_checkpoint
            from cnnkit.runtime.device import precision_name
        except ModuleNotFoundError as error:
            if error.name != "torch":
                raise
            raise ModuleNotFoundError(
                f"{path} is read as a PyTorch checkpoint (its name does not end in .onnx), which needs "
                "torch; without torch, export it elsewhere with `cnnkit export` and use the .onnx file.",
                name="torch",
            ) from None

        checkpoint = load_checkpoint(path)
        self.classifier = Classifier.from_checkpoint(
            checkpoint, device=device, precision=precision, source=path
        )
        if not calibrated:
            self.classifier.temperature = None  # the probabilities as trained
            self.classifier.confidence_map = None
        self.class_names: list[str] = list(self.classifier.class_names)
        self.task = self.classifier.task
        self.thresholds: list[float] | None = self.classifier.thresholds if self.task.multi_label else None
        self.image_size: int = int(self.classifier.image_size)
        self.resize_size: int = int(checkpoint.resize_size)
        self.metadata: dict[str, Any] = {
            "model_name": checkpoint.model_name,
            "model_arguments": dict(checkpoint.model_arguments),
            "class_names": self.class_names,
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "input_format": UINT8_NHWC,
            "normalization": checkpoint.normalization.to_dict(),
            "tta": self.classifier.tta,
            "metrics": metrics_by_split(checkpoint.metrics),
            "epoch": checkpoint.epoch,
            "recipe": checkpoint.recipe.name if checkpoint.recipe is not None else "",
            "task": checkpoint.task,
            **({"thresholds": self.thresholds} if self.thresholds is not None else {}),
            **({"temperature": self.classifier.temperature} if self.classifier.temperature else {}),
            **({"confidence_map": self.classifier.confidence_map} if self.classifier.confidence_map else {}),
            "cnnkit_version": checkpoint.cnnkit_version,
            "source": "checkpoint",
            "path": str(path),
            "device": str(self.classifier.device),
            "precision": precision_name(self.classifier.precision),
        }

    def __repr__(self) -> str:
        return f"CheckpointPredictor({self.metadata['path']!r}, model={self.metadata['model_name']!r})"

    def predict(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Probabilities ``(N, classes)`` of uint8 RGB ``(N, H, W, 3)`` images (``Classifier.predict``)."""
        return self.classifier.predict(images, batch_size)
