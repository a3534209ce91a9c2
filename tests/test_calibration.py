"""Calibrated confidence (issue 22): temperature scaling fitted on validation and kept in best.pt;
evaluate's ECE, NLL, Brier and reliability diagram; predict, export and serve give calibrated
probabilities (the uncalibrated ones one option away); --min-confidence answers "uncertain"."""

import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.cli import main
from cnnkit.inference.onnx_runtime import OnnxClassifier
from cnnkit.inference.predictor import load_predictor
from cnnkit.reports.calibration import calibration_metrics, expected_calibration_error, reliability_bins
from cnnkit.runs.evaluation import evaluate_checkpoint
from cnnkit.serving import create_app, load_service_predictor, start_server_thread
from cnnkit.tasks import SINGLE_LABEL
from cnnkit.tasks.calibration import (
    apply_confidence_map,
    choose_confidence_map,
    fit_temperature,
    isotonic_blocks,
)
from tests.conftest import make_quadrant_images, write_image_folder


def test_the_fitted_temperature_undoes_a_known_overconfidence():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20_000, 5, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=generator).flatten()
    assert fit_temperature(SINGLE_LABEL, true_logits * 3, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(SINGLE_LABEL, true_logits / 2, labels) == pytest.approx(0.5, rel=0.05)


def test_ece_nll_and_brier_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    # Confidences 0.9, 0.8, 0.7, 0.6 (right, wrong, right, right): one a bin of 15.
    assert expected_calibration_error(probabilities, labels) == pytest.approx((0.1 + 0.8 + 0.3 + 0.4) / 4)
    table = reliability_bins(probabilities, labels)
    assert sum(table["count"]) == 4 and table["accuracy"][13] == 1.0 and table["confidence"][13] == 0.9
    metrics = calibration_metrics(probabilities, labels)
    assert metrics["nll"] == pytest.approx(-np.log([0.9, 0.2, 0.7, 0.6]).mean())
    assert metrics["brier"] == pytest.approx((0.02 + 1.28 + 0.18 + 0.32) / 4)
    # Multi-label: each (image, label) probability a yes/no forecast.
    multi = calibration_metrics(np.array([[0.9, 0.2]]), np.array([[1, 0]]))
    assert multi["brier"] == pytest.approx((0.01 + 0.04) / 2)
    assert multi["ece"] == pytest.approx((0.1 + 0.2) / 2)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    data = write_image_folder(root / "data", *make_quadrant_images(200, seed=3))
    flags = ["--model", "tutorial", "--epochs", "3", "--precision", "fp32"]
    assert main(["train", "--data", str(data), "--out", str(root / "runs"), "--name", "run", *flags]) == 0
    return root, data, root / "runs" / "run"


def test_training_fits_a_temperature_on_validation_and_keeps_it_in_best_pt(calibrated_run, tmp_path):
    _root, data, run = calibrated_run
    best = load_checkpoint(run / "best.pt")
    report = json.loads((run / "report.json").read_text())["calibration"]
    assert best.temperature == pytest.approx(report["temperature"]) and best.temperature != 1
    assert report["chosen_on"] == "validation"
    assert report["validation_after"]["nll"] <= report["validation_before"]["nll"]
    # Decisions do not change; the probabilities do.
    classifier = Classifier.load(run / "best.pt", precision="fp32")
    images, _ = make_quadrant_images(20, seed=9)
    calibrated, trained = classifier.predict(images), classifier.predict(images, calibrated=False)
    assert (calibrated.argmax(1) == trained.argmax(1)).all() and not np.allclose(calibrated, trained)
    off = tmp_path / "off"
    flags = ["--model", "tutorial", "--epochs", "1", "--set", "calibration=none"]
    assert main(["train", "--data", str(data), "--out", str(off), "--name", "run", *flags]) == 0
    assert load_checkpoint(off / "run" / "best.pt").temperature is None


def test_evaluate_reports_calibration_before_and_after_with_a_reliability_diagram(calibrated_run, capsys):
    root, _data, run = calibrated_run
    assert main(["evaluate", str(run / "best.pt"), "--out", str(root / "evaluation")]) == 0
    printed = capsys.readouterr().out
    assert "Calibration (temperature" in printed and "(as trained -> calibrated)" in printed
    result = json.loads((root / "evaluation" / "report.json").read_text())["calibration"]
    assert set(result) >= {"temperature", "as_trained", "calibrated"}
    for section in ("as_trained", "calibrated"):
        assert set(result[section]) >= {"ece", "nll", "brier", "reliability"}
    assert result["calibrated"]["nll"] != result["as_trained"]["nll"]
    assert (root / "evaluation" / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_export_and_serve_give_calibrated_probabilities_and_say_uncertain(
    calibrated_run, tmp_path, capsys
):
    _root, _data, run = calibrated_run
    # A plain grey image: no quadrant is bright, so the model is unsure of it.
    image = tmp_path / "grey.png"
    Image.new("RGB", (16, 16), (90, 90, 90)).save(image)
    temperature = load_checkpoint(run / "best.pt").temperature

    def top(*flags):
        assert main(
            ["predict", str(run / "best.pt"), str(image), "--format", "json", "--precision", "fp32", *flags]
        ) in (0, 1)
        return json.loads(capsys.readouterr().out)[0]

    calibrated, trained = top(), top("--uncalibrated")
    assert calibrated["predictions"][0]["class"] == trained["predictions"][0]["class"]
    assert calibrated["predictions"][0]["probability"] != trained["predictions"][0]["probability"]
    unsure = top("--min-confidence", "0.999999")
    assert unsure["uncertain"] is True and unsure["predictions"] == calibrated["predictions"]
    assert top("--min-confidence", "0.000001")["uncertain"] is False
    assert main(["predict", str(run / "best.pt"), str(image), "--min-confidence", "0.999999"]) == 0
    assert "uncertain, best guesses: " in capsys.readouterr().out
    assert (
        main(["predict", str(run / "best.pt"), str(image), "--min-confidence", "0.999999", "--format", "csv"])
        == 0
    )
    header, first = capsys.readouterr().out.splitlines()[:2]
    assert header.endswith(",uncertain") and first.endswith(",1")
    assert main(["predict", str(run / "best.pt"), str(image), "--min-confidence", "1.5"]) == 1
    assert (
        "--min-confidence must be a probability between 0 and 1 (both excluded). Received: min_confidence=1.5"
        in (capsys.readouterr().err)
    )

    exported = tmp_path / "model.onnx"
    assert main(["export", str(run / "best.pt"), "--output", str(exported)]) == 0
    onnx = OnnxClassifier(exported)
    assert onnx.metadata["temperature"] == pytest.approx(temperature)
    pixels = np.asarray(
        load_predictor(run / "best.pt", precision="fp32").classifier.model_view(
            torch.from_numpy(make_quadrant_images(8, seed=4)[0])
        )
    )
    reference = Classifier.load(run / "best.pt", precision="fp32").predict(pixels)
    np.testing.assert_allclose(onnx.predict(pixels), reference, atol=1e-5)
    with pytest.raises(ValueError, match="export it again with --uncalibrated"):
        load_predictor(exported, calibrated=False)
    plain = tmp_path / "plain.onnx"
    assert main(["export", str(run / "best.pt"), "--output", str(plain), "--uncalibrated"]) == 0
    assert "temperature" not in OnnxClassifier(plain).metadata

    predictor = load_service_predictor(run / "best.pt")
    app = create_app(predictor, min_confidence=0.999999)
    with start_server_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/v1/predict", files=[("files", (image.name, image.read_bytes(), "image/png"))])
    assert answer.status_code == 200 and answer.json()["results"][0]["uncertain"] is True


def test_isotonic_blocks_match_scikit_learn():
    isotonic = pytest.importorskip("sklearn.isotonic")
    generator = np.random.default_rng(0)
    confidences = np.round(generator.uniform(0.1, 1.0, 3000), 3)  # ties pooled first
    outcomes = generator.random(3000) < confidences**2
    centres, accuracies = isotonic_blocks(confidences, outcomes)
    theirs = isotonic.IsotonicRegression().fit(confidences, outcomes).predict(confidences)
    assert np.allclose(np.unique(accuracies.round(12)), np.unique(theirs.round(12)))
    assert (np.diff(centres) > 0).all() and (np.diff(accuracies) > 0).all()


def _overconfident_in_the_middle(seed: int, count: int = 20_000, classes: int = 10):
    """Logits whose top softmax probability c is right c - 0.8 (c - 0.3)(1 - c) of the time:
    over-confident between, right near 1, a shape no single temperature undoes."""
    generator = np.random.default_rng(seed)
    logits = generator.normal(0, 1, (count, classes)) * generator.uniform(0.5, 6, (count, 1))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    top, predicted = probabilities.max(1), probabilities.argmax(1)
    right = generator.random(count) < top - 0.8 * np.clip(top - 0.3, 0, None) * (1 - top)
    other = (predicted + generator.integers(1, classes, count)) % classes
    return torch.from_numpy(logits), torch.from_numpy(np.where(right, predicted, other))


def test_the_confidence_map_undoes_what_a_temperature_cannot_and_keeps_every_decision():
    logits, labels = _overconfident_in_the_middle(seed=1)
    validation, test = slice(0, 10_000), slice(10_000, None)
    scaled = torch.softmax(logits, 1)  # what a temperature would leave: the bump in the middle
    knots = choose_confidence_map(scaled[validation].numpy(), labels[validation].numpy())
    assert knots is not None
    mapped = apply_confidence_map(scaled[test], torch.tensor(knots, dtype=torch.float64))
    before = expected_calibration_error(scaled[test].numpy(), labels[test].numpy())
    after = expected_calibration_error(mapped.numpy(), labels[test].numpy())
    assert after < 0.5 * before, (before, after)
    assert (mapped.argmax(1) == scaled[test].argmax(1)).all()
    np.testing.assert_allclose(mapped.sum(1).numpy(), 1.0, atol=1e-9)
    # Too few validation images to fit a map on: the temperature alone.
    assert choose_confidence_map(scaled[:150].numpy(), labels[:150].numpy()) is None


def test_a_confidence_map_travels_through_the_checkpoint_export_and_service(calibrated_run, tmp_path):
    _root, data, run = calibrated_run
    checkpoint = load_checkpoint(run / "best.pt")
    knots = [[0.3, 0.6, 0.9, 1.0], [0.3, 0.45, 0.7, 0.95]]
    checkpoint.confidence_map = knots
    mapped_path = tmp_path / "mapped.pt"
    save_checkpoint(mapped_path, checkpoint)
    pixels = make_quadrant_images(16, seed=5)[0]
    classifier = Classifier.load(mapped_path, precision="fp32")
    assert classifier.confidence_map == knots
    probabilities = classifier.predict(pixels)
    scaled = torch.softmax(
        classifier.logits(torch.from_numpy(pixels), calibrated=False) / checkpoint.temperature, 1
    )
    expected = apply_confidence_map(scaled.double(), torch.tensor(knots, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert (probabilities.argmax(1) == scaled.numpy().argmax(1)).all()
    exported = tmp_path / "mapped.onnx"
    assert main(["export", str(mapped_path), "--output", str(exported)]) == 0
    onnx = OnnxClassifier(exported)
    assert onnx.metadata["confidence_map"] == knots
    np.testing.assert_allclose(onnx.predict(pixels), probabilities, atol=1e-5)
    service = load_service_predictor(mapped_path, precision="fp32")
    np.testing.assert_allclose(service.predict(pixels), probabilities, atol=1e-5)
    trained = load_predictor(mapped_path, precision="fp32", calibrated=False)
    np.testing.assert_allclose(
        trained.predict(pixels), classifier.predict(pixels, calibrated=False), atol=1e-6
    )
    # evaluate: the map changes the calibrated figures only; "as trained" is the network's own.
    plain = evaluate_checkpoint(run / "best.pt", data, precision="fp32", reports=False)["calibration"]
    mapped = evaluate_checkpoint(mapped_path, data, precision="fp32", reports=False)["calibration"]
    assert mapped["as_trained"] == plain["as_trained"] and mapped["confidence_map"]
    assert mapped["calibrated"]["nll"] != plain["calibrated"]["nll"] and not plain["confidence_map"]
    checkpoint.confidence_map = [[0.9, 0.5], [0.2, 0.3]]
    with pytest.raises(ValueError, match=r"confidence_map must be \[confidences, accuracies\].*Received"):
        checkpoint.__post_init__()
