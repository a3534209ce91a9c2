"""``cnnkit export``: a checkpoint as an ONNX model that runs without torch, verified before it is written.

The graph takes raw pixels and does everything ``Classifier.predict`` does::

    images  uint8 (N, H, W, 3) RGB            (or float (N, 3, H, W) in [0, 1]: input_format="float")
      -> float, channels first, (pixel / 255 - mean) / std   (the checkpoint's normalisation)
      -> the network, averaged over the test-time views of the checkpoint's recipe (optional)
      -> outputs "probabilities" ((N, classes): the task's activation, softmax; multi-label: a
         sigmoid a label) and "logits" ((N, classes))

N (the batch) is dynamic; H = W = the checkpoint's image size. The file's ``metadata_props``
describe the model (see ``cnnkit.inference.onnx_runtime``), which ``OnnxClassifier`` reads with
ONNX Runtime alone; a multi-label model's thresholds (one a label) are among them.

Before anything is written, ONNX Runtime's probabilities are compared with PyTorch's (float32, on
CPU) on real images: the user's, else the run's own data, else deterministic synthetic images.
Needs the ``export`` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnkit import __version__
from cnnkit.checkpoint import Checkpoint, load_checkpoint
from cnnkit.export.verification_images import verification_images
from cnnkit.fileio import atomic_write_bytes
from cnnkit.inference.onnx_runtime import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAME,
    LOGITS,
    PROBABILITIES,
    encode_metadata,
)
from cnnkit.runs.outputs import check_output_file
from cnnkit.runtime.batched import predict_logits
from cnnkit.runtime.constants import FLOAT_NCHW, ONNX_SUFFIX, UINT8_NHWC
from cnnkit.runtime.normalization import Normalization
from cnnkit.runtime.pixel_classifier import PixelClassifier, WithProbabilities
from cnnkit.tasks import get_task
from cnnkit.tasks.multi_label import DEFAULT_THRESHOLD

INPUT_FORMATS = {"uint8": UINT8_NHWC, "float": FLOAT_NCHW}
EXPORTERS = ("dynamo", "torchscript")
# Opset 20 is torch 2.13's default and the first with GELU as one operator (the fast network's
# activation; earlier opsets spell it with Erf). ONNX Runtime runs it from version 1.17; the
# operators these models use gained nothing in opsets 21-23.
DEFAULT_OPSET = 20
DEFAULT_TOLERANCE = 1e-4
DEFAULT_VERIFY_COUNT = 64
# Traced with more than one image: torch.export specialises a dimension of size 1 to a constant.
_EXAMPLE_BATCH = 2


class ExportVerificationError(ValueError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance; nothing was written."""


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote and how it checked it."""

    path: Path
    size_bytes: int
    exporter: str
    opset: int
    input_format: str
    tta: int
    export_seconds: float
    verified_images: int
    verification_source: str
    max_difference: float
    tolerance: float


def default_output_path(checkpoint_path: str | os.PathLike) -> Path:
    """``runs/train/best.pt`` -> ``runs/train/best.onnx``."""
    return Path(checkpoint_path).with_suffix(ONNX_SUFFIX)


def export_onnx(
    checkpoint_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    input_format: str = "uint8",
    tta: bool = False,
    verify_data: str | os.PathLike | None = None,
    verify_count: int = DEFAULT_VERIFY_COUNT,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    force: bool = False,
    calibrated: bool = True,
) -> ExportResult:
    """Export the checkpoint at ``checkpoint_path`` to ONNX, verify it, then write it atomically.

    Args:
        output: the ``.onnx`` file to write (default: the checkpoint's path with ``.onnx``).
        input_format: ``"uint8"``: uint8 ``(N, H, W, 3)`` RGB pixels, as decoded images come;
            ``"float"``: float32 ``(N, 3, H, W)`` RGB in [0, 1]. Either way normalisation is inside.
        tta: include the test-time augmentation of the checkpoint's recipe (``Classifier.tta``).
            By default the plain network is exported: a deployed model answers from one view,
            6x cheaper than the fast recipes' 6 views, for ~0.8 points of accuracy.
        verify_data: images to verify on (anything ``cnnkit predict`` takes, or a data set
            ``load_dataset`` reads); default: the run's own data if it is on this machine, else
            synthetic images. ``verify_count`` of them are used, spread over the set.
        tolerance: largest absolute difference of probabilities allowed between ONNX Runtime
            and PyTorch (float32, CPU).
        opset: the ONNX opset; ``exporter``: ``"dynamo"`` (torch.export) or ``"torchscript"``.
        force: replace an existing ``output`` (another ``.onnx``) all the same; the default
            output, the checkpoint's own ``.onnx``, is replaced without it.

    Raises:
        ValueError: ``output`` is an existing ``.onnx`` other than the default one, or a file a
            run folder holds (see ``runs.outputs.check_output_file``), and ``force`` is not set.
        ExportVerificationError: the outputs differ by more than ``tolerance``; nothing is written
            and an existing ``output`` is left as it was.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be 'uint8' or 'float'. Received: input_format={input_format!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}. Received: exporter={exporter!r}")
    if verify_count < 1:
        raise ValueError(f"verify_count must be >= 1. Received: verify_count={verify_count}")
    output = checked_output(checkpoint_path, output, force)
    checkpoint = load_checkpoint(checkpoint_path)
    network = checkpoint.build_model(checkpoint_path).eval()
    level = checkpoint.tta if tta else 0
    pixel_format = INPUT_FORMATS[input_format]
    # The very module prediction runs (runtime.pixel_classifier), with the task's output activation
    # (single-label: softmax) beside the logits.
    task = get_task(checkpoint.task)
    # The logit offset (imbalanced classes) and, unless asked otherwise, the calibration: in the graph.
    classifier = PixelClassifier.for_checkpoint(
        network, checkpoint, level, pixel_format=pixel_format, calibrated=calibrated
    )
    offset = checkpoint.logit_offset
    temperature = checkpoint.temperature if calibrated else None
    confidence_map = checkpoint.confidence_map if calibrated else None
    module = WithProbabilities(classifier, keep_logits=True, task=task).eval()

    started = time.perf_counter()
    model = _export(module, checkpoint.image_size, pixel_format, opset, exporter)
    export_seconds = time.perf_counter() - started
    metadata = _metadata(checkpoint, pixel_format, level, exporter, opset)
    if temperature is not None:
        metadata["temperature"] = temperature  # the probabilities are calibrated by it
    if confidence_map is not None:
        metadata["confidence_map"] = confidence_map  # and then by this map of the top probability
    _set_metadata(model, metadata)
    data = model.SerializeToString()

    images, source = verification_images(checkpoint, verify_data, verify_count)
    expected = _pytorch_probabilities(
        network, checkpoint.normalization, images, level, task, offset, (temperature, confidence_map)
    )
    difference = _max_difference(data, pixel_format, images, expected)
    if not difference <= tolerance:  # also catches NaN
        raise ExportVerificationError(
            f"The ONNX model does not match PyTorch: probabilities differ by up to {difference:.3g} "
            f"(tolerance {tolerance:g}) on {len(images)} images ({source}); nothing was written to {output}."
        )
    atomic_write_bytes(output, data)
    return ExportResult(
        path=output,
        size_bytes=len(data),
        exporter=exporter,
        opset=opset,
        input_format=pixel_format,
        tta=level,
        export_seconds=export_seconds,
        verified_images=len(images),
        verification_source=source,
        max_difference=difference,
        tolerance=tolerance,
    )


def checked_output(checkpoint_path: str | os.PathLike, output: str | os.PathLike | None, force: bool) -> Path:
    """The ONNX file to write: ``output``, or the checkpoint's own ``.onnx``; refused in one line
    when it is not a ``.onnx`` name, is the checkpoint, or is a file that must not be replaced."""
    output = Path(output) if output is not None else default_output_path(checkpoint_path)
    if output.suffix.lower() != ONNX_SUFFIX:  # how load_predictor (and cnnkit predict) tells the kinds apart
        raise ValueError(f"The output's name must end in .onnx. Received: output={str(output)!r}")
    if output.resolve() == Path(checkpoint_path).resolve():
        raise ValueError(f"The ONNX file would overwrite the checkpoint. Received: output={str(output)!r}")
    # The checkpoint's own .onnx is refreshed without --force: it is this checkpoint's export by
    # name, and exporting again (after --resume improved best.pt, or with other options) is the
    # way to update it; what re-running cannot bring back, another model's .onnx, needs force.
    if output.resolve() != default_output_path(checkpoint_path).resolve():
        check_output_file(output, force)
    return output


def _export(module: nn.Module, image_size: int, pixel_format: str, opset: int, exporter: str) -> Any:
    """The ``onnx.ModelProto`` of ``module`` with a dynamic batch axis.

    The dynamo exporter (torch.export) is the one used by default: both exported every registered
    model (tutorial, tutorial-extra-conv, fast at sizes 16, 17 and 32, with and without TTA) with
    probabilities within 2e-7 of PyTorch's, but the TorchScript exporter is deprecated in torch
    2.x and turns the TTA's reflect padding into a run-time shape computation (Shape, Gather,
    ConstantOfShape), where dynamo gives static Pad and Slice nodes. Dynamo takes longer to
    export (2-8 s against 0.3-5 s on 2 busy cores), which a one-off command can afford.
    """
    onnx = _import_export_dependencies()
    if pixel_format == UINT8_NHWC:
        example = torch.zeros(_EXAMPLE_BATCH, image_size, image_size, 3, dtype=torch.uint8)
    else:
        example = torch.zeros(_EXAMPLE_BATCH, 3, image_size, image_size)
    options = {
        "input_names": [INPUT_NAME],
        "output_names": [PROBABILITIES, LOGITS],
        "opset_version": opset,
        "verbose": False,  # else the dynamo exporter prints its progress on stdout
    }
    with _quiet_exporter(), torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                module, (example,), dynamo=True, dynamic_shapes={INPUT_NAME: {0: batch}}, **options
            )
            model = program.model_proto
        else:
            buffer = io.BytesIO()
            axes = {name: {0: "batch"} for name in (INPUT_NAME, PROBABILITIES, LOGITS)}
            torch.onnx.export(module, (example,), buffer, dynamo=False, dynamic_axes=axes, **options)
            model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    return model


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporters warn about their own internals (deprecations, torchvision ops it won't
    # register): noise for a user whose model is checked against PyTorch right after.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _metadata(checkpoint: Checkpoint, pixel_format: str, tta: int, exporter: str, opset: int) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": checkpoint.model_name,
        "model_arguments": checkpoint.model_arguments,
        "class_names": list(checkpoint.class_names),
        "image_size": int(checkpoint.image_size),
        "resize_size": int(checkpoint.resize_size),
        "input_format": pixel_format,
        "normalization": checkpoint.normalization.to_dict(),
        "tta": tta,
        "metrics": checkpoint.metrics,  # grouped by split
        "epoch": int(checkpoint.epoch),
        "recipe": checkpoint.recipe.name if checkpoint.recipe is not None else "",
        "task": checkpoint.task,  # what the outputs mean (cnnkit.tasks); read as single-label if absent
        **_thresholds(checkpoint),
        "cnnkit_version": __version__,
        "exporter": f"{exporter} (torch {torch.__version__})",
        "opset": str(opset),
    }


