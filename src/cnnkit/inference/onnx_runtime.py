"""Torch-free inference from an ONNX file written by ``cnnkit export`` (ONNX Runtime only).

The exported graph holds everything a checkpoint's ``predict`` does: it takes raw pixels
(uint8 ``(N, H, W, 3)`` RGB, or float ``(N, 3, H, W)`` in [0, 1] if exported with
``input_format="float"``), normalises them, applies the test-time augmentation the model was
trained for, and returns softmax probabilities. The file's ``metadata_props`` describe it (see
``METADATA_KEYS``), so this module needs nothing else, and it never imports torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.data.pixels import check_pixels
from cnnkit.reports.splits import metrics_by_split

FORMAT = "cnnkit-onnx"
FORMAT_VERSION = 1
INPUT_NAME = "images"
PROBABILITIES = "probabilities"
LOGITS = "logits"
UINT8_NHWC = "uint8-nhwc-rgb"  # the same names as cnnkit.engine.preprocess's, which imports torch
FLOAT_NCHW = "float-nchw-rgb"
INPUT_FORMATS = (UINT8_NHWC, FLOAT_NCHW)
DEFAULT_BATCH_SIZE = 256
# metadata_props values are strings; these hold JSON (lists, dicts, numbers).
JSON_KEYS = (
    "class_names",
    "image_size",
    "resize_size",
    "normalization",
    "tta",
    "metrics",
    "epoch",
    "model_arguments",
)
METADATA_KEYS = (
    "format",
    "format_version",
    "model_name",
    "model_arguments",
    "class_names",
    "image_size",
    "resize_size",
    "input_format",
    "normalization",
    "tta",
    "metrics",
    "epoch",
    "recipe",
    "cnnkit_version",
    "exporter",
    "opset",
)


def decode_metadata(properties: dict[str, str]) -> dict[str, Any]:
    """``metadata_props`` (all strings) -> values: JSON keys parsed, ``format_version`` an int."""
    metadata: dict[str, Any] = dict(properties)
    for key in (*JSON_KEYS, "format_version"):
        if key in metadata:
            metadata[key] = json.loads(metadata[key])
    return metadata


def encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """The inverse of ``decode_metadata``: every value as the string ``metadata_props`` holds."""
    return {
        key: json.dumps(value) if key in JSON_KEYS or not isinstance(value, str) else value
        for key, value in metadata.items()
    }


class OnnxClassifier:
    """A classifier exported by ``cnnkit export``, run by ONNX Runtime on CPU, without torch.

    Attributes:
        class_names: the model's classes, in output order.
        image_size: side of the square images it takes.
        resize_size: the square images are decoded to before the centre ``image_size`` crop.
        metadata: the file's description: ``model_name``, ``class_names``, ``image_size``,
            ``input_format``, ``normalization``, ``tta``, ``metrics``, ``epoch``,
            ``cnnkit_version``, ... plus ``source`` (``"onnx"``) and ``path``.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        """Open the ONNX file ``path``; ``threads`` caps ONNX Runtime's threads (default: its own)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        runtime = _import_onnxruntime()
        options = runtime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = runtime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for a damaged or foreign file
            raise ValueError(
                f"Cannot read {path} as an ONNX model ({type(error).__name__}: {error})"
            ) from None
        properties = self.session.get_modelmeta().custom_metadata_map
        if properties.get("format") != FORMAT:
            raise ValueError(f"{path} is not an ONNX model exported by cnnkit (no '{FORMAT}' metadata).")
        self.metadata = decode_metadata(properties)
        if self.metadata["format_version"] > FORMAT_VERSION:
            raise ValueError(
                f"{path} was exported by a newer cnnkit ({self.metadata.get('cnnkit_version')}). "
                "Upgrade cnnkit to read it."
            )
        # Grouped by split (train, validation, test); files of older versions held them flat.
        self.metadata["metrics"] = metrics_by_split(self.metadata.get("metrics", {}))
        self.metadata.update(source="onnx", path=str(path))
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.image_size: int = int(self.metadata["image_size"])
        # Files exported before resize_size existed: images were resized to the input size.
        self.resize_size: int = int(self.metadata.get("resize_size", self.image_size))
        self.input_format: str = self.metadata["input_format"]
        self.path = path

    def __repr__(self) -> str:
        return (
            f"OnnxClassifier({str(self.path)!r}, model={self.metadata.get('model_name')!r}, "
            f"classes={len(self.class_names)}, image_size={self.image_size})"
        )

    def predict(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Class probabilities, float32 ``(N, classes)``, of uint8 RGB ``images`` ``(N, H, W, 3)``.

        ``H`` and ``W`` must be ``image_size`` (decode files with ``cnnkit.data.decode.decode_image``,
        which resizes and crops them). Images run ``batch_size`` at a time.
        """
        check_pixels(images, self.image_size)
        images = np.asarray(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
        outputs = [
            self._run(images[start : start + batch_size]) for start in range(0, len(images), batch_size)
        ]
        if not outputs:
            return np.empty((0, len(self.class_names)), dtype=np.float32)
        return np.concatenate(outputs)

    def predict_classes(self, images: np.ndarray) -> list[str]:
        """The most probable class name for each image."""
        return [self.class_names[index] for index in self.predict(images).argmax(1)]

    def _run(self, images: np.ndarray) -> np.ndarray:
        if self.input_format == FLOAT_NCHW:
            inputs = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
        else:
            inputs = np.ascontiguousarray(images)
        return self.session.run([PROBABILITIES], {INPUT_NAME: inputs})[0]


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "ONNX Runtime is needed to run .onnx models: pip install 'cnnkit[onnx]' (or onnxruntime)."
        ) from None
    return onnxruntime
