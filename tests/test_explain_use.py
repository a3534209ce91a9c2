"""Explanations where a trained model is used (issue 22): ``Classifier.explain`` and its overlays,
``cnnkit predict --explain``, ``evaluate``'s gallery of mistakes beside their Grad-CAM overlays,
the service's ``POST /v1/explain`` and the web page's Explain button."""

from __future__ import annotations

import base64
import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.cli import main
from cnnkit.data import load_dataset
from cnnkit.inference.batch_prediction import predict_paths
from cnnkit.inference.explanations import explanation_folder, overlay_name
from cnnkit.reports.classification import ClassificationReport
from cnnkit.reports.overlays import heatmap_overlay
from cnnkit.runs import evaluation
from cnnkit.runs.evaluation import evaluate_checkpoint
from cnnkit.serving import create_app, load_service_predictor, start_server_thread
from cnnkit.serving.schemas import ExplainResponse
from tests.conftest import CLASS_NAMES, make_quadrant_images, write_image_folder
from tests.test_serve import COLOURS, encode, train_colour_checkpoint
from tests.test_serve_browser import CHROMIUM, CHROMIUM_ARGUMENTS, TIMEOUT_MS

SIZE, RESIZE = 16, 20  # stored at 20 px, the network sees the centre 16: overlays are 16 px
CPU = ["--device", "cpu", "--precision", "fp32"]


