"""int8 export: the quantized graph predicts as the float one, keeps its description, and is kept
only when it is both accurate enough and faster."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.cli import main
from cnnkit.export import int8 as int8_module
from cnnkit.export.int8 import (
    QDQ,
    QOPERATOR,
    agreement,
    decide_int8,
    measure_throughput,
    quantize_onnx,
    with_metadata,
)
from cnnkit.export.onnx import export_onnx
from cnnkit.inference.onnx_runtime import OnnxClassifier
from cnnkit.inference.throughput import MIN_RUNS, Throughput
from cnnkit.runtime.cpu import INSTRUCTION_FLAGS, cpu_info
from tests.conftest import CLASS_NAMES, make_quadrant_images, write_image_folder

SIZE = 16
# What int8 must keep of the float model on held-out images: the top-1 class of at least this
# share of them, every probability within this much, and the logits within this RMS error
# relative to their RMS. Measured on the AMD EPYC dev machine: 100%, 4e-5 and 1.2%; calibrated
# on black images instead: 100% (the task is easy), 0.74 and 99%.
MIN_AGREEMENT = 0.95
MAX_PROBABILITY_DIFFERENCE = 0.01
MAX_RELATIVE_LOGIT_ERROR = 0.05
QUICK = ["--seconds", "0.1", "--threads", "1"]  # the export's timing, short


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A tutorial CNN trained on the quadrant images, exported with uint8 and with float input."""
    folder = tmp_path_factory.mktemp("int8")
    images, labels = make_quadrant_images(160, SIZE, seed=3)
    classifier = Classifier(
        "tutorial", class_names=CLASS_NAMES, image_size=SIZE, device="cpu", precision="fp32"
    )
    classifier.fit(images, labels, batch_size=32, epochs=3, recipe="tutorial", verbose=False)
    checkpoint = folder / "tutorial.pt"
    classifier.save(checkpoint)
    return {
        "uint8": export_onnx(checkpoint, folder / "uint8.onnx", verify_count=8).path,
        "float": export_onnx(
            checkpoint, folder / "float.onnx", input_format="float", exporter="torchscript", verify_count=8
        ).path,
    }


@pytest.fixture(scope="module")
def calibration_images() -> np.ndarray:
    return make_quadrant_images(64, SIZE, seed=5)[0]


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    return make_quadrant_images(200, SIZE, seed=6)


@pytest.fixture(scope="module")
def quantized(exported, calibration_images) -> dict[str, bytes]:
    return {
        quant_format: quantize_onnx(exported["uint8"], calibration_images, quant_format)
        for quant_format in (QDQ, QOPERATOR)
    }


def _throughput(**images_per_second: float) -> dict[int, Throughput]:
    """``_throughput(b1=100, b64=900)``: measurements as measure_throughput returns them."""
    return {
        int(key[1:]): Throughput(
            int(key[1:]), value, 1000 * int(key[1:]) / value, 2000 * int(key[1:]) / value, 9
        )
        for key, value in images_per_second.items()
    }


@pytest.mark.parametrize("quant_format", [QDQ, QOPERATOR])
def test_int8_predictions_agree_with_fp32(exported, quantized, held_out, quant_format):
    model = onnx.load_from_string(quantized[quant_format])
    operators = {node.op_type for node in model.graph.node}
    # Really quantized: int8 convolutions (fused by ONNX Runtime from QDQ, or written out) and int8 weights.
    assert (
        ({"QuantizeLinear", "DequantizeLinear"} <= operators)
        if quant_format == QDQ
        else ("QLinearConv" in operators)
    )
    assert "Conv" not in operators or quant_format == QDQ
    int8_weights = [item for item in model.graph.initializer if item.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(item.dims)) for item in int8_weights) > 1000
    # The float32 pixel normalisation and the softmax are left alone.
    assert "Softmax" in operators and "Cast" in operators

    images, labels = held_out
    result = agreement(exported["uint8"], quantized[quant_format], images, labels)
    assert result.count == len(images)
    assert result.agreement >= MIN_AGREEMENT
    assert result.max_probability_difference <= MAX_PROBABILITY_DIFFERENCE
    assert result.fp32_accuracy > 0.5  # the model learned (chance: 0.25), so agreeing means something
    assert abs(result.fp32_accuracy - result.int8_accuracy) <= 0.02
    fp32_logits, int8_logits = (
        _logits(model, images) for model in (exported["uint8"], quantized[quant_format])
    )
    error = np.sqrt(np.mean((fp32_logits - int8_logits) ** 2) / np.mean(fp32_logits**2))
    assert error <= MAX_RELATIVE_LOGIT_ERROR


