"""``cnnkit compare`` on the tutorial's own comparison, in miniature: the base network against the
one with an extra convolution, 2 epochs against 4, on 16x16 images."""

from __future__ import annotations

import json

import pytest

from cnnkit.cli import main
from cnnkit.experiments.compare import compare_runs, differing_fields, read_runs
from cnnkit.reports.training_curves import read_metrics_csv
from tests.conftest import make_quadrant_images, write_image_folder

PNG = b"\x89PNG\r\n\x1a\n"
RUNS = {"base2": ("tutorial", 2), "base4": ("tutorial", 4), "extra2": ("tutorial-extra-conv", 2)}
RUNS["extra4"] = ("tutorial-extra-conv", 4)


@pytest.fixture(scope="module")
def four_runs(tmp_path_factory):
    """The four runs, trained once for the module (curves.png per epoch skipped: it is slow here and
    compare does not read it)."""
    root = tmp_path_factory.mktemp("compare")
    for split, count, seed in (("train", 80, 1), ("test", 20, 2)):  # 2 steps an epoch at batch 32
        write_image_folder(root / "quadrants" / split, *make_quadrant_images(count, seed=seed))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNKIT_HOME", str(root / "home"))
        patch.setattr("cnnkit.runs.recorder.plot_curves", lambda *arguments, **keywords: None)
        for name, (model, epochs) in RUNS.items():
            command = ["train", "--data", str(root / "quadrants"), "--recipe", "tutorial", "--model", model]
            command += ["--epochs", str(epochs), "--out", str(root / "runs"), "--name", name]
            assert main([*command, "--device", "cpu", "--quiet"]) == 0
    return root / "runs"


def test_compare_table_matches_the_runs_metrics(four_runs, tmp_path, capsys):
    paths = [str(four_runs / name) for name in RUNS]
    paths[2] = str(four_runs / "extra2" / "best.pt")  # a checkpoint names its run folder
    assert main(["compare", *paths, "--out", str(tmp_path / "table")]) == 0
    output = capsys.readouterr().out
    lines = output.splitlines()
    header = lines[0].split("  ")
    header = [cell.strip() for cell in header if cell.strip()]
    assert header[:3] == ["run", "model", "recipe"] and "lowest val_loss epoch" in header
    assert "Fields that differ: model, epochs" in output
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert set(rows) == set(RUNS)
    for name, (model, epochs) in RUNS.items():
        metrics = read_metrics_csv(four_runs / name / "metrics.csv")
        cells = rows[name]
        assert cells[1] == model and cells[2] == "tutorial" and cells[4] == str(epochs)
        best_accuracy = max(row["val_accuracy"] for row in metrics)
        first_best = next(int(row["epoch"]) for row in metrics if row["val_accuracy"] == best_accuracy)
        lowest = min(metrics, key=lambda row: row["val_loss"])
        # best val_acc (epoch), final val_acc, best val_loss, its epoch, final val_loss
        assert cells[6:8] == [f"{best_accuracy:.4f}", f"({first_best})"]
        assert cells[8] == f"{metrics[-1]['val_accuracy']:.4f}"
        assert cells[9:11] == [f"{lowest['val_loss']:.4f}", str(int(lowest["epoch"]))]
        assert cells[11] == f"{metrics[-1]['val_loss']:.4f}"
        report = json.loads((four_runs / name / "report.json").read_text())
        assert cells[12] == f"{report['evaluation']['accuracy']:.4f}"  # the test split's
    assert (tmp_path / "table" / "comparison.png").read_bytes()[:8] == PNG


def test_compare_json_holds_the_same_figures(four_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    paths = [str(four_runs / name) for name in RUNS]
    assert main(["compare", *paths, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["differing_fields"] == ["model", "epochs"]
    assert result["folder"] == "runs/compare"  # by default a new folder, never an earlier one's
    assert (tmp_path / "runs" / "compare" / "comparison.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "runs" / "compare" / "comparison.json").read_text()) == result
    by_label = {run["label"]: run for run in result["runs"]}
    for name, (model, epochs) in RUNS.items():
        run, metrics = by_label[name], read_metrics_csv(four_runs / name / "metrics.csv")
        assert run["model"] == model and run["epochs"] == epochs and run["finished"]
        assert run["settings"] == {"model": model, "epochs": float(epochs)}
        assert run["best_val_accuracy"] == max(row["val_accuracy"] for row in metrics)
        assert run["final_val_loss"] == metrics[-1]["val_loss"]
        assert run["best_val_loss"] == min(row["val_loss"] for row in metrics)
        assert run["parameters"] > 0
    # The extra convolution adds 32 * 64 * 3 * 3 weights + 64 biases, and 32 more inputs to conv2.
    assert by_label["extra2"]["parameters"] - by_label["base2"]["parameters"] == 18496 + 32 * 64 * 9
    assert by_label["base2"]["parameters"] == by_label["base4"]["parameters"]


def test_compare_refuses_what_is_not_a_run_and_never_overwrites(four_runs, tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 1
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["compare", str(four_runs / "base2"), str(four_runs / "base2" / "last.pt")]) == 1
    assert "A run is named twice" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["compare", str(four_runs / "base2"), "--out", str(tmp_path / "taken")]) == 1
    assert "already holds files" in capsys.readouterr().err
    first = compare_runs([four_runs / "base2"], runs_folder=tmp_path / "runs")
    second = compare_runs([four_runs / "base2"], runs_folder=tmp_path / "runs")
    assert (first.folder.name, second.folder.name) == ("compare", "compare2")


def test_differing_fields_ignore_the_recipe_name(four_runs):
    runs = read_runs([four_runs / "base2", four_runs / "base4"])
    assert differing_fields(runs) == ["epochs"]
    assert runs[0].lowest_val_loss_epoch == 1 + min(
        range(2), key=lambda index: runs[0].history[index]["val_loss"]
    )
