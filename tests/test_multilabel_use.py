"""Using a trained multi-label model (issue 21): predict (table, JSON, CSV, --threshold), export to
ONNX (sigmoid outputs, thresholds in the metadata) and the service's JSON and web page."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.cli import main
from cnnkit.inference.batch_prediction import predict_paths
from cnnkit.inference.prediction_files import format_predictions

LABELS = ["a", "b", "c"]
# The classifier compared with runs in fp32 (auto is bf16 on a CPU with bf16 units).
FP32 = ["--device", "cpu", "--precision", "fp32"]
SIZE = 16
# Where each label's bright patch lies: (rows, columns, colour).
PATCHES = {
    "a": (slice(0, 8), slice(0, 8), (230, 40, 40)),
    "b": (slice(0, 8), slice(8, 16), (40, 220, 40)),
    "c": (slice(8, 16), slice(0, 16), (40, 40, 230)),
}


def make_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy uint8 images with a coloured patch for each label they have (multi-hot, maybe none)."""
    generator = np.random.default_rng(seed)
    targets = (generator.random((count, len(LABELS))) < 0.5).astype(np.int64)
    images = generator.integers(0, 90, size=(count, SIZE, SIZE, 3), dtype=np.uint8)
    for image, target in zip(images, targets, strict=True):
        for name, present in zip(LABELS, target, strict=True):
            if present:
                rows, columns, colour = PATCHES[name]
                image[rows, columns] = colour
    return images, targets