def _thresholds(checkpoint: Checkpoint) -> dict[str, list[float]]:
    """A multi-label model's ``{"thresholds": one a label}`` (those it stores, else the default
    for each), so that the file decides as the checkpoint does; nothing for a single-label one."""
    if not get_task(checkpoint.task).multi_label:
        return {}
    stored = checkpoint.thresholds
    default = [DEFAULT_THRESHOLD] * len(checkpoint.class_names)
    return {"thresholds": list(stored) if stored is not None else default}


def _set_metadata(model: Any, metadata: dict) -> None:
    del model.metadata_props[:]
    for key, value in encode_metadata(metadata).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "cnnkit", __version__
    size = metadata["image_size"]
    shape = (
        f"uint8 (N, {size}, {size}, 3) RGB"
        if metadata["input_format"] == UINT8_NHWC
        else (f"float32 (N, 3, {size}, {size}) RGB in [0, 1]")
    )
    task = get_task(metadata.get("task"))
    kind = "multi-label classifier of" if task.multi_label else "classifier of"
    model.doc_string = (
        f"{metadata['model_name']} {kind} {len(metadata['class_names'])} classes. Input "
        f"'{INPUT_NAME}': {shape}, normalised inside. Outputs '{PROBABILITIES}' "
        f"({task.output_activation}) and '{LOGITS}', (N, classes); test-time augmentation level "
        f"{metadata['tta']}."
    )


