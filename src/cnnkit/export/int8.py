"""int8 ONNX models measured against their float32 original, and kept only where they pay.

``measure_throughput`` and ``agreement`` say what quantizing (``export.quantize``) bought and what
it cost; ``decide_int8`` turns both into a decision with a one-line reason and a record for the
file's metadata: int8 is refused when its accuracy drops more than ``MAX_ACCURACY_DROP`` points,
and when it is not faster. Needs the ``export`` extra (onnx, onnxruntime); torch-free.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.export.quantize import (
    QDQ,
    QOPERATOR,
    check_batch_size,
    describe_model,
    model_bytes,
    model_inputs,
    quantize_onnx,
    session_input,
    with_metadata,
)
from cnnkit.inference.onnx_runtime import PROBABILITIES
from cnnkit.inference.throughput import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_SECONDS,
    DEFAULT_WARMUP,
    Throughput,
    batch_of,
    check_batch_sizes,
    check_timing,
    time_batches,
)
from cnnkit.messages import short_repr
from cnnkit.runtime.cpu import cpu_info

__all__ = ["QDQ", "QOPERATOR", "quantize_onnx", "with_metadata"]  # re-exported for callers of int8

MAX_ACCURACY_DROP = 0.5  # percentage points of top-1 accuracy int8 may lose


@dataclass(frozen=True)
class Agreement:
    """Two models on the same images: how often their top-1 classes agree, and their accuracies.

    ``fp32_accuracy`` and ``int8_accuracy`` are fractions (None without labels);
    ``max_probability_difference`` is the largest absolute difference of any probability.
    """

    count: int
    agreement: float
    fp32_accuracy: float | None
    int8_accuracy: float | None
    max_probability_difference: float


@dataclass(frozen=True)
class Int8Decision:
    """Whether to keep the int8 model, why (one line, with the figures), and what to record."""

    keep_int8: bool
    reason: str
    record: dict[str, Any]


def measure_throughput(
    model: bytes | str | os.PathLike,
    images: np.ndarray,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: int | None = None,
    seconds: float = DEFAULT_SECONDS,
    *,
    warmup: int = DEFAULT_WARMUP,
    max_runs: int = 10_000,
) -> dict[int, Throughput]:
    """Images a second and batch latency (p50, p99) of ``model`` on CPU, one entry a batch size.

    Timed by ``inference.throughput.time_batches``: at each batch size, ``warmup`` untimed runs,
    then runs of one batch (``images`` repeated as needed) for ``seconds``, at least ``MIN_RUNS``
    and at most ``max_runs`` of them; images a second from the median latency. ``threads`` sets
    ONNX Runtime's intra-op threads (None: its default, one a physical core). Images are as
    ``quantize_onnx`` takes them.
    """
    runtime = _import_onnxruntime()
    sizes = check_batch_sizes(batch_sizes)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an integer >= 1. Received: threads={threads!r}")
    check_timing(seconds, warmup, max_runs)
    session = _session(runtime, model, threads)
    pixel_format, size = session_input(session)
    inputs = model_inputs(images, pixel_format, size, "images")
    name = session.get_inputs()[0].name
    results = {}
    for batch_size in sizes:
        feed = {name: batch_of(inputs, batch_size)}
        results[batch_size] = time_batches(
            lambda feed=feed: session.run([PROBABILITIES], feed), batch_size, seconds, warmup, max_runs
        )
    return results


def agreement(
    fp32_model: bytes | str | os.PathLike,
    int8_model: bytes | str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray | Sequence[int] | None = None,
    batch_size: int = 256,
    threads: int | None = None,
) -> Agreement:
    """Top-1 agreement of two models (the float and the int8 one) on ``images``, and the accuracy
    of each when ``labels`` (class indices, one an image) are given.

    Both models' ``"probabilities"`` are compared (their largest, for a multi-label model too),
    ``batch_size`` images at a time; images are as ``quantize_onnx`` takes them.
    """
    runtime = _import_onnxruntime()
    check_batch_size(batch_size, "batch_size")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise ValueError(
                f"labels must be class indices, one an image ({len(images)}). "
                f"Received: labels with shape={labels.shape}, dtype={labels.dtype}"
            )
    probabilities = []
    for model in (fp32_model, int8_model):
        session = _session(runtime, model, threads)
        pixel_format, size = session_input(session)
        inputs = model_inputs(images, pixel_format, size, "images")
        if len(inputs) == 0:
            raise ValueError("images must hold at least one image. Received: 0 images")
        name = session.get_inputs()[0].name
        probabilities.append(
            np.concatenate(
                [
                    session.run([PROBABILITIES], {name: inputs[start : start + batch_size]})[0]
                    for start in range(0, len(inputs), batch_size)
                ]
            )
        )
    fp32, int8 = probabilities
    if fp32.shape != int8.shape:
        raise ValueError(
            f"The two models' outputs differ in shape. Received: fp32 {fp32.shape}, int8 {int8.shape}"
        )
    fp32_top, int8_top = fp32.argmax(axis=1), int8.argmax(axis=1)
    if labels is not None and labels.size and not 0 <= labels.min() <= labels.max() < fp32.shape[1]:
        raise ValueError(
            f"labels must be class indices in [0, {fp32.shape[1]}). Received: labels in "
            f"[{labels.min()}, {labels.max()}]"
        )
    return Agreement(
        count=len(fp32),
        agreement=float(np.mean(fp32_top == int8_top)),
        fp32_accuracy=None if labels is None else float(np.mean(fp32_top == labels)),
        int8_accuracy=None if labels is None else float(np.mean(int8_top == labels)),
        max_probability_difference=float(np.abs(fp32 - int8).max()),
    )


def decide_int8(
    fp32: Mapping[int, Throughput],
    int8: Mapping[int, Throughput],
    fp32_accuracy: float,
    int8_accuracy: float,
    *,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    allow_accuracy_drop: bool = False,
    quant_format: str | None = None,
    threads: int | None = None,
    cpu: Mapping[str, Any] | None = None,
) -> Int8Decision:
    """Keep the int8 model or the float one, from both models' throughput and accuracy.

    int8 is kept when it is faster (more images a second) at every batch size both were
    measured at, and its top-1 accuracy (a fraction, like ``fp32_accuracy``) is at most
    ``max_accuracy_drop`` percentage points below the float model's, unless
    ``allow_accuracy_drop``. The reason is one line with both figures; the record (for the
    export metadata) holds both measurements, both accuracies, ``quant_format``, ``threads`` and
    the CPU (``cpu``, default ``cpu_info()``): its name and instruction sets.
    """
    for name, value in (("fp32", fp32), ("int8", int8)):
        if (
            not isinstance(value, Mapping)
            or not value
            or not all(
                isinstance(item, Throughput) and 0 < item.images_per_second < float("inf")
                for item in value.values()
            )
        ):
            raise ValueError(
                f"{name} must map batch sizes to Throughput measurements (images a second > 0). "
                f"Received: {name}={short_repr(value)}"
            )
    for name, value in (("fp32_accuracy", fp32_accuracy), ("int8_accuracy", int8_accuracy)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a fraction in [0, 1]. Received: {name}={value!r}")
    if (
        isinstance(max_accuracy_drop, bool)
        or not isinstance(max_accuracy_drop, int | float)
        or not (0 <= max_accuracy_drop <= 100)
    ):
        raise ValueError(
            "max_accuracy_drop must be percentage points in [0, 100]. "
            f"Received: max_accuracy_drop={max_accuracy_drop!r}"
        )
    shared = sorted(set(fp32) & set(int8), reverse=True)
    if not shared:
        raise ValueError(
            f"fp32 and int8 must be measured at a common batch size. "
            f"Received: fp32 at {sorted(fp32)}, int8 at {sorted(int8)}"
        )
    # Rounded: 0.871 - 0.866 is a drop of 0.5 points, not 0.5000000000000004.
    drop = round((fp32_accuracy - int8_accuracy) * 100, 9)
    accuracy = (
        f"{fp32_accuracy:.2%} fp32 -> {int8_accuracy:.2%} int8 "
        f"({-drop:+.2f} points, {max_accuracy_drop:g} allowed)"
    )
    speeds = {size: (fp32[size].images_per_second, int8[size].images_per_second) for size in shared}
    slower = [size for size in shared if not speeds[size][1] > speeds[size][0]]
    speed = "; ".join(
        f"batch {size}: {speeds[size][0]:,.0f} images/s fp32, {speeds[size][1]:,.0f} int8"
        f" ({speeds[size][1] / speeds[size][0]:.2f}x)"
        for size in shared
    )
    refused_accuracy = drop > max_accuracy_drop and not allow_accuracy_drop
    if refused_accuracy:
        reason = f"fp32 kept: int8 loses too much accuracy, {accuracy}; {speed}"
    elif slower:
        where = " or ".join(f"batch {size}" for size in slower)
        reason = f"fp32 kept: int8 is not faster at {where}; {speed}; accuracy {accuracy}"
    else:
        reason = f"int8 kept: faster at every batch size, {speed}; accuracy {accuracy}"
    keep = not refused_accuracy and not slower
    record = {
        "kept": "int8" if keep else "fp32",
        "reason": reason,
        "quant_format": quant_format,
        "accuracy": {"fp32": round(float(fp32_accuracy), 6), "int8": round(float(int8_accuracy), 6)},
        "max_accuracy_drop_points": max_accuracy_drop,
        "throughput": {
            "fp32": {str(size): item.to_dict() for size, item in sorted(fp32.items())},
            "int8": {str(size): item.to_dict() for size, item in sorted(int8.items())},
        },
        "threads": threads if threads is not None else "onnxruntime default",
        "cpu": dict(cpu) if cpu is not None else cpu_info(),
    }
    return Int8Decision(keep_int8=keep, reason=reason, record=record)


def _session(runtime: Any, model: Any, threads: int | None) -> Any:
    options = runtime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    data = model_bytes(model)
    try:
        return runtime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for a damaged or foreign model
        raise ValueError(
            f"Cannot run the model with ONNX Runtime ({type(error).__name__}: {error}). "
            f"Received: model={describe_model(model)}"
        ) from None


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("int8 export needs onnxruntime: pip install 'cnnkit[export]'") from None
    return onnxruntime


CALIBRATION_IMAGES = 256  # a few hundred of the run's training images set the activation ranges
TIMING_IMAGES = 64


@dataclass(frozen=True)
class Int8Export:
    """What ``export_int8`` wrote: ``kept`` "int8" or "fp32" (int8 was not faster) at ``path``, why
    (``reason``, one line with the figures) and the record in the file's metadata (``"int8"``)."""

    path: Path
    kept: str
    reason: str
    record: dict[str, Any]