def _logits(model: Path | bytes, images: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0]


def test_agreement_counts_each_models_accuracy(exported, quantized, held_out):
    images, labels = held_out
    int8 = quantized[QDQ]
    wrong = (labels + 1) % len(CLASS_NAMES)
    result = agreement(exported["uint8"], int8, images, labels)
    flipped = agreement(exported["uint8"], int8, images, wrong)
    expected = np.mean(OnnxClassifier(exported["uint8"]).predict(images).argmax(axis=1) == labels)
    assert result.fp32_accuracy == pytest.approx(expected)
    assert flipped.fp32_accuracy < 0.5 and flipped.agreement == result.agreement
    # Against a model that always answers the last class, each model's accuracy is its own.
    constant = agreement(exported["uint8"], _always_last_class(), images, labels)
    assert constant.int8_accuracy == pytest.approx(np.mean(labels == len(CLASS_NAMES) - 1))
    assert constant.fp32_accuracy == result.fp32_accuracy
    fp32_classes = OnnxClassifier(exported["uint8"]).predict(images).argmax(axis=1)
    assert constant.agreement == pytest.approx(np.mean(fp32_classes == len(CLASS_NAMES) - 1))
    itself = agreement(exported["uint8"], exported["uint8"], images)
    assert itself.agreement == 1.0 and itself.max_probability_difference == 0.0
    assert itself.fp32_accuracy is None and itself.int8_accuracy is None


