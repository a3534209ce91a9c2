"""Torch-free inference from an ONNX file written by ``cnnkit export`` (ONNX Runtime only).

The exported graph holds everything a checkpoint's ``predict`` does: it takes raw pixels
(uint8 ``(N, H, W, 3)`` RGB, or float ``(N, 3, H, W)`` in [0, 1] if exported with
``input_format="float"``), normalises them, applies the test-time augmentation the model was
trained for, and returns the task's probabilities (single-label: softmax; multi-label: one
sigmoid a label, decided at the ``thresholds`` the metadata holds). The file's ``metadata_props``
describe it (see ``METADATA_KEYS``), so this module needs nothing else, and it never imports torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.data.pixels import check_pixels
from cnnkit.fileio import json_text
from cnnkit.messages import short_repr
from cnnkit.reports.splits import metrics_by_split
from cnnkit.runtime.constants import FLOAT_NCHW, PIXEL_FORMATS, TTA_LEVELS, UINT8_NHWC
from cnnkit.tasks import get_task

FORMAT = "cnnkit-onnx"
FORMAT_VERSION = 1
INPUT_NAME = "images"
PROBABILITIES = "probabilities"
LOGITS = "logits"
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
    "thresholds",
    "temperature",
    "confidence_map",
    "int8",
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
    "task",
    "thresholds",
    "temperature",
    "confidence_map",
    "int8",
    "cnnkit_version",
    "exporter",
    "opset",
)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_str_mapping(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _is_metrics(value: Any) -> bool:
    # Grouped ({"validation": {"accuracy": 0.9}}) or, in older files, flat ({"val_accuracy": 0.9}).
    return _is_str_mapping(value) and all(
        inner is None or _is_str_mapping(inner) or _is_number(inner) for inner in value.values()
    )


def _is_class_names(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(name, str) for name in value)
        and len(set(value)) == len(value)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_confidence_map(value: Any) -> bool:
    from cnnkit.tasks.calibration import check_confidence_map

    try:
        check_confidence_map(value)
    except ValueError:
        return False
    return True


def _is_thresholds(value: Any) -> bool:
    return isinstance(value, list) and all(_is_number(item) and 0 < item < 1 for item in value)


# What each metadata field read back must be: (what is allowed, the check). The strings that are
# only shown (model_name, recipe, cnnkit_version, exporter, opset) are strings by construction.
METADATA_CHECKS: dict[str, tuple[str, Any]] = {
    "format_version": ("an integer >= 1", lambda value: _is_int(value, 1)),
    "class_names": ("a list of two or more distinct strings", _is_class_names),
    "image_size": ("an integer >= 1", lambda value: _is_int(value, 1)),
    "resize_size": ("an integer >= 1", lambda value: _is_int(value, 1)),
    "input_format": (" or ".join(repr(name) for name in PIXEL_FORMATS), lambda value: value in PIXEL_FORMATS),
    "tta": ("0, 1 or 2", lambda value: _is_int(value, 0) and value in TTA_LEVELS),
    "epoch": ("an integer >= 0", lambda value: _is_int(value, 0)),
    "normalization": ("a mapping", _is_str_mapping),
    "model_arguments": ("a mapping", _is_str_mapping),
    "metrics": ("a mapping of metrics (numbers), by split or flat", _is_metrics),
    "thresholds": ("a list of probabilities in (0, 1), one a label", _is_thresholds),
    "temperature": ("a positive number", lambda value: _is_number(value) and 0 < value < float("inf")),
    "confidence_map": ("[confidences, accuracies], increasing, in [0, 1]", _is_confidence_map),
    # int8 exports: what was measured and kept (export.int8's record).
    "int8": ("a mapping", lambda value: isinstance(value, dict)),
}
# Written by every cnnkit export; resize_size, tta, metrics and the rest may be absent from older files.
REQUIRED_METADATA = ("format_version", "class_names", "image_size", "input_format")


def decode_metadata(properties: dict[str, str], source: str = "the ONNX file") -> dict[str, Any]:
    """``metadata_props`` (all strings) -> values: JSON keys parsed, ``format_version`` an int.

    Every value ``OnnxClassifier`` (and the service) reads is checked (``METADATA_CHECKS``): a
    field of the wrong shape fails in one line naming ``source`` and the field, never later as a
    traceback or, worse, as class names spelt out letter by letter from a string.
    """
    metadata: dict[str, Any] = dict(properties)
    for key in (*JSON_KEYS, "format_version"):
        if key in metadata:
            try:
                metadata[key] = json.loads(metadata[key])
            except (ValueError, RecursionError):  # not JSON, a number too long, nesting too deep
                raise ValueError(
                    f"{source}: cnnkit metadata field '{key}' is not valid JSON. "
                    f"Received: {key}={short_repr(metadata[key])}"
                ) from None
    for key, (allowed, check) in METADATA_CHECKS.items():
        if key in metadata and not check(metadata[key]):
            raise ValueError(
                f"{source}: cnnkit metadata field '{key}' must be {allowed}. "
                f"Received: {key}={short_repr(metadata[key])}"
            )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"{source}: cnnkit metadata lacks {', '.join(repr(key) for key in missing)}.")
    if "thresholds" in metadata and len(metadata["thresholds"]) != len(metadata["class_names"]):
        raise ValueError(
            f"{source}: cnnkit metadata field 'thresholds' needs one a label "
            f"({len(metadata['class_names'])}). Received: thresholds={short_repr(metadata['thresholds'])}"
        )
    if "resize_size" in metadata and metadata["resize_size"] < metadata["image_size"]:
        raise ValueError(
            f"{source}: cnnkit metadata field 'resize_size' must be >= image_size "
            f"({metadata['image_size']}). Received: resize_size={metadata['resize_size']}"
        )
    return metadata


def encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """The inverse of ``decode_metadata``: every value as the string ``metadata_props`` holds."""
    return {
        key: json_text(value) if key in JSON_KEYS or not isinstance(value, str) else value
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
        task: what the outputs mean (``cnnkit.tasks``; files exported before tasks: single-label).
        thresholds: a multi-label model's probability threshold a label, from the metadata (None:
            ``DEFAULT_THRESHOLD`` for each, or a single-label model).
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
        self.metadata = _read_metadata(self.session, path)
        # What the outputs mean (cnnkit.tasks); files exported before tasks are single-label.
        try:
            self.task = get_task(self.metadata.get("task"))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        # Grouped by split (train, validation, test); files of older versions held them flat.
        self.metadata["metrics"] = metrics_by_split(self.metadata.get("metrics", {}))
        self.metadata.update(source="onnx", path=str(path))
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.image_size: int = int(self.metadata["image_size"])
        # Files exported before resize_size existed: images were resized to the input size.
        self.resize_size: int = int(self.metadata.get("resize_size", self.image_size))
        self.input_format: str = self.metadata["input_format"]
        stored = self.metadata.get("thresholds") if self.task.multi_label else None
        self.thresholds: list[float] | None = None if stored is None else [float(value) for value in stored]
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

    def predict_classes(
        self, images: np.ndarray, threshold: float | None = None
    ) -> list[str] | list[list[str]]:
        """The most probable class name for each image; multi-label: each image's labels at or above
        their thresholds (``threshold``: one for every label instead), most probable first."""
        limits = self.thresholds if threshold is None else threshold
        return self.task.decided_names(self.predict(images), self.class_names, limits)

    def _run(self, images: np.ndarray) -> np.ndarray:
        if self.input_format == FLOAT_NCHW:
            inputs = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
        else:
            inputs = np.ascontiguousarray(images)
        return self.session.run([PROBABILITIES], {INPUT_NAME: inputs})[0]


def _read_metadata(session: Any, path: Path) -> dict[str, Any]:
    """The checked metadata of the model ``session`` runs, which must agree with its graph."""
    properties = session.get_modelmeta().custom_metadata_map
    if properties.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ONNX model exported by cnnkit (no '{FORMAT}' metadata).")
    # Before any field is checked: a newer cnnkit may write fields this one reads otherwise.
    try:
        version = int(properties.get("format_version", "0"))
    except ValueError:
        version = 0  # not a number: decode_metadata names the field
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was exported by a newer cnnkit ({short_repr(properties.get('cnnkit_version'))}). "
            "Upgrade cnnkit to read it."
        )
    metadata = decode_metadata(properties, str(path))
    # The graph's own sizes, where it states them: a mismatch would fail (or misname classes) later.
    inputs, outputs = session.get_inputs(), {output.name: output for output in session.get_outputs()}
    if [item.name for item in inputs] != [INPUT_NAME] or PROBABILITIES not in outputs:
        raise ValueError(f"{path}: the graph lacks the input '{INPUT_NAME}' or the output '{PROBABILITIES}'.")
    size = metadata["image_size"]
    expected = (size, size, 3) if metadata["input_format"] == UINT8_NHWC else (3, size, size)
    _check_graph_size(path, "image_size", size, list(inputs[0].shape)[1:], list(expected))
    classes = len(metadata["class_names"])
    _check_graph_size(path, "class_names", classes, list(outputs[PROBABILITIES].shape)[1:], [classes])
    return metadata


def _check_graph_size(path: Path, key: str, value: int, graph: list, expected: list) -> None:
    # Symbolic dimensions (strings, None) say nothing; a number must match.
    if len(graph) != len(expected) or any(
        isinstance(have, int) and have != want for have, want in zip(graph, expected, strict=True)
    ):
        what = f"{value} names" if key == "class_names" else value
        raise ValueError(
            f"{path}: cnnkit metadata field '{key}' ({what}) does not match the graph, whose "
            f"{'output' if key == 'class_names' else 'input'} shape is {['N', *graph]}."
        )


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "ONNX Runtime is needed to run .onnx models: pip install 'cnnkit[onnx]' (or onnxruntime)."
        ) from None
    return onnxruntime
