"""Fast prediction over many files: ``predict --tta N`` and decoding ahead of the model in workers."""

from __future__ import annotations

import io
import json
import multiprocessing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.cli import main
from cnnkit.data.parallel_decode import PARALLEL_THRESHOLD
from cnnkit.inference.batch_prediction import predict_paths
from cnnkit.inference.decode_ahead import decode_workers
from cnnkit.inference.image_inputs import expand_inputs
from cnnkit.inference.tta_level import check_tta
from cnnkit.recipes import get_recipe
from tests.conftest import CLASS_NAMES, make_quadrant_images

SIZE = 16
IMAGES, LABELS = make_quadrant_images(14, SIZE, seed=5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tutorial model trained briefly, saved with test-time augmentation level 2 as its own."""
    images, labels = make_quadrant_images(96, SIZE, seed=1)
    classifier = Classifier("tutorial", class_names=CLASS_NAMES, image_size=SIZE, device="cpu")
    classifier.fit(images, labels, batch_size=32, epochs=2, verbose=False)
    classifier.recipe = (classifier.recipe or get_recipe("tutorial")).replace(tta=2)
    path = tmp_path_factory.mktemp("model") / "tta2.pt"
    classifier.save(path)
    return path


def _png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(IMAGES[index]).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The same 14 images and one corrupt JPEG as a folder and as a zip (with a damaged member too)."""
    root = tmp_path_factory.mktemp("inputs")
    folder = root / "folder"
    for index in range(len(IMAGES)):
        (folder / CLASS_NAMES[LABELS[index]]).mkdir(parents=True, exist_ok=True)
        (folder / CLASS_NAMES[LABELS[index]] / f"{index:02d}.png").write_bytes(_png(index))
    (folder / "top_left" / "05-corrupt.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    archive = root / "images.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as writer:
        for path in sorted(folder.rglob("*.*")):
            writer.write(path, path.relative_to(folder).as_posix())
        writer.writestr("zz/damaged.png", _png(0))
    content = bytearray(archive.read_bytes())
    position = content.rindex(_png(0)) + 40
    content[position] ^= 0xFF  # the last member's stored CRC no longer matches
    archive.write_bytes(bytes(content))
    return {"folder": folder, "zip": archive}


def _expected(checkpoint: Path, paths: list[Path], tta: int) -> list[list[tuple[str, float]]]:
    """Top-4 (class, probability) of each image from the library's own logits at ``tta``."""
    classifier = Classifier.load(checkpoint, device="cpu")
    classifier.tta = tta
    images = torch.from_numpy(np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths]))
    probabilities = classifier.task.probabilities(classifier.logits(images)).numpy()
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :4]
    return [
        [(CLASS_NAMES[index], round(float(row[index]), 6)) for index in ranking]
        for row, ranking in zip(probabilities, order, strict=True)
    ]


def _ranked(results) -> list[list[tuple[str, float]]]:
    return [[(name, value) for name, value in result.predictions] for result in results]


def _good_paths(folder: Path) -> list[Path]:
    return [Path(item.path) for item in expand_inputs(folder) if "corrupt" not in item.path]


def test_tta_0_gives_the_plain_networks_predictions(checkpoint, inputs):
    paths = _good_paths(inputs["folder"])
    plain = list(predict_paths(checkpoint, paths, top_k=4, device="cpu", tta=0))
    expected = _expected(checkpoint, paths, tta=0)
    assert [result.path for result in plain] == [str(path) for path in paths]
    assert [[name for name, _ in row] for row in _ranked(plain)] == [
        [name for name, _ in row] for row in expected
    ]
    assert np.allclose(
        [[v for _, v in row] for row in _ranked(plain)], [[v for _, v in row] for row in expected]
    )
    # The checkpoint's own level (mirrors and shifts) answers otherwise: the level was applied.
    assert _ranked(plain) != _ranked(predict_paths(checkpoint, paths, top_k=4, device="cpu"))


def test_the_default_is_the_checkpoints_own_level_and_a_given_model_keeps_its_own(checkpoint, inputs):
    paths = _good_paths(inputs["folder"])
    default = _ranked(predict_paths(checkpoint, paths, top_k=4, device="cpu"))
    expected = _expected(checkpoint, paths, tta=2)
    assert [[name for name, _ in row] for row in default] == [[name for name, _ in row] for row in expected]
    assert np.allclose([[v for _, v in row] for row in default], [[v for _, v in row] for row in expected])
    assert _ranked(predict_paths(checkpoint, paths, top_k=4, device="cpu", tta=2)) == default
    classifier = Classifier.load(checkpoint, device="cpu")
    one_view = _ranked(predict_paths(classifier, paths, top_k=4, tta=0))
    assert one_view == _ranked(predict_paths(checkpoint, paths, top_k=4, device="cpu", tta=0))
    assert classifier.tta == 2  # set for each prediction only