def _pytorch_probabilities(
    network: nn.Module,
    normalization: Normalization,
    images: np.ndarray,
    tta: int,
    task: Any,
    logit_offset: list[float] | None,
    calibration: tuple[float | None, list[list[float]] | None] = (None, None),
) -> np.ndarray:
    """The reference: cnnkit's own prediction path (InputTransform, tta_logits), float32 on CPU."""
    pixels, cpu = torch.from_numpy(images), torch.device("cpu")
    logits = predict_logits(
        network,
        pixels,
        normalization,
        cpu,
        torch.float32,
        tta=tta,
        logit_offset=logit_offset,
        temperature=calibration[0],
        confidence_map=calibration[1],
    )
    return task.probabilities(logits).numpy()


def _max_difference(data: bytes, input_format: str, images: np.ndarray, expected: np.ndarray) -> float:
    """Largest |ONNX Runtime - PyTorch| over the whole batch at once and the first image alone."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    inputs = images if input_format == UINT8_NHWC else images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    batch = session.run([PROBABILITIES], {INPUT_NAME: np.ascontiguousarray(inputs)})[0]
    single = session.run([PROBABILITIES], {INPUT_NAME: np.ascontiguousarray(inputs[:1])})[0]
    return float(max(np.abs(batch - expected).max(), np.abs(single - expected[:1]).max()))


def _import_export_dependencies() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401  (verification)
        import onnxscript  # noqa: F401  (the dynamo exporter's operator library)
    except ImportError as error:
        raise ImportError(
            f"cnnkit export needs onnx, onnxscript and onnxruntime ({error.name} is missing): "
            "pip install 'cnnkit[export]'"
        ) from None
    return onnx
