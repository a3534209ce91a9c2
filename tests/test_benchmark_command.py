"""`cnnkit benchmark`: every format this machine runs, timed at each batch size and scored on data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnkit.api import Classifier
from cnnkit.cli import main
from cnnkit.data import load_dataset
from cnnkit.export.onnx import export_onnx
from cnnkit.runtime.device import cpu_supports_bf16
from tests.conftest import CLASS_NAMES, make_quadrant_images, write_image_folder

SIZE = 16
FAST = ["--seconds", "0.1", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("benchmark")
    images, labels = make_quadrant_images(160, SIZE, seed=3)
    classifier = Classifier(
        "tutorial", class_names=CLASS_NAMES, image_size=SIZE, device="cpu", precision="fp32"
    )
    classifier.fit(images, labels, batch_size=32, epochs=3, recipe="tutorial", verbose=False)
    classifier.save(folder / "tutorial.pt")
    held_out = make_quadrant_images(60, SIZE, seed=8)
    return folder, folder / "tutorial.pt", write_image_folder(folder / "data", *held_out), held_out


def test_benchmark_times_and_scores_every_format_this_machine_runs(trained, capsys):
    folder, checkpoint, data, (images, labels) = trained
    out = folder / "measured"
    command = ["benchmark", str(checkpoint), "--data", str(data), "--batch-sizes", "1,8", "--out", str(out)]
    assert main([*command, *FAST]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "benchmark.json").read_text())
    rows = [row for row in summary["results"] if not row.get("skipped")]
    expected = {"pytorch-fp32", "onnx-fp32", "onnx-int8"} | (
        {"pytorch-bf16"} if cpu_supports_bf16() else set()
    )
    assert {row["format"] for row in rows} == expected
    assert sorted(row["batch_size"] for row in rows) == sorted([1, 8] * len(expected))
    for row in rows:
        assert row["images_per_second"] > 0 and row["latency_p99_ms"] >= row["latency_p50_ms"] > 0
        assert row["runs"] >= 5 and row["format"] in printed
    accuracy = {row["format"]: row["accuracy"] for row in rows}
    # The same model in every format: PyTorch's accuracy is Classifier.predict's on the same images.
    reference = (Classifier.load(checkpoint, precision="fp32").predict(images).argmax(1) == labels).mean()
    assert accuracy["pytorch-fp32"] == pytest.approx(reference) == accuracy["onnx-fp32"]
    assert abs(accuracy["onnx-int8"] - reference) <= 0.05
    assert summary["images_scored"] == len(labels) and summary["cpu"]["model"]
    skipped = {row["format"]: row["skipped"] for row in summary["results"] if row.get("skipped")}
    if "cuda" in skipped:
        assert skipped["cuda"] == "no CUDA device here" and "cuda: not measured" in printed
    assert (out / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    header = (out / "benchmark.csv").read_text().splitlines()[0]
    assert header.startswith("format,device,batch_size,images_per_second,latency_p50_ms,latency_p99_ms")


def test_an_onnx_file_without_data_is_timed_on_synthetic_images(trained, capsys):
    folder, checkpoint, _data, _ = trained
    model = export_onnx(checkpoint, folder / "model.onnx", verify_count=8).path
    out = folder / "onnx"
    assert main(["benchmark", str(model), "--batch-sizes", "2", "--json", "--out", str(out), *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    measured = [row for row in summary["results"] if not row.get("skipped")]
    assert [(row["format"], row["batch_size"], row["accuracy"]) for row in measured] == [
        ("onnx-fp32", 2, None)
    ]
    skipped = {row["format"]: row["skipped"] for row in summary["results"] if row.get("skipped")}
    assert skipped == {"onnx-int8": "give --data: int8 is calibrated on real images"}
    assert "synthetic images" in summary["note"]


def test_a_bad_benchmark_request_is_one_line(trained, capsys):
    folder, checkpoint, _data, _ = trained
    assert main(["benchmark", str(checkpoint), "--batch-sizes", "1,x"]) == 1
    assert "--batch-sizes must be whole numbers separated by commas, e.g. 1,64. Received: '1,x'" in (
        capsys.readouterr().err
    )
    assert main(["benchmark", str(checkpoint), "--batch-sizes", "0", "--out", str(folder / "zero")]) == 1
    assert "batch sizes must be integers >= 1. Received: batch_sizes=[0]" in capsys.readouterr().err
    assert not (folder / "zero").exists()
    assert main(["benchmark", str(checkpoint), "--seconds", "-1", "--out", str(folder / "negative")]) == 1
    assert "seconds must be a positive number. Received: seconds=-1.0" in capsys.readouterr().err
    assert not (folder / "negative").exists()
    gone = ["benchmark", str(checkpoint), "--data", str(folder / "gone"), "--out", str(folder / "b")]
    assert main(gone) == 1
    assert "gone does not exist" in capsys.readouterr().err and not (folder / "b").exists()
    assert main(["benchmark", str(folder / "missing.pt")]) == 1
    assert "No model file at" in capsys.readouterr().err
    (folder / "full").mkdir()
    (folder / "full" / "mine.txt").write_text("mine")
    assert main(["benchmark", str(checkpoint), "--out", str(folder / "full"), *FAST]) == 1
    assert "already holds files" in capsys.readouterr().err
    assert (folder / "full" / "mine.txt").read_text() == "mine"


def test_limit_scores_images_spread_over_the_split(trained, capsys):
    folder, checkpoint, data, _ = trained
    out = folder / "limited"
    command = ["benchmark", str(checkpoint), "--data", str(data), "--limit", "12", "--batch-sizes", "4"]
    assert main([*command, "--json", "--out", str(out), *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images_scored"] == 12 and "scored on 12 images spread over its 60" in summary["note"]
    # Class folders come sorted: the first 12 would all be one class; spread, every class is scored.
    loaded = load_dataset(data, image_size=SIZE, progress=False).train  # in the folders' order
    chosen = np.linspace(0, len(loaded) - 1, 12).round().astype(int)
    images, labels = loaded.images.numpy()[chosen], loaded.labels.numpy()[chosen]
    assert len(set(labels.tolist())) == len(CLASS_NAMES)
    predicted = Classifier.load(checkpoint, precision="fp32").predict(images).argmax(1)
    fp32 = next(row for row in summary["results"] if row["format"] == "pytorch-fp32")
    assert fp32["accuracy"] == pytest.approx((predicted == labels).mean())