def export_int8(
    checkpoint_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    calibration: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    tta: bool = False,
    quant_format: str | None = None,
    threads: int | None = None,
    seconds: float = 1.0,
    allow_accuracy_drop: bool = False,
    keep_int8: bool = False,
    force: bool = False,
) -> Int8Export:
    """Export the checkpoint as an int8 ONNX model where that pays, measured on this machine.

    The float32 graph is exported and verified as ``export_onnx`` does, then quantized
    (``quant_format`` None: QDQ and QOperator both, the faster at batch 64 kept) on
    ``CALIBRATION_IMAGES`` of the run's training images (or of ``calibration``: anything
    ``cnnkit predict`` reads). Both are scored on the run's validation images (or ``data``'s test
    split, else all of it) and timed at batch 1 and 64 for ``seconds`` each. An accuracy drop
    above ``MAX_ACCURACY_DROP`` points raises a one-line ``ValueError`` with both figures and
    writes nothing, unless ``allow_accuracy_drop``. When int8 is not faster at every batch size,
    the float32 model is written instead and ``reason`` says so with the numbers, unless
    ``keep_int8``. The file's metadata ``"int8"`` records both measurements, the accuracies and
    the CPU. ``output`` and ``force`` as ``export_onnx``'s; ``tta`` too.
    """
    from cnnkit.export.onnx import checked_output, export_onnx
    from cnnkit.export.verification_images import int8_images
    from cnnkit.fileio import atomic_write_bytes

    if quant_format not in (None, QDQ, QOPERATOR):
        raise ValueError(
            f"quant_format must be 'qdq', 'qoperator' or None. Received: quant_format={quant_format!r}"
        )
    check_timing(seconds, DEFAULT_WARMUP, 10_000)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an integer >= 1. Received: threads={threads!r}")
    target = checked_output(checkpoint_path, output, force)  # refused before any work
    images = int8_images(checkpoint_path, calibration, data, CALIBRATION_IMAGES)
    with tempfile.TemporaryDirectory(prefix="cnnkit-int8-") as folder:
        fp32 = export_onnx(checkpoint_path, Path(folder) / "fp32.onnx", tta=tta, force=True).path.read_bytes()
    timing = images.held_out[:TIMING_IMAGES]
    fp32_speed = measure_throughput(fp32, timing, threads=threads, seconds=seconds)
    chosen, int8, int8_speed, tried = _fastest_int8(
        fp32, images.calibration, timing, quant_format, threads, seconds
    )
    scores = agreement(fp32, int8, images.held_out, images.labels, threads=threads)
    _refuse_accuracy_drop(scores, images.held_out_source, allow_accuracy_drop)
    decision = decide_int8(
        fp32_speed,
        int8_speed,
        scores.fp32_accuracy,
        scores.int8_accuracy,
        allow_accuracy_drop=allow_accuracy_drop,
        quant_format=chosen,
        threads=threads,
    )
    kept = "int8" if decision.keep_int8 or keep_int8 else "fp32"
    reason = (
        decision.reason
        if kept == "fp32" or decision.keep_int8
        else f"int8 kept (--keep-int8); {decision.reason}"
    )
    record = {
        **decision.record,
        "kept": kept,
        "reason": reason,
        "agreement": round(scores.agreement, 6),
        "calibration_images": f"{len(images.calibration)} of {images.calibration_source}",
        "accuracy_images": f"{len(images.held_out)} of {images.held_out_source}",
        "formats_tried": tried,
    }
    atomic_write_bytes(target, with_metadata(int8 if kept == "int8" else fp32, {"int8": record}))
    return Int8Export(path=target, kept=kept, reason=reason, record=record)


