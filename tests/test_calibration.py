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
from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from cnnkit.inference.onnx_runtime import OnnxClassifier
from cnnkit.inference.predictor import load_predictor
from cnnkit.reports.calibration import calibration_metrics, expected_calibration_error, reliability_bins
from cnnkit.serving import create_app, load_service_predictor, start_server_thread
from cnnkit.tasks import SINGLE_LABEL
from cnnkit.tasks.calibration import fit_temperature
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