def _always_last_class() -> bytes:
    """A hand-built graph taking the same images whose probabilities are (0, ..., 0, mean pixel)."""
    helper, classes = onnx.helper, len(CLASS_NAMES)
    last = np.zeros((1, classes), dtype=np.float32)
    last[0, -1] = 1
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["pixels"], to=onnx.TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Reshape", ["mean", "column"], ["means"]),
            helper.make_node("MatMul", ["means", "last"], ["probabilities"]),
        ],
        "always_last_class",
        [helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", classes])],
        [
            onnx.numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "column"),
            onnx.numpy_helper.from_array(last, "last"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_int8_file_keeps_metadata_and_loads_as_any_onnx(exported, quantized, held_out, tmp_path):
    original = onnx.load(str(exported["uint8"]))
    images, _ = held_out
    for quant_format, data in quantized.items():
        model = onnx.load_from_string(data)
        pairs = [(entry.key, entry.value) for entry in model.metadata_props]
        assert pairs == [(entry.key, entry.value) for entry in original.metadata_props]
        assert {"class_names", "normalization", "input_format", "image_size"} <= {key for key, _ in pairs}
        assert model.doc_string == original.doc_string and model.producer_name == "cnnkit"
        assert [output.name for output in model.graph.output] == ["probabilities", "logits"]

        path = tmp_path / f"{quant_format}.onnx"
        path.write_bytes(data)
        loaded = OnnxClassifier(path)
        assert loaded.class_names == CLASS_NAMES and loaded.image_size == SIZE
        assert loaded.metadata["model_name"] == "tutorial"
        probabilities = loaded.predict(images)
        assert probabilities.shape == (len(images), len(CLASS_NAMES))
        assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_float_input_graph_is_calibrated_from_pixels_or_floats(
    exported, calibration_images, held_out, tmp_path
):
    floats = calibration_images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    from_pixels = quantize_onnx(exported["float"], calibration_images)
    from_floats = quantize_onnx(exported["float"], floats)
    images, labels = held_out
    for data in (from_pixels, from_floats):
        result = agreement(exported["float"], data, images, labels)
        assert result.agreement >= MIN_AGREEMENT
        path = tmp_path / "float-int8.onnx"
        path.write_bytes(data)
        assert OnnxClassifier(path).input_format == "float-nchw-rgb"
    # A uint8 graph takes pixels only.
    with pytest.raises(
        ValueError, match=r"^calibration_images must be uint8 \(N, H, W, 3\) .*Received: dtype=float32$"
    ):
        quantize_onnx(exported["uint8"], floats)


def test_throughput_is_measured_within_its_budget(quantized, held_out):
    images, _ = held_out
    started = time.perf_counter()
    result = measure_throughput(
        quantized[QDQ], images[:8], batch_sizes=(1, 16), threads=1, seconds=0.05, warmup=1
    )
    assert time.perf_counter() - started < 10
    assert sorted(result) == [1, 16]
    for batch_size, item in result.items():
        assert item.batch_size == batch_size and item.runs >= MIN_RUNS
        assert 0 < item.latency_p50_ms <= item.latency_p99_ms
        assert item.images_per_second == pytest.approx(batch_size / item.latency_p50_ms * 1000)
    capped = measure_throughput(quantized[QDQ], images[:2], batch_sizes=(4,), seconds=60, max_runs=MIN_RUNS)
    assert capped[4].runs == MIN_RUNS


def test_the_decision_refuses_an_accuracy_drop_above_half_a_point():
    fp32, int8 = _throughput(b1=300, b64=400), _throughput(b1=900, b64=1200)
    decision = decide_int8(fp32, int8, fp32_accuracy=0.871, int8_accuracy=0.860, quant_format=QDQ)
    assert not decision.keep_int8
    assert "\n" not in decision.reason
    assert "87.10%" in decision.reason and "86.00%" in decision.reason and "accuracy" in decision.reason
    assert decision.record["kept"] == "fp32"
    # Allowed, or within 0.5 points, the faster int8 is kept.
    assert decide_int8(fp32, int8, 0.871, 0.860, allow_accuracy_drop=True).keep_int8
    close = decide_int8(fp32, int8, 0.871, 0.867)
    assert close.keep_int8 and "87.10%" in close.reason and "86.70%" in close.reason
    assert not decide_int8(fp32, int8, 0.871, 0.867, max_accuracy_drop=0.3).keep_int8
    assert decide_int8(fp32, int8, 0.871, 0.866).keep_int8  # exactly half a point is allowed
    assert not decide_int8(fp32, int8, 0.871, 0.8659).keep_int8


def test_the_decision_keeps_fp32_when_int8_is_not_faster():
    fp32 = _throughput(b1=300, b64=1000)
    slower_in_batches = decide_int8(fp32, _throughput(b1=450, b64=950), 0.87, 0.87)
    assert not slower_in_batches.keep_int8
    assert "\n" not in slower_in_batches.reason
    assert "not faster at batch 64" in slower_in_batches.reason
    assert "1,000" in slower_in_batches.reason and "950" in slower_in_batches.reason
    slower_alone = decide_int8(fp32, _throughput(b1=290, b64=2000), 0.87, 0.87)
    assert not slower_alone.keep_int8 and "not faster at batch 1" in slower_alone.reason
    slower_in_both = decide_int8(fp32, _throughput(b1=300, b64=1000), 0.87, 0.87)  # a tie is not faster
    assert "not faster at batch 64 or batch 1" in slower_in_both.reason
    faster = decide_int8(fp32, _throughput(b1=900, b64=3000), 0.87, 0.87)
    assert faster.keep_int8 and faster.reason.startswith("int8 kept")


def test_the_decision_record_holds_both_measurements_and_the_cpu(exported, quantized):
    fp32, int8 = _throughput(b1=300, b64=400), _throughput(b1=900, b64=1200)
    decision = decide_int8(fp32, int8, 0.9, 0.9, quant_format=QDQ, threads=2)
    record = json.loads(json.dumps(decision.record))  # JSON as it stands
    assert record["kept"] == "int8" and record["quant_format"] == QDQ and record["threads"] == 2
    assert record["throughput"]["fp32"]["64"]["images_per_second"] == 400
    assert record["throughput"]["int8"]["1"]["images_per_second"] == 900
    assert record["accuracy"] == {"fp32": 0.9, "int8": 0.9} and record["reason"] == decision.reason
    cpu = cpu_info()
    assert record["cpu"] == cpu and cpu["model"] and set(cpu["flags"]) <= set(INSTRUCTION_FLAGS)
    if Path("/proc/cpuinfo").is_file():
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].splitlines()[0].split()
        assert cpu["flags"] == [flag for flag in INSTRUCTION_FLAGS if flag in flags]
    given = decide_int8(fp32, int8, 0.9, 0.9, cpu={"model": "Test CPU", "flags": ["avx512_vnni"]})
    assert given.record["cpu"]["model"] == "Test CPU"

    # The record travels in the int8 file's metadata, beside everything the export wrote.
    data = with_metadata(quantized[QDQ], {"int8": decision.record, "note": "plain"})
    properties = {entry.key: entry.value for entry in onnx.load_from_string(data).metadata_props}
    assert json.loads(properties["int8"]) == record and properties["note"] == "plain"
    assert properties["class_names"] == json.dumps(CLASS_NAMES)


def _bad_calls(exported, calibration_images):
    images = calibration_images
    measured = _throughput(b1=1, b64=2)
    return [
        (lambda: quantize_onnx(exported["uint8"], images, "qint8"), "quant_format"),
        (lambda: quantize_onnx(exported["uint8"], images, activation_type="int4"), "activation_type"),
        (lambda: quantize_onnx(exported["uint8"], images, calibration_method="mse"), "calibration_method"),
        (lambda: quantize_onnx(exported["uint8"], images, op_types="Conv"), "op_types"),
        (lambda: quantize_onnx(exported["uint8"], images, batch_size=0), "batch_size"),
        (lambda: quantize_onnx(exported["uint8"], images[:0]), "calibration_images"),
        (lambda: quantize_onnx(exported["uint8"], images[:, :8]), "calibration_images"),
        (lambda: quantize_onnx(exported["uint8"], images.tolist()), "calibration_images"),
        (lambda: quantize_onnx(b"not an onnx model", images), "fp32_model"),
        (lambda: quantize_onnx(12, images), "model"),
        (lambda: measure_throughput(exported["uint8"], images, batch_sizes=()), "batch_sizes"),
        (lambda: measure_throughput(exported["uint8"], images, batch_sizes=(1, 0)), "batch_sizes"),
        (lambda: measure_throughput(exported["uint8"], images, threads=0), "threads"),
        (lambda: measure_throughput(exported["uint8"], images, seconds=0), "seconds"),
        (lambda: measure_throughput(exported["uint8"], images, max_runs=1), "max_runs"),
        (lambda: agreement(exported["uint8"], exported["uint8"], images, labels=[0, 1]), "labels"),
        (lambda: agreement(exported["uint8"], exported["uint8"], images, np.full(len(images), 9)), "labels"),
        (lambda: decide_int8(measured, measured, 87.1, 0.87), "fp32_accuracy"),
        (lambda: decide_int8(measured, measured, 0.87, 0.87, max_accuracy_drop=-1), "max_accuracy_drop"),
        (lambda: decide_int8({}, measured, 0.87, 0.87), "fp32"),
        (lambda: decide_int8(measured, {1: Throughput(1, 0.0, 1.0, 1.0, 5)}, 0.87, 0.87), "int8"),
        (lambda: decide_int8(measured, {32: measured[1]}, 0.87, 0.87), "common batch size"),
        (lambda: with_metadata(exported["uint8"], {"": 1}), "entries"),
    ]


def test_bad_arguments_fail_in_one_line(exported, calibration_images):
    for call, name in _bad_calls(exported, calibration_images):
        with pytest.raises(ValueError) as raised:
            call()
        message = str(raised.value)
        assert "\n" not in message and "Received: " in message and name in message, message
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        quantize_onnx(Path("missing.onnx"), calibration_images)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tutorial run on the quadrant images: best.pt, its data (train with a validation share)."""
    root = tmp_path_factory.mktemp("int8-run")
    data = write_image_folder(root / "data", *make_quadrant_images(240, SIZE, seed=3))
    flags = ["--model", "tutorial", "--epochs", "3", "--precision", "fp32"]
    assert main(["train", "--data", str(data), "--out", str(root / "runs"), "--name", "run", *flags]) == 0
    return root, data, root / "runs" / "run" / "best.pt"


def _int8_operators(path: Path) -> bool:
    return any(node.op_type in ("QuantizeLinear", "QLinearConv") for node in onnx.load(path).graph.node)


def test_export_int8_calibrates_on_the_run_and_records_what_it_measured(trained_run, capsys):
    root, _data, best = trained_run
    output = root / "model.onnx"
    assert main(["export", str(best), "--int8", "--output", str(output), *QUICK]) == 0
    printed = capsys.readouterr().out
    model = OnnxClassifier(output)
    record = model.metadata["int8"]
    assert record["reason"] in printed and f"{record['kept']} written to {output}" in printed
    assert record["calibration_images"].endswith("of the run's training split")
    assert record["accuracy_images"].endswith("of the run's validation split")
    assert set(record["throughput"]["fp32"]) == set(record["throughput"]["int8"]) == {"1", "64"}
    assert set(record["formats_tried"]) == {QDQ, QOPERATOR} and record["quant_format"] in (QDQ, QOPERATOR)
    assert record["cpu"] == cpu_info()
    assert _int8_operators(output) == (record["kept"] == "int8")
    images = make_quadrant_images(60, SIZE, seed=11)[0]
    reference = Classifier.load(best, precision="fp32").predict(images)
    assert (model.predict(images).argmax(1) == reference.argmax(1)).mean() >= MIN_AGREEMENT
    # Prediction uses the file like any .onnx.
    folder = write_image_folder(root / "to-predict", images[:4], np.zeros(4, dtype=np.int64))
    assert main(["predict", str(output), str(folder), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4


def test_export_int8_refuses_an_accuracy_drop_and_writes_nothing(trained_run, monkeypatch, capsys):
    root, _data, best = trained_run
    output = root / "refused.onnx"
    measured = int8_module.agreement

    def lossy(*arguments, **options):  # int8 as a CPU without good int8 kernels might score it
        scores = measured(*arguments, **options)
        return dataclasses.replace(scores, int8_accuracy=scores.fp32_accuracy - 0.02)

    monkeypatch.setattr(int8_module, "agreement", lossy)
    assert main(["export", str(best), "--int8", "--output", str(output), *QUICK]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the decoding's progress
    assert "int8 refused, nothing written: it loses 2.00 points" in error
    assert "fp32 ->" in error and "0.5 allowed" in error and "--allow-accuracy-drop" in error
    assert not output.exists()
    allowed = ["export", str(best), "--int8", "--output", str(output), "--allow-accuracy-drop"]
    assert main([*allowed, *QUICK]) == 0
    accuracy = OnnxClassifier(output).metadata["int8"]["accuracy"]
    assert accuracy["fp32"] - accuracy["int8"] == pytest.approx(0.02)


def test_export_int8_keeps_fp32_where_int8_is_not_faster(trained_run, monkeypatch, capsys):
    root, _data, best = trained_run
    measured = int8_module.measure_throughput

    def slow_int8(model, *arguments, **options):  # int8 on a CPU where it does not pay
        figures = measured(model, *arguments, **options)
        if b"QuantizeLinear" in model or b"QLinearConv" in model:
            figures = {
                size: dataclasses.replace(item, images_per_second=1.0) for size, item in figures.items()
            }
        return figures

    monkeypatch.setattr(int8_module, "measure_throughput", slow_int8)
    output = root / "kept-fp32.onnx"
    assert main(["export", str(best), "--int8", "--output", str(output), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "fp32 kept: int8 is not faster at batch 64 or batch 1" in printed and "images/s fp32" in printed
    assert not _int8_operators(output) and OnnxClassifier(output).metadata["int8"]["kept"] == "fp32"
    forced = root / "forced.onnx"
    assert main(["export", str(best), "--int8", "--keep-int8", "--output", str(forced), *QUICK]) == 0
    assert "int8 kept (--keep-int8)" in capsys.readouterr().out and _int8_operators(forced)


def test_export_int8_without_the_runs_data_names_what_to_give(trained_run, tmp_path, capsys):
    _root, _data, best = trained_run
    checkpoint = load_checkpoint(best)
    checkpoint.config["data"] = str(tmp_path / "moved-away")
    save_checkpoint(tmp_path / "moved.pt", checkpoint)
    assert main(["export", str(tmp_path / "moved.pt"), "--int8", *QUICK]) == 1
    error = capsys.readouterr().err
    assert "the run's data is not on this machine; give --calibration and --data" in error
    assert not (tmp_path / "moved.onnx").exists()
    assert main(["export", str(best), "--int8", "--seconds", "0", "--output", str(tmp_path / "x.onnx")]) == 1
    assert "seconds must be a positive number. Received: seconds=0.0" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    assert main(["export", str(best), "--keep-int8"]) == 1
    assert "--keep-int8 is an option of --int8 exports. Received: --keep-int8 without --int8" in (
        capsys.readouterr().err
    )