def test_cli_tta_0_writes_the_plain_networks_results(checkpoint, inputs, capsys):
    assert main(["predict", str(checkpoint), str(inputs["folder"]), "--tta", "0", "--format", "json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    library = predict_paths(checkpoint, inputs["folder"], device="cpu", tta=0)
    assert printed == [result.to_dict() for result in library]
    assert sum("error" in entry for entry in printed) == 1  # the corrupt JPEG, in its place


@pytest.mark.parametrize("value", ["7", "-1"])
def test_a_bad_tta_level_is_one_line_naming_it_and_the_levels(checkpoint, inputs, capsys, value):
    assert main(["predict", str(checkpoint), str(inputs["folder"]), "--tta", value]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "--tta must be one of 0, 1, 2" in error and f"Received: tta={value}" in error
    for bad in (3, True, 1.0, "2"):
        with pytest.raises(ValueError, match=r"tta must be one of 0, 1, 2 \(0: the image alone"):
            check_tta(bad)


def test_an_onnx_model_takes_only_the_level_built_into_it(checkpoint, inputs, tmp_path, capsys):
    from cnnkit.export.onnx import export_onnx

    exported = export_onnx(checkpoint, tmp_path / "tta2.onnx", tta=True, exporter="torchscript").path
    paths = _good_paths(inputs["folder"])
    own = _ranked(predict_paths(exported, paths, top_k=4))
    assert _ranked(predict_paths(exported, paths, top_k=4, tta=2)) == own  # its own level: honoured
    torch_side = _ranked(predict_paths(checkpoint, paths, top_k=4, device="cpu", precision="fp32"))
    assert [row[0][0] for row in own] == [row[0][0] for row in torch_side]  # the same level's answers
    with pytest.raises(ValueError, match=r"level 2 built into its graph at export.*Received: tta=0"):
        predict_paths(exported, paths, tta=0)
    assert main(["predict", str(exported), str(inputs["folder"]), "--tta", "1"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "built into its graph" in error and "Received: tta=1" in error


@pytest.mark.parametrize("source", ["folder", "zip"])
def test_decoding_in_workers_gives_the_serial_results_in_order(checkpoint, inputs, source):
    model = Classifier.load(checkpoint, device="cpu")
    serial = list(predict_paths(model, inputs[source], top_k=3, batch_size=4, workers=0))
    parallel = list(predict_paths(model, inputs[source], top_k=3, batch_size=4, workers=2))
    assert parallel == serial
    assert [result.path for result in serial] == [item.path for item in expand_inputs(inputs[source])]
    errors = {Path(result.path).name: result.error for result in serial if result.failed}
    assert (
        errors["05-corrupt.jpg"].startswith("Cannot decode") and "05-corrupt.jpg" in errors["05-corrupt.jpg"]
    )
    if source == "zip":
        assert errors["damaged.png"].startswith("cannot read (BadZipFile: Bad CRC-32")
    assert len(errors) == (2 if source == "zip" else 1)
    assert sum(not result.failed for result in serial) == len(IMAGES)


def test_a_run_stopped_early_ends_its_decoding_workers(checkpoint, inputs):
    results = predict_paths(checkpoint, inputs["zip"], device="cpu", batch_size=2, workers=2)
    assert not next(results).failed
    assert multiprocessing.active_children()
    results.close()
    assert not multiprocessing.active_children()


def test_workers_decode_only_many_images_by_default():
    assert decode_workers(PARALLEL_THRESHOLD - 1) == 0
    assert 1 <= decode_workers(PARALLEL_THRESHOLD) <= 4
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        predict_paths("model.pt", [], workers=-1)


def test_the_shared_pool_still_decodes_data_sets_as_one_process_does(inputs, monkeypatch):
    from cnnkit.data import parallel_decode
    from cnnkit.data.readers import ZIP

    monkeypatch.setattr(parallel_decode, "PARALLEL_THRESHOLD", 1)
    monkeypatch.setattr(parallel_decode, "_CHUNK_RANGE", (2, 3))  # chunks of 2: several in flight
    job = parallel_decode.DecodeJob(ZIP, str(inputs["zip"]), SIZE)
    with zipfile.ZipFile(inputs["zip"]) as archive:
        names = sorted(archive.namelist())
    one = parallel_decode.decode_images(job, names, 1, False, "")
    pooled = parallel_decode.decode_images(job, names, 2, False, "")
    assert np.array_equal(pooled.images, one.images) and np.array_equal(pooled.kept, one.kept)
    assert pooled.failures == one.failures and len(one.failures) == 2 and len(one.images) == len(IMAGES)