def _fastest_int8(
    fp32: bytes,
    calibration: np.ndarray,
    timing: np.ndarray,
    quant_format: str | None,
    threads: int | None,
    seconds: float,
) -> tuple[str, bytes, dict[int, Throughput], dict[str, Any]]:
    """(format, int8 bytes, its throughput, every format's figures at the largest batch): of
    ``quant_format``, or of QDQ and QOperator the faster at the largest batch on this machine."""
    speeds, models = {}, {}
    for name in (quant_format,) if quant_format else (QDQ, QOPERATOR):
        models[name] = quantize_onnx(fp32, calibration, name)
        speeds[name] = measure_throughput(models[name], timing, threads=threads, seconds=seconds)
    largest = max(DEFAULT_BATCH_SIZES)
    chosen = max(speeds, key=lambda name: speeds[name][largest].images_per_second)
    return chosen, models[chosen], speeds[chosen], {name: speeds[name][largest].to_dict() for name in speeds}


def _refuse_accuracy_drop(scores: Agreement, source: str, allowed: bool) -> None:
    drop = (scores.fp32_accuracy - scores.int8_accuracy) * 100
    if round(drop, 9) > MAX_ACCURACY_DROP and not allowed:
        raise ValueError(
            f"int8 refused, nothing written: it loses {drop:.2f} points of accuracy on {scores.count:,} "
            f"images of {source} ({scores.fp32_accuracy:.2%} fp32 -> {scores.int8_accuracy:.2%} int8, "
            f"{MAX_ACCURACY_DROP:g} allowed); --allow-accuracy-drop keeps it anyway"
        )
