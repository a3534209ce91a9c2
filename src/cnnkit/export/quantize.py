"""Static int8 quantization of an exported float32 ONNX graph, by ONNX Runtime's quantizer.

``quantize_onnx`` quantizes a graph ``export_onnx`` wrote (weights int8 per output channel,
activations 8-bit with ranges calibrated on real images) and gives back the int8 file's bytes
with every ``metadata_props`` entry of the float one, so that ``OnnxClassifier`` (and ``cnnkit
predict`` / ``serve``) load it like any ``.onnx``. Only the convolutions and matrix products are
quantized (``DEFAULT_OP_TYPES``): the graph's uint8 -> float normalisation, its activations (GELU,
ReLU), pooling, the temperature and the softmax stay float32 between them. ``with_metadata``
adds a record to a model's description. The defaults were chosen by measurement (the comment
above ``DEFAULT_QUANT_FORMAT``). Needs the ``export`` extra (onnx, onnxruntime); torch-free.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.fileio import json_text
from cnnkit.messages import short_repr
from cnnkit.runtime.constants import FLOAT_NCHW, UINT8_NHWC

QDQ = "qdq"  # QuantizeLinear / DequantizeLinear pairs around float operators; ORT fuses them at load
QOPERATOR = "qoperator"  # the integer operators themselves (QLinearConv, ...)
QUANT_FORMATS = (QDQ, QOPERATOR)
ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Measured 2026-12-07 on the dev machine (AMD EPYC, 2 cores, AVX-512 VNNI; ONNX Runtime 1.32), images/s
# (batch / median batch latency, median of 3 interleaved rounds), fp32 -> int8 with uint8 activations:
#   CIFAR-10 "fast" network, 32 px (the default run's best.pt), 1 thread:
#     batch 1:   412 -> QDQ 1,352, QOperator 1,348     batch 64:   439 -> QDQ 1,353, QOperator 1,361
#   same, 2 threads:
#     batch 1:   721 -> QDQ 1,584, QOperator 1,574     batch 64:   838 -> QDQ 1,886, QOperator 1,937
#   ResNet-18, 224 px, 1 thread:
#     batch 1:  28.4 -> QDQ  83.2, QOperator  76.3     batch 64:  29.5 -> QDQ  85.0, QOperator  72.6
#   same, 2 threads:
#     batch 1:  52.9 -> QDQ 128.5, QOperator 126.9     batch 64:  57.4 -> QDQ 164.4, QOperator 120.8
# QDQ is as fast as QOperator on the small network and 17-36% faster on ResNet-18 at batch 64: the
# default. int8 activations (S8S8) instead of uint8: up to 20% slower in QDQ on the small network,
# 36 images/s on ResNet-18 (QDQ, 1 thread) and under 125 on the small network in QOperator (VNNI
# multiplies uint8 by int8). Quantizing Add and Relu too bought ResNet-18's QDQ no speed; MaxPool
# too changed no prediction of the small network.
# Top-1 accuracy on all 10,000 CIFAR-10 test images, 256 calibration images from the training set
# (two draws): fp32 88.33%; int8 QDQ calibrated by percentile (99.999%) 88.27% and 88.32% (the
# top-1 class of 99.12% and 99.19% of the images kept), by min-max 88.27% and 88.18% (99.09%,
# 99.22%); with 512 images 88.41%, 88.42% against 88.23%, 88.32%. Percentile costs 2-3x the
# calibration time (3 s against 1 s here; ResNet-18, 128 images: 21 s against 11 s), so it is
# the default for a small but steady gain in agreement.
DEFAULT_QUANT_FORMAT = QDQ
DEFAULT_ACTIVATION_TYPE = "uint8"
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")
DEFAULT_CALIBRATION_METHOD = "percentile"
DEFAULT_CALIBRATION_BATCH = 32
DEFAULT_CALIBRATION_IMAGES = 256  # what a caller should hand quantize_onnx (see above), where it has them
_ONNX_UINT8, _ONNX_FLOAT = 2, 1  # onnx.TensorProto element types


def quantize_onnx(
    fp32_model: bytes | str | os.PathLike,
    calibration_images: np.ndarray,
    quant_format: str = DEFAULT_QUANT_FORMAT,
    *,
    activation_type: str = DEFAULT_ACTIVATION_TYPE,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    batch_size: int = DEFAULT_CALIBRATION_BATCH,
    preprocess: bool = True,
    nodes_to_exclude: Sequence[str] = (),
) -> bytes:
    """The int8 version of the float32 ONNX model ``fp32_model`` (its bytes or a path), as bytes.

    Static quantization by ONNX Runtime: weights int8, one scale an output channel; activations
    ``activation_type`` (``"uint8"`` or ``"int8"``) with one scale a tensor, their ranges taken
    from ``calibration_images`` run through the model ``batch_size`` at a time
    (``calibration_method``: ``"minmax"``, ``"entropy"`` or ``"percentile"``). Only the
    operators in ``op_types`` are quantized, less the nodes named in ``nodes_to_exclude``.

    Args:
        calibration_images: uint8 ``(N, H, W, 3)`` RGB pixels, as decoded images come (converted
            for a graph exported with ``input_format="float"``), or, for such a graph, float
            ``(N, 3, H, W)`` in [0, 1]. A few hundred images of the data the model will see.
        quant_format: ``"qdq"`` (QuantizeLinear / DequantizeLinear around float operators, fused
            by ONNX Runtime at load) or ``"qoperator"`` (QLinearConv and the like written out).
        preprocess: run ONNX Runtime's ``quant_pre_process`` first (shape inference, constant
            folding, Conv + BatchNormalization fusion), as its quantizer recommends.

    The result keeps every ``metadata_props`` entry, the doc string and the producer of
    ``fp32_model``; the caller writes it (atomically) and may add a record (``with_metadata``).
    """
    if quant_format not in QUANT_FORMATS:
        raise ValueError(
            f"quant_format must be 'qdq' or 'qoperator'. Received: quant_format={quant_format!r}"
        )
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(
            f"activation_type must be 'uint8' or 'int8'. Received: activation_type={activation_type!r}"
        )
    if calibration_method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}. "
            f"Received: calibration_method={calibration_method!r}"
        )
    if isinstance(op_types, str) or not op_types or not all(isinstance(name, str) for name in op_types):
        raise ValueError(
            f"op_types must be a non-empty list of operator names. Received: op_types={short_repr(op_types)}"
        )
    if isinstance(nodes_to_exclude, str) or not all(isinstance(name, str) for name in nodes_to_exclude):
        raise ValueError(
            f"nodes_to_exclude must be a list of node names. "
            f"Received: nodes_to_exclude={short_repr(nodes_to_exclude)}"
        )
    check_batch_size(batch_size, "batch_size")
    onnx, quantization = _import_quantization()
    data = model_bytes(fp32_model)
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(
            f"fp32_model is not an ONNX model ({type(error).__name__}: {error}). "
            f"Received: fp32_model={describe_model(fp32_model)}"
        ) from None
    pixel_format, size = _graph_input(model)
    inputs = model_inputs(calibration_images, pixel_format, size, "calibration_images")
    if len(inputs) == 0:
        raise ValueError("calibration_images must hold at least one image. Received: 0 images")

    with tempfile.TemporaryDirectory(prefix="cnnkit-int8-") as folder, _quiet_quantizer():
        source = Path(folder) / "fp32.onnx"
        source.write_bytes(data)
        if preprocess:
            prepared = Path(folder) / "prepared.onnx"
            quantization.shape_inference.quant_pre_process(
                str(source), str(prepared), skip_symbolic_shape=True
            )
            source = prepared
        output = Path(folder) / "int8.onnx"
        quantization.quantize_static(
            str(source),
            str(output),
            _calibration_reader(
                quantization.CalibrationDataReader, model.graph.input[0].name, inputs, batch_size
            ),
            quant_format=quantization.QuantFormat.QDQ
            if quant_format == QDQ
            else quantization.QuantFormat.QOperator,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=(
                quantization.QuantType.QUInt8 if activation_type == "uint8" else quantization.QuantType.QInt8
            ),
            weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method={
                "minmax": quantization.CalibrationMethod.MinMax,
                "entropy": quantization.CalibrationMethod.Entropy,
                "percentile": quantization.CalibrationMethod.Percentile,
            }[calibration_method],
            # One batch a collection: the histogram calibrators otherwise keep every batch's
            # intermediate outputs until the end (3.4 GB for 128 ResNet-18 images at 224 px).
            extra_options={"CalibStridedMinMax": 1},
        )
        quantized = onnx.load(str(output))
    # The quantizer rewrites the model proto; the description OnnxClassifier reads is the float one's.
    del quantized.metadata_props[:]
    for entry in model.metadata_props:
        quantized.metadata_props.add(key=entry.key, value=entry.value)
    quantized.doc_string = model.doc_string
    quantized.producer_name, quantized.producer_version = model.producer_name, model.producer_version
    return quantized.SerializeToString()


def with_metadata(model: bytes | str | os.PathLike, entries: Mapping[str, Any]) -> bytes:
    """``model``'s bytes with ``entries`` added to (or replacing those of) its ``metadata_props``.

    Strings are stored as they are, anything else as JSON (e.g. ``Int8Decision.record``).
    """
    onnx, _ = _import_quantization()
    if not isinstance(entries, Mapping) or not all(isinstance(key, str) and key for key in entries):
        raise ValueError(
            f"entries must map non-empty strings to values. Received: entries={short_repr(entries)}"
        )
    try:
        proto = onnx.load_from_string(model_bytes(model))
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(
            f"model is not an ONNX model ({type(error).__name__}: {error}). "
            f"Received: model={describe_model(model)}"
        ) from None
    kept = [(entry.key, entry.value) for entry in proto.metadata_props if entry.key not in entries]
    del proto.metadata_props[:]
    for key, value in [
        *kept,
        *((key, value if isinstance(value, str) else json_text(value)) for key, value in entries.items()),
    ]:
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def _calibration_reader(base: type, name: str, inputs: np.ndarray, batch_size: int) -> Any:
    """The calibration inputs, ``batch_size`` at a time, as ONNX Runtime's ``CalibrationDataReader``.

    Its length and ``set_range`` count batches: the quantizer (``CalibStridedMinMax``) collects
    one range of batches at a time, so only one batch's intermediate outputs are held at once.
    """
    starts = list(range(0, len(inputs), batch_size))

    class Reader(base):
        def __init__(self) -> None:
            self.set_range(0, len(starts))

        def __len__(self) -> int:
            return len(starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(starts[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.pending, None)
            return None if start is None else {name: inputs[start : start + batch_size]}

        def rewind(self) -> None:
            self.set_range(0, len(starts))

    return Reader()


def _graph_input(model: Any) -> tuple[str, int | None]:
    """The pixel format (cnnkit's metadata, else the input's type) and the image side, if fixed."""
    if len(model.graph.input) != 1:
        raise ValueError(
            f"fp32_model must have one input, the images. Received: inputs "
            f"{[item.name for item in model.graph.input]}"
        )
    tensor = model.graph.input[0].type.tensor_type
    kind = {_ONNX_UINT8: "tensor(uint8)", _ONNX_FLOAT: "tensor(float)"}.get(
        tensor.elem_type, str(tensor.elem_type)
    )
    shape = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    return _pixel_format(metadata.get("input_format"), kind, shape)


def session_input(session: Any) -> tuple[str, int | None]:
    item = session.get_inputs()[0]
    shape = [dim if isinstance(dim, int) else None for dim in item.shape]
    return _pixel_format(session.get_modelmeta().custom_metadata_map.get("input_format"), item.type, shape)


def _pixel_format(declared: str | None, kind: str, shape: list) -> tuple[str, int | None]:
    graph_format = {"tensor(uint8)": UINT8_NHWC, "tensor(float)": FLOAT_NCHW}.get(kind)
    if graph_format is None or len(shape) != 4:
        raise ValueError(
            f"The model's input must be uint8 (N, H, W, 3) or float (N, 3, H, W) images. "
            f"Received: {kind} with shape {shape}"
        )
    if declared is not None and declared != graph_format:
        raise ValueError(
            f"The model's metadata says input_format={declared!r} but its input is {kind}. "
            f"Received: input_format={declared!r}"
        )
    size = shape[1] if graph_format == UINT8_NHWC else shape[2]
    return graph_format, size


def model_inputs(images: Any, pixel_format: str, size: int | None, name: str) -> np.ndarray:
    """``images`` as the graph takes them: uint8 NHWC as they are, or converted to float NCHW."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array. Received: {name}={short_repr(images)}")
    side = "H" if size is None else size
    if images.dtype == np.uint8:
        if (
            images.ndim != 4
            or images.shape[3] != 3
            or (size is not None and images.shape[1:3] != (size, size))
        ):
            raise ValueError(f"{name} must have shape (N, {side}, {side}, 3). Received: shape={images.shape}")
        if pixel_format == UINT8_NHWC:
            return np.ascontiguousarray(images)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
    if images.dtype.kind == "f" and pixel_format == FLOAT_NCHW:
        if (
            images.ndim != 4
            or images.shape[1] != 3
            or (size is not None and images.shape[2:4] != (size, size))
        ):
            raise ValueError(f"{name} must have shape (N, 3, {side}, {side}). Received: shape={images.shape}")
        return np.ascontiguousarray(images, dtype=np.float32)
    allowed = "uint8 (N, H, W, 3)" + (
        " or float (N, 3, H, W) in [0, 1]" if pixel_format == FLOAT_NCHW else ""
    )
    raise ValueError(
        f"{name} must be {allowed} for a model whose input is {pixel_format}. Received: dtype={images.dtype}"
    )


def model_bytes(model: Any) -> bytes:
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        return path.read_bytes()
    raise ValueError(f"The model must be bytes or a path to an .onnx file. Received: {describe_model(model)}")


def describe_model(model: Any) -> str:
    if isinstance(model, bytes | bytearray | memoryview):
        return f"{len(model)} bytes"
    return short_repr(model)


def check_batch_size(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must hold integers >= 1. Received: {name}={short_repr(value)}")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # The quantizer logs its progress and warns about opsets and shape inference at INFO/WARNING;
    # the histogram calibrators print theirs.
    logger = logging.getLogger()
    level = logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            logger.setLevel(logging.ERROR)
            yield
        finally:
            logger.setLevel(level)


def _import_quantization() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime.quantization
        import onnxruntime.quantization.shape_inference
    except ImportError as error:
        raise ImportError(
            f"int8 export needs onnx and onnxruntime ({error.name} is missing): pip install 'cnnkit[export]'"
        ) from None
    return onnx, onnxruntime.quantization