def mid_gap_thresholds(probabilities: np.ndarray) -> list[float]:
    """A threshold a label halfway across the widest gap between these images' probabilities, so
    that float noise (ONNX Runtime, the traced graph) cannot move a label across it."""
    thresholds = []
    for column in probabilities.T:
        points = np.sort(np.concatenate([[0.02], np.clip(column, 0.02, 0.98), [0.98]]))
        widest = int(np.argmax(np.diff(points)))
        thresholds.append(float((points[widest] + points[widest + 1]) / 2))
    return thresholds


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(checkpoint path, the classifier, the test images, their PNG folder)."""
    folder = tmp_path_factory.mktemp("multilabel")
    images, targets = make_images(192, seed=1)
    classifier = Classifier(
        "tutorial", class_names=LABELS, image_size=SIZE, task="multi_label", device="cpu", precision="fp32"
    )
    classifier.fit(images, targets, batch_size=32, epochs=2, verbose=False)
    test_images, _ = make_images(8, seed=2)
    classifier.thresholds = mid_gap_thresholds(classifier.predict(test_images))
    path = folder / "multi.pt"
    classifier.save(path)
    photos = folder / "photos"
    photos.mkdir()
    for index, image in enumerate(test_images):
        Image.fromarray(image).save(photos / f"{index}.png")
    return path, Classifier.load(path, device="cpu", precision="fp32"), test_images, photos


@pytest.fixture(scope="module")
def exported(model):
    from cnnkit.export.onnx import export_onnx

    return export_onnx(model[0]).path


def _paths(photos: Path) -> list[str]:
    return [str(photos / f"{index}.png") for index in range(len(list(photos.glob("*.png"))))]


def _predict_json(capsys, *arguments: str) -> list[dict]:
    assert main(["predict", *arguments, "--format", "json", *FP32]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_checkpoint_keeps_the_task_and_thresholds(model):
    _, classifier, images, _ = model
    assert classifier.task.multi_label and len(classifier.thresholds) == len(LABELS)
    probabilities = classifier.predict(images)
    assert not np.allclose(probabilities.sum(1), 1)  # a sigmoid a label, not a softmax
    sets = classifier.predict_classes(images)
    assert any(sets) and any(len(chosen) < len(LABELS) for chosen in sets)  # the decision matters


def test_predict_formats_agree_with_predict_classes(model, capsys):
    path, classifier, images, photos = model
    expected, probabilities = classifier.predict_classes(images), classifier.predict(images)
    broken = photos.parent / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    command = ["predict", str(path), str(photos), str(broken), *FP32]
    paths = [*_paths(photos), str(broken)]

    assert main([*command, "--format", "json"]) == 1  # the broken file: every result out, exit 1
    parsed = json.loads(capsys.readouterr().out)
    assert [entry["path"] for entry in parsed] == paths and "error" in parsed[-1]
    for entry, names, row in zip(parsed, expected, probabilities, strict=False):
        assert [label["label"] for label in entry["labels"]] == names
        assert list(entry["probabilities"]) == LABELS
        assert list(entry["probabilities"].values()) == pytest.approx(row.tolist(), abs=1e-5)
        values = [label["probability"] for label in entry["labels"]]
        assert values == sorted(values, reverse=True)
        assert values == [entry["probabilities"][name] for name in names]

    assert main([*command, "--format", "csv"]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["path", "labels", "error", *LABELS]
    assert [row["path"] for row in rows] == paths
    for row, entry in zip(rows, parsed, strict=True):
        if "error" in entry:
            assert row["error"] == entry["error"] and row["labels"] == row["a"] == ""
            continue
        assert row["labels"] == ";".join(label["label"] for label in entry["labels"])
        assert [float(row[name]) for name in LABELS] == list(entry["probabilities"].values())

    assert main(command) == 1  # table
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(paths) and lines[-1].startswith(f"{broken}: error: ")
    for line, entry in zip(lines, parsed[:-1], strict=False):
        shown = ", ".join(f"{label['label']} ({label['probability']:.3f})" for label in entry["labels"])
        assert line == f"{entry['path']}: {shown or '(no labels)'}"


def test_threshold_overrides_every_label_and_is_checked(model, capsys, tmp_path):
    path, classifier, images, photos = model
    # Between the images' highest probabilities: some get no label at all, others one or more.
    highest = np.sort(classifier.predict(images).max(1))
    threshold = float((highest[len(highest) // 2 - 1] + highest[len(highest) // 2]) / 2)
    expected = classifier.predict_classes(images, threshold=threshold)
    assert [] in expected and any(expected) and expected != classifier.predict_classes(images)
    parsed = _predict_json(capsys, str(path), str(photos), "--threshold", repr(threshold))
    assert [[label["label"] for label in entry["labels"]] for entry in parsed] == expected
    results = list(predict_paths(classifier, _paths(photos), threshold=threshold))
    table = format_predictions(results).splitlines()
    assert [line.endswith(": (no labels)") for line in table] == [not names for names in expected]
    csv_rows = list(csv.DictReader(io.StringIO(format_predictions(results, "csv"))))
    assert [row["labels"] for row in csv_rows] == [";".join(names) for names in expected]

    for bad in ("0", "1", "1.5", "-0.2", "nan"):
        assert main(["predict", str(path), str(photos), "--threshold", bad]) == 1
        error = capsys.readouterr().err.strip()
        assert error.startswith("cnnkit: error: --threshold must be") and "\n" not in error
        assert f"Received: threshold={float(bad)!r}" in error
    with pytest.raises(ValueError, match=re.escape("Received: threshold=2")):
        list(predict_paths(classifier, _paths(photos), threshold=2))
    assert main(["predict", str(path), str(photos), "--top-k", "2"]) == 1
    assert "--top-k is for single-label models" in capsys.readouterr().err

    single = tmp_path / "single.pt"
    Classifier("tutorial", class_names=LABELS, image_size=SIZE, device="cpu").save(single)
    assert main(["predict", str(single), str(photos), "--threshold", "0.3", *FP32]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("cnnkit: error: --threshold is for multi-label models") and "\n" not in error
    assert "Received: threshold=0.3" in error
    single_json = _predict_json(capsys, str(single), str(photos), "--top-k", "2")  # unchanged
    assert all(len(entry["predictions"]) == 2 and "labels" not in entry for entry in single_json)


def test_onnx_export_carries_the_thresholds_and_gives_the_same_label_sets(model, exported, capsys):
    from cnnkit.inference.onnx_runtime import OnnxClassifier

    path, classifier, images, photos = model
    onnx_model = OnnxClassifier(exported)
    assert onnx_model.task.multi_label and onnx_model.metadata["task"] == "multi_label"
    assert onnx_model.thresholds == classifier.thresholds
    probabilities = onnx_model.predict(images)
    np.testing.assert_allclose(probabilities, classifier.predict(images), atol=1e-4)  # sigmoid
    assert onnx_model.predict_classes(images) == classifier.predict_classes(images)
    from_onnx = _predict_json(capsys, str(exported), str(photos))
    from_checkpoint = _predict_json(capsys, str(path), str(photos))
    for onnx_entry, checkpoint_entry in zip(from_onnx, from_checkpoint, strict=True):
        assert [label["label"] for label in onnx_entry["labels"]] == [
            label["label"] for label in checkpoint_entry["labels"]
        ]
        assert list(onnx_entry["probabilities"].values()) == pytest.approx(
            list(checkpoint_entry["probabilities"].values()), abs=1e-4
        )
    for probability in (0.3, 0.7):
        assert onnx_model.predict_classes(images, threshold=probability) == classifier.predict_classes(
            images, threshold=probability
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[0.5, 0.5]", "'thresholds' needs one a label (3). Received: thresholds=[0.5, 0.5]"),
        ("[0.5, 1.0, 0.5]", "'thresholds' must be a list of probabilities in (0, 1), one a label"),
        ("[0.5, 0, 0.5]", "Received: thresholds=[0.5, 0, 0.5]"),
        ('"0.5"', "'thresholds' must be a list of probabilities"),
        ("[0.5,", "'thresholds' is not valid JSON"),
    ],
)
def test_malformed_onnx_thresholds_are_one_line_naming_the_file(exported, tmp_path, capsys, value, message):
    import onnx

    from cnnkit.inference.onnx_runtime import OnnxClassifier

    damaged = onnx.load(exported)
    for entry in damaged.metadata_props:
        if entry.key == "thresholds":
            entry.value = value
    path = tmp_path / "damaged.onnx"
    onnx.save(damaged, path)
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        OnnxClassifier(path)
    assert str(raised.value).startswith(str(path))
    image = tmp_path / "image.png"
    Image.fromarray(make_images(1, seed=5)[0][0]).save(image)
    assert main(["predict", str(path), str(image)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"cnnkit: error: {path}") and message in error and "\n" not in error


def _encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_the_service_answers_label_sets(model, exported, kind):
    import torch

    from cnnkit.serving import create_app, load_service_predictor, start_server_thread
    from cnnkit.serving.schemas import ModelInfo, PredictResponse

    path, classifier, images, _ = model
    threads = torch.get_num_threads()
    predictor = load_service_predictor(path if kind == "checkpoint" else exported, precision="fp32")
    files = [("files", (f"{index}.png", _encode(image), "image/png")) for index, image in enumerate(images)]
    files.append(("files", ("notes.txt", b"not an image", "text/plain")))
    try:
        with start_server_thread(create_app(predictor)) as server:
            info = httpx.get(f"{server.url}/v1/model", timeout=30).json()
            response = httpx.post(f"{server.url}/v1/predict", files=files, timeout=30)
    finally:
        torch.set_num_threads(threads)
    assert ModelInfo.model_validate(info).task == "multi_label"
    assert info["thresholds"] == dict(zip(LABELS, classifier.thresholds, strict=True))
    assert response.status_code == 200
    body = response.json()
    PredictResponse.model_validate(body)
    assert body["task"] == "multi_label"
    *answered, broken = body["results"]
    assert "Cannot decode notes.txt" in broken["error"] and "labels" not in broken
    expected = classifier.predict_classes(images)
    assert [[label["label"] for label in result["labels"]] for result in answered] == expected
    for result, row in zip(answered, classifier.predict(images), strict=True):
        assert "predictions" not in result and list(result["probabilities"]) == LABELS
        assert list(result["probabilities"].values()) == pytest.approx(row.tolist(), abs=1e-4)


def test_the_web_page_shows_a_label_set(model):
    from tests.test_serve_browser import CHROMIUM, CHROMIUM_ARGUMENTS, TIMEOUT_MS

    if CHROMIUM is None or shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: `make browser` installs Debian's package (as root)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    import torch

    from cnnkit.serving import create_app, load_service_predictor, start_server_thread

    path, classifier, images, _ = model
    sets = classifier.predict_classes(images)
    chosen = next(index for index, names in enumerate(sets) if names)
    empty = next((index for index, names in enumerate(sets) if not names), None)
    shown = [chosen] + ([empty] if empty is not None else [])
    threads = torch.get_num_threads()
    with (
        start_server_thread(create_app(load_service_predictor(path, precision="fp32"))) as server,
        playwright_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGUMENTS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(server.url + "/")
        expect = playwright_api.expect
        expect(page.locator("#model-info")).to_contain_text("3 labels (multi-label)")
        expect(page.locator("#top-k")).to_be_hidden()
        page.set_input_files(
            "#file-input",
            files=[
                {"name": f"{index}.png", "mimeType": "image/png", "buffer": _encode(images[index])}
                for index in shown
            ],
        )
        expect(page.locator(".result[data-state=done]")).to_have_count(len(shown))
        first = page.locator(".result").nth(0)
        expect(first.locator(".chips .chip .label")).to_have_text(sets[chosen])
        expect(first.locator(".bars")).to_be_hidden()  # every label's bars are folded away
        expect(first.locator(".all-labels .bars li")).to_have_count(len(LABELS))
        if empty is not None:
            second = page.locator(".result").nth(1)
            expect(second.locator(".no-labels")).to_have_text("No label reaches its threshold.")
            expect(second.locator(".chip")).to_have_count(0)
        browser.close()
    torch.set_num_threads(threads)
    assert problems == []