def quadrant_classifier(task: str = "single_label") -> Classifier:
    """An untrained tutorial network (explanations need no skill) that crops 20-px images to 16."""
    classifier = Classifier(
        "tutorial", class_names=CLASS_NAMES, image_size=SIZE, device="cpu", precision="fp32", task=task
    )
    classifier.resize_size = RESIZE
    return classifier


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("explain") / "quadrants.pt"
    quadrant_classifier().save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four images of odd sizes and names, and one file that is no image."""
    root = tmp_path_factory.mktemp("photos")
    images, _ = make_quadrant_images(4, size=24, seed=5)
    for image, name in zip(images, ["cat 1.png", "dog.jpg", "ünïcode.png", "my.photo.png"], strict=True):
        Image.fromarray(image).resize((30, 26)).save(root / name)
    (root / "broken.png").write_bytes(b"not an image")
    return root


def pixels(count: int, size: int = RESIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


# --- the Python API -------------------------------------------------------------------------------


def test_explain_maps_the_crop_the_network_sees_for_the_decided_class():
    classifier = quadrant_classifier()
    images = pixels(5)
    maps = classifier.explain(images)
    assert maps.shape == (5, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    decided = classifier.predict(images).argmax(1)
    np.testing.assert_allclose(maps, classifier.explain(images, decided), atol=1e-6)
    # A class by name, for all or one an image, is its index.
    np.testing.assert_allclose(classifier.explain(images, CLASS_NAMES[2]), classifier.explain(images, 2))
    mixed = [CLASS_NAMES[0], 1, 2, np.int64(3), "top_left"]
    np.testing.assert_allclose(classifier.explain(images, mixed), classifier.explain(images, [0, 1, 2, 3, 2]))
    assert not np.allclose(classifier.explain(images, 0), classifier.explain(images, 3))
    # Images already at the network's size are explained as they are; a tensor works as an array.
    assert classifier.explain(torch.as_tensor(pixels(2, SIZE))).shape == (2, SIZE, SIZE)
    assert classifier.explain(images[:0]).shape == (0, SIZE, SIZE)


def test_multi_label_explains_the_most_probable_label():
    classifier = quadrant_classifier("multi_label")
    images = pixels(4, seed=1)
    most_probable = classifier.predict(images).argmax(1)
    np.testing.assert_allclose(
        classifier.explain(images), classifier.explain(images, most_probable), atol=1e-6
    )


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ("giraffe", "one of the class names"),
        (4, r"an index in \[0, 4\)"),
        (-1, r"an index in \[0, 4\)"),
        ([0, 1], r"one an image \(3\)"),
        (1.5, "one class index or name"),
        (True, "Received: classes=True"),
    ],
)
def test_bad_classes_are_refused_in_one_line(classes, message):
    with pytest.raises(ValueError, match=message) as raised:
        quadrant_classifier().explain(pixels(3), classes)
    assert "\n" not in str(raised.value) and "Received: classes=" in str(raised.value)


def test_overlays_draw_the_heatmaps_over_the_crop():
    classifier = quadrant_classifier()
    images = pixels(3, seed=2)
    overlays = classifier.explanation_overlays(images, alpha=0.5)
    assert overlays.shape == (3, SIZE, SIZE, 3) and overlays.dtype == np.uint8
    crop = images[:, 2:18, 2:18]
    maps = classifier.explain(images)
    for overlay, image, heatmap in zip(overlays, crop, maps, strict=True):
        np.testing.assert_array_equal(overlay, heatmap_overlay(image, heatmap, 0.5))


# --- cnnkit predict --explain ---------------------------------------------------------------------


def test_overlay_names_are_unique_safe_and_ordered():
    assert overlay_name(3, "photos/cat 1.png", 3) == "003-cat_1.png"
    assert overlay_name(12, "archive.zip/z/8.png", 2) == "12-8.png"
    assert overlay_name(1, "a/../..\\evil:name?.jpg") == "1-evil_name_.png"
    assert overlay_name(1, "photos/.hidden.png") == "1-hidden.png"
    assert overlay_name(7, "ünïcode.png") == "7-ünïcode.png"
    assert overlay_name(2, "x" * 300 + ".png") == "2-" + "x" * 60 + ".png"


def test_predict_explain_writes_crop_sized_overlays_and_their_paths(checkpoint, photos, tmp_path, capsys):
    output = tmp_path / "results" / "predictions.json"
    output.parent.mkdir()
    arguments = ["predict", str(checkpoint), str(photos), "--format", "json", "--output", str(output)]
    assert main([*arguments, "--explain", *CPU]) == 1  # the broken file fails; the others go on
    assert "overlays in" in capsys.readouterr().out
    results = json.loads(output.read_text())
    folder = output.parent / "explanations"  # beside --output by default
    assert sorted(path.name for path in folder.iterdir()) == [
        "2-cat_1.png",
        "3-dog.png",
        "4-my.photo.png",
        "5-ünïcode.png",
    ]
    assert "explanation" not in results[0] and "error" in results[0]  # broken.png sorts first
    decided = Classifier.load(checkpoint, device="cpu", precision="fp32")
    for result in results[1:]:
        path = Path(result["explanation"])
        assert path.parent == folder and list(result) == ["path", "predictions", "explanation"]
        with Image.open(path) as overlay:
            assert (overlay.format, overlay.size, overlay.mode) == ("PNG", (SIZE, SIZE), "RGB")
        assert decided.class_names.index(result["predictions"][0]["class"]) >= 0
    # A second run never replaces the first's overlays: a new numbered folder.
    output.unlink()
    assert main([*arguments, "--explain", *CPU]) == 1
    assert len(list((output.parent / "explanations2").iterdir())) == 4
    # Without --explain, no field.
    output.unlink()
    assert main([*arguments, *CPU]) == 1
    assert all("explanation" not in result for result in json.loads(output.read_text()))


def test_predict_explain_csv_table_and_a_chosen_folder(checkpoint, photos, tmp_path, capsys):
    chosen = tmp_path / "overlays"
    arguments = ["predict", str(checkpoint), str(photos / "dog.jpg"), str(photos / "cat 1.png")]
    assert main([*arguments, "--explain", str(chosen), "--format", "csv", "--top-k", "2", *CPU]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["path", "rank", "class", "probability", "error", "explanation"]
    assert [row["explanation"] for row in rows] == [str(chosen / "1-dog.png")] * 2 + [
        str(chosen / "2-cat_1.png")
    ] * 2
    # A folder holding files is refused without --force, before any image is predicted.
    assert main([*arguments, "--explain", str(chosen), *CPU]) == 1
    error = capsys.readouterr().err
    assert "already holds files" in error and "--force" in error and "Received: explain=" in error
    (chosen / "1-dog.png").write_bytes(b"old")
    (chosen / "notes.txt").write_text("mine")
    assert main([*arguments, "--explain", str(chosen), "--force", *CPU]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{photos / 'dog.jpg'}: ") and lines[0].endswith(
        f" | explanation: {chosen / '1-dog.png'}"
    )
    assert Image.open(chosen / "1-dog.png").size == (SIZE, SIZE)  # replaced
    assert (chosen / "notes.txt").read_text() == "mine"  # nothing else touched
    with pytest.raises(ValueError, match="give a folder"):
        explanation_folder(chosen / "notes.txt")


def test_multi_label_csv_gains_the_explanation_column_after_error(tmp_path, photos):
    path = tmp_path / "labels.pt"
    classifier = quadrant_classifier("multi_label")
    classifier.save(path)
    results = list(predict_paths(path, [photos / "dog.jpg"], device="cpu", explain=tmp_path / "out"))
    (result,) = results
    probabilities = dict(result.probabilities)
    assert Path(result.explanation).name == "1-dog.png"
    from cnnkit.inference.prediction_files import format_predictions

    rows = list(csv.reader(io.StringIO(format_predictions(results, "csv"))))
    assert rows[0] == ["path", "labels", "error", "explanation", *CLASS_NAMES]
    assert rows[1][3] == result.explanation and len(probabilities) == 4
    assert json.loads(format_predictions(results, "json"))[0]["explanation"] == result.explanation


def test_an_onnx_model_cannot_explain(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model.onnx"  # refused by its name, before it is read
    assert main(["predict", str(model), str(photos), "--explain"]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("cnnkit: error: explanations need the checkpoint")
    assert message.endswith(f"Received: {str(model)!r}") and "\n" not in message
    assert not (tmp_path / "explanations").exists()
    with pytest.raises(ValueError, match="explanations need the checkpoint"):
        list(predict_paths(model, [photos], explain=tmp_path / "out"))


# --- evaluate -------------------------------------------------------------------------------------


def test_evaluate_shows_each_mistake_beside_its_overlay(checkpoint, tmp_path, monkeypatch):
    images, labels = make_quadrant_images(24, size=RESIZE, seed=3)
    data = write_image_folder(tmp_path / "data", images, labels)  # no splits: all of it is evaluated
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))
    result = evaluate_checkpoint(checkpoint, data, device="cpu", precision="fp32", out=tmp_path / "with")
    assert result["misclassified"], "an untrained network gets some wrong"
    report = ClassificationReport.from_dict(result)
    classifier = Classifier.load(checkpoint, device="cpu", precision="fp32")
    assert result["split"] == "all"
    stored = load_dataset(data, image_size=RESIZE).train.images
    overlays = evaluation.misclassified_overlays(classifier, stored, report)
    assert set(overlays) == {error.index for error in report.misclassified}
    assert all(overlay.shape == (SIZE, SIZE, 3) for overlay in overlays.values())
    monkeypatch.setattr(evaluation, "misclassified_overlays", lambda *arguments: {})
    evaluate_checkpoint(checkpoint, data, device="cpu", precision="fp32", out=tmp_path / "without")
    with (
        Image.open(tmp_path / "with" / "misclassified.png") as paired,
        Image.open(tmp_path / "without" / "misclassified.png") as alone,
    ):
        # The same file, its panels twice as wide: the image and its overlay side by side.
        assert paired.size[0] > 1.5 * alone.size[0] and paired.size[1] >= alone.size[1] * 0.9


def test_evaluation_still_imports_no_trainer():
    import subprocess
    import sys

    code = (
        "import sys, cnnkit.runs.evaluation, cnnkit.runtime.explanation; "
        "assert 'cnnkit.engine.trainer' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the service ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_checkpoint(tmp_path_factory) -> Path:
    return train_colour_checkpoint(tmp_path_factory.mktemp("serve") / "colours.pt")


@pytest.fixture(scope="module")
def server_url(colour_checkpoint):
    threads = torch.get_num_threads()
    app = create_app(load_service_predictor(colour_checkpoint), batch_wait_ms=5)
    with start_server_thread(app) as server:
        yield server.url
    torch.set_num_threads(threads)


def explain(url: str, colour: str, name: str = "sample.png") -> httpx.Response:
    return httpx.post(f"{url}/v1/explain", files=[("files", (name, encode(colour)))], timeout=30)


def test_the_service_explains_one_image_with_its_prediction(server_url):
    response = explain(server_url, "green")
    assert response.status_code == 200
    answer = ExplainResponse.model_validate(response.json())
    assert answer.task == "single_label" and answer.result.name == "sample.png"
    assert answer.result.predictions[0].class_name == answer.explained_class == "green"
    with Image.open(io.BytesIO(base64.b64decode(answer.overlay_png_base64))) as overlay:
        assert (overlay.format, overlay.size) == ("PNG", (16, 16))
    raw = httpx.post(
        f"{server_url}/v1/explain", content=encode("red"), headers={"content-type": "image/png"}, timeout=30
    )
    assert raw.json()["explained_class"] == "red"
    schema = httpx.get(f"{server_url}/openapi.json").json()
    assert "/v1/explain" in schema["paths"] and "501" in schema["paths"]["/v1/explain"]["post"]["responses"]


def test_explanations_and_predictions_at_once_each_get_their_own_answers(server_url):
    colours = list(COLOURS) * 4

    def predict(colour: str) -> str:
        files = [("files", (f"{colour}.png", encode(colour)))]
        return httpx.post(f"{server_url}/v1/predict", files=files, timeout=30).json()["results"][0]

    with ThreadPoolExecutor(8) as pool:
        explained = pool.map(lambda colour: explain(server_url, colour).json()["explained_class"], colours)
        predicted = pool.map(predict, colours)
        assert list(explained) == colours
        assert [result["predictions"][0]["class"] for result in predicted] == colours


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        ([("files", ("a.png", encode("red"))), ("files", ("b.png", encode("blue")))], 400, "one image"),
        ([("files", ("a.txt", b"just text"))], 415, "Cannot decode a.txt"),
        ([("image", ("a.png", encode("red")))], 422, "'files'"),
    ],
)
def test_the_explain_endpoint_refuses_bad_requests(server_url, files, status, message):
    response = httpx.post(f"{server_url}/v1/explain", files=files, timeout=30)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert message in (detail if isinstance(detail, str) else detail[0]["msg"])


def test_an_onnx_service_answers_501(tmp_path, colour_checkpoint):
    pytest.importorskip("onnxruntime")
    from cnnkit.export.onnx import export_onnx

    exported = export_onnx(colour_checkpoint, tmp_path / "colours.onnx", verify_data=None).path
    with start_server_thread(create_app(load_service_predictor(exported))) as server:
        response = explain(server.url, "red")
        assert httpx.get(f"{server.url}/v1/model").json()["format"] == "onnx"
    assert response.status_code == 501
    assert response.json()["detail"].startswith("Explanations need the checkpoint")
    assert "Received: colours.onnx" in response.json()["detail"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: `make browser` installs it")
def test_the_page_shows_the_overlay_of_an_explained_card(server_url):
    playwright_api = pytest.importorskip("playwright.sync_api")
    expect = playwright_api.expect
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGUMENTS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.goto(server_url + "/")
        expect(page.locator("#model-info")).to_contain_text("4 classes")
        page.set_input_files(
            "#file-input", files=[{"name": "sky.png", "mimeType": "image/png", "buffer": encode("blue")}]
        )
        card = page.locator(".result[data-state=done]")
        expect(card.locator(".bars li").first.locator(".label")).to_have_text("blue")
        card.locator("button.explain").click()
        overlay = card.locator(".explanation img")
        expect(overlay).to_be_visible()
        expect(card.locator(".explanation figcaption")).to_contain_text("blue")
        assert overlay.evaluate("image => image.complete && image.naturalWidth") == 16
        assert overlay.get_attribute("src").startswith("blob:")  # within the page's CSP
        browser.close()
    assert problems == []  # nothing blocked by the CSP, no script errors
