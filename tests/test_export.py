"""ONNX export: the graph matches PyTorch, describes itself, and predicts without torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from cnnkit.export.onnx import ExportVerificationError, export_onnx
from cnnkit.export.verification_images import synthetic_images, verification_images
from cnnkit.inference.batch_prediction import predict_files
from cnnkit.inference.onnx_runtime import OnnxClassifier
from cnnkit.inference.predictor import CheckpointPredictor, load_predictor
from tests.conftest import CLASS_NAMES, make_quadrant_images, write_image_folder

SIZE = 16
REPOSITORY = Path(__file__).resolve().parents[1]


def _train(folder: Path, model: str, recipe: str, **arguments) -> Path:
    images, labels = make_quadrant_images(64, SIZE, seed=3)
    classifier = Classifier(
        model, class_names=CLASS_NAMES, image_size=SIZE, device="cpu", precision="fp32", **arguments
    )
    classifier.fit(images, labels, batch_size=32, epochs=1, recipe=recipe, verbose=False)
    path = folder / f"{model}.pt"
    classifier.save(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "tutorial": _train(folder, "tutorial", "tutorial"),
        # The fast recipe: standardised inputs, a whitening first layer and TTA level 2.
        "fast": _train(folder, "fast", "fast", widths=(8, 16, 16)),
    }


@pytest.fixture(scope="module")
def exported(checkpoints) -> dict[str, tuple[Path, object]]:
    # The fast one with its recipe's test-time augmentation in the graph; the tutorial's has none.
    return {name: (path, export_onnx(path, tta=name == "fast")) for name, path in checkpoints.items()}


def _torch_probabilities(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    return Classifier.load(checkpoint, device="cpu", precision="fp32").predict(images)


@pytest.mark.parametrize("name", ["tutorial", "fast"])
def test_onnx_matches_pytorch_for_any_batch_size(exported, name):
    checkpoint, result = exported[name]
    assert result.path == checkpoint.with_suffix(".onnx") and result.path.is_file()
    assert result.tta == (2 if name == "fast" else 0)
    assert result.max_difference <= 1e-4 and result.verified_images > 0
    model = OnnxClassifier(result.path)
    images, _ = make_quadrant_images(7, SIZE, seed=9)
    for batch in (images[:1], images):
        probabilities = model.predict(batch)
        assert probabilities.shape == (len(batch), len(CLASS_NAMES)) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities, _torch_probabilities(checkpoint, batch), atol=1e-4)
    np.testing.assert_allclose(model.predict(images, batch_size=3), model.predict(images), atol=1e-6)
    assert model.predict(images[:0]).shape == (0, len(CLASS_NAMES))


def test_metadata_round_trips_and_the_graph_takes_uint8_with_a_dynamic_batch(exported):
    checkpoint_path, result = exported["fast"]
    checkpoint = load_checkpoint(checkpoint_path)
    metadata = OnnxClassifier(result.path).metadata
    assert metadata["class_names"] == CLASS_NAMES and metadata["image_size"] == SIZE
    assert metadata["model_name"] == "fast" and metadata["model_arguments"]["widths"] == [8, 16, 16]
    assert metadata["normalization"] == checkpoint.normalization.to_dict()
    assert metadata["metrics"]["train"] == pytest.approx(checkpoint.metrics["train"])
    assert metadata["input_format"] == "uint8-nhwc-rgb" and metadata["tta"] == 2
    assert metadata["recipe"] == "fast" and metadata["cnnkit_version"] and metadata["opset"] == "20"
    model = onnx.load(result.path)
    properties = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(properties["class_names"]) == CLASS_NAMES
    (graph_input,) = model.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dimensions = [dim.dim_param or dim.dim_value for dim in graph_input.type.tensor_type.shape.dim]
    assert dimensions[1:] == [SIZE, SIZE, 3] and isinstance(dimensions[0], str)
    assert [output.name for output in model.graph.output] == ["probabilities", "logits"]


def test_load_predictor_gives_one_interface_for_onnx_and_checkpoints(exported):
    checkpoint_path, result = exported["tutorial"]
    from_onnx = load_predictor(result.path)
    from_checkpoint = load_predictor(checkpoint_path, device="cpu", precision="fp32")
    assert isinstance(from_onnx, OnnxClassifier) and isinstance(from_checkpoint, CheckpointPredictor)
    for predictor in (from_onnx, from_checkpoint):
        assert predictor.class_names == CLASS_NAMES and predictor.image_size == SIZE
        assert predictor.metadata["model_name"] == "tutorial" and predictor.metadata["tta"] == 0
    images, _ = make_quadrant_images(5, SIZE, seed=4)
    np.testing.assert_allclose(from_onnx.predict(images), from_checkpoint.predict(images), atol=1e-4)
    with pytest.raises(ValueError, match="Received: device='cuda'"):
        load_predictor(result.path, device="cuda")


def test_float_input_without_tta_through_the_torchscript_exporter(checkpoints, tmp_path):
    output = tmp_path / "fast-float.onnx"
    result = export_onnx(checkpoints["fast"], output, input_format="float", exporter="torchscript")
    assert result.tta == 0 and result.input_format == "float-nchw-rgb"
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    images, _ = make_quadrant_images(3, SIZE, seed=5)
    floats = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    (probabilities,) = session.run(["probabilities"], {"images": floats})
    reference = Classifier.load(checkpoints["fast"], device="cpu", precision="fp32")
    reference.tta = 0
    np.testing.assert_allclose(probabilities, reference.predict(images), atol=1e-4)
    np.testing.assert_allclose(OnnxClassifier(output).predict(images), probabilities, atol=1e-6)


def test_a_failed_verification_writes_nothing_and_says_by_how_much(checkpoints, tmp_path, monkeypatch):
    run = onnxruntime.InferenceSession.run

    def skewed(session, names, feeds, *rest):
        return [outputs + 0.01 for outputs in run(session, names, feeds, *rest)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", skewed)
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the user's previous file")
    with pytest.raises(ExportVerificationError, match=r"differ by up to 0\.01.*nothing was written"):
        export_onnx(checkpoints["tutorial"], output, exporter="torchscript", force=True)
    assert output.read_bytes() == b"the user's previous file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left
    code = main(["export", str(checkpoints["tutorial"]), "--output", str(tmp_path / "new.onnx")])
    assert code == 1 and not (tmp_path / "new.onnx").exists()


def test_cli_export_writes_beside_the_checkpoint_and_prints_where(checkpoints, tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(checkpoints["tutorial"].read_bytes())
    assert main(["export", str(checkpoint), "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    assert f"to {tmp_path / 'best.onnx'}" in printed and "Verified on 64 images (synthetic images)" in printed
    assert OnnxClassifier(tmp_path / "best.onnx").class_names == CLASS_NAMES
    assert main(["export", str(checkpoint), "--output", str(tmp_path / "best.pt")]) == 1
    assert "must end in .onnx" in capsys.readouterr().err  # and so never over the checkpoint


def test_export_replaces_another_onnx_only_when_forced_and_its_own_always(checkpoints, tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(checkpoints["tutorial"].read_bytes())
    other = tmp_path / "other.onnx"
    other.write_bytes(b"another model")
    export = ["export", str(checkpoint), "--exporter", "torchscript"]
    assert main([*export, "--output", str(other)]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (
        f"cnnkit: error: {other} is an existing ONNX model: cnnkit will not replace it. "
        "Choose another output, or pass --force (force=True) to replace it."
    )
    assert other.read_bytes() == b"another model"
    for _ in range(2):  # the checkpoint's own best.onnx: exporting again refreshes it
        assert main(export) == 0
    assert main([*export, "--output", str(tmp_path / "best.onnx")]) == 0  # named, it is the same file
    assert main([*export, "--output", str(other), "--force"]) == 0
    assert OnnxClassifier(other).class_names == CLASS_NAMES


def _with_metadata(source: Path, folder: Path, key: str, value: str | None) -> Path:
    """A copy of the exported model ``source`` with metadata ``key`` set to ``value`` (None: removed)."""
    model = onnx.load(source)
    kept = [(entry.key, entry.value) for entry in model.metadata_props if entry.key != key]
    del model.metadata_props[:]
    for name, text in [*kept, *([(key, value)] if value is not None else [])]:
        entry = model.metadata_props.add()
        entry.key, entry.value = name, text
    path = folder / "damaged.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "class_names",
            '"notalist"',
            "'class_names' must be a list of two or more distinct strings. Received: class_names='notalist'",
        ),
        ("class_names", '["a", 1]', "'class_names' must be a list"),
        ("class_names", '["a", "b", "c"]', "'class_names' (3 names) does not match the graph"),
        ("class_names", "[" * 100_000, "'class_names' is not valid JSON. Received: class_names='[[[["),
        ("class_names", None, "cnnkit metadata lacks 'class_names'"),
        ("image_size", '"16"', "'image_size' must be an integer >= 1. Received: image_size='16'"),
        ("image_size", "12", "'image_size' (12) does not match the graph"),
        ("resize_size", "8", "'resize_size' must be >= image_size (16). Received: resize_size=8"),
        ("input_format", "float-nchw-rgb", "'image_size' (16) does not match the graph"),
        ("input_format", "bgr", "'input_format' must be 'uint8-nhwc-rgb' or 'float-nchw-rgb'"),
        ("tta", "true", "'tta' must be 0, 1 or 2. Received: tta=True"),
        ("metrics", "[1, 2]", "'metrics' must be a mapping of metrics"),
        ("normalization", "null", "'normalization' must be a mapping. Received: normalization=None"),
        ("format_version", "one", "'format_version' is not valid JSON"),
        ("format_version", "0", "'format_version' must be an integer >= 1"),
        ("format_version", "2", "was exported by a newer cnnkit"),
    ],
)
def test_onnx_metadata_of_the_wrong_shape_is_one_line_naming_file_and_field(
    exported, tmp_path, capsys, key, value, message
):
    path = _with_metadata(exported["tutorial"][1].path, tmp_path, key, value)
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        OnnxClassifier(path)
    assert str(raised.value).startswith(str(path)) and len(str(raised.value)) < 400
    image = tmp_path / "image.png"
    Image.fromarray(make_quadrant_images(1, SIZE)[0][0]).save(image)
    assert main(["predict", str(path), str(image)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"cnnkit: error: {path}") and message in error and "\n" not in error


def test_verification_uses_the_given_images_else_the_run_data_else_synthetic(checkpoints, tmp_path):
    checkpoint = load_checkpoint(checkpoints["tutorial"])
    images, labels = make_quadrant_images(12, 24, seed=6)  # another size: decoded to the model's
    folder = write_image_folder(tmp_path / "photos", images, labels)
    chosen, source = verification_images(checkpoint, folder, count=5)
    assert chosen.shape == (5, SIZE, SIZE, 3) and chosen.dtype == np.uint8 and str(folder) in source
    with_run = replace(checkpoint, config={"data": str(folder)})
    assert "run's data" in verification_images(with_run, None, count=64)[1]
    assert len(verification_images(with_run, None, count=64)[0]) == 12
    moved = replace(checkpoint, config={"data": str(tmp_path / "gone")})
    chosen, source = verification_images(moved, None, count=8)
    assert source == "synthetic images"
    np.testing.assert_array_equal(chosen, synthetic_images(8, SIZE))
    with pytest.raises(ValueError, match="No images to verify"):
        verification_images(checkpoint, tmp_path / "gone", count=8)


def test_onnx_classifier_refuses_bad_inputs_and_foreign_files(exported, checkpoints, tmp_path):
    model = OnnxClassifier(exported["tutorial"][1].path)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((1, SIZE, SIZE, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Received: shape=\(1, 8, 8, 3\)"):
        model.predict(np.zeros((1, 8, 8, 3), dtype=np.uint8))
    (tmp_path / "other.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="Cannot read"):
        OnnxClassifier(tmp_path / "other.onnx")
    foreign = onnx.load(exported["tutorial"][1].path)
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="not an ONNX model exported by cnnkit"):
        OnnxClassifier(tmp_path / "foreign.onnx")


# Any import of torch, even one caught, is recorded; then cnnkit predict runs on the ONNX model.
_WITHOUT_TORCH = """
import json, sys
attempts = []
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            attempts.append(name)
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, BlockTorch())
from cnnkit.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "attempts": attempts, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def test_predict_with_an_onnx_model_never_imports_torch(exported, tmp_path):
    checkpoint, result = exported["fast"]
    images, labels = make_quadrant_images(6, 20, seed=7)
    folder = write_image_folder(tmp_path / "photos", images, labels)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.write(next(folder.rglob("*.png")), "inside/one.png")
    arguments = ["predict", str(result.path), str(folder), str(archive), "--format", "json", "--top-k", "4"]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY / "src")}
    completed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    status = json.loads(completed.stderr.strip().splitlines()[-1])
    assert status == {"code": 0, "attempts": [], "torch": False}, completed.stderr
    from_onnx = json.loads(completed.stdout)
    from_torch = predict_files(checkpoint, [folder, archive], top_k=4, device="cpu", precision="fp32")
    assert [entry["path"] for entry in from_onnx] == [entry["path"] for entry in from_torch]
    assert len(from_onnx) == 7 and from_onnx[-1]["path"].endswith("photos.zip/inside/one.png")
    for onnx_entry, torch_entry in zip(from_onnx, from_torch, strict=True):
        onnx_probabilities = {item["class"]: item["probability"] for item in onnx_entry["predictions"]}
        torch_probabilities = {item["class"]: item["probability"] for item in torch_entry["predictions"]}
        assert onnx_probabilities == pytest.approx(torch_probabilities, abs=1e-4)
