"""The command line end to end on a tiny data set: train -> evaluate -> predict."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from cnnkit.reports.training_curves import read_metrics_csv
from tests.conftest import make_quadrant_images, write_image_folder


@pytest.fixture
def trained_run(quadrant_folder, tmp_path, capsys):
    code = main(
        [
            "train",
            "--data",
            str(quadrant_folder),
            "--recipe",
            "tutorial",
            "--epochs",
            "3",
            "--out",
            str(tmp_path / "runs"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    return tmp_path / "runs" / "train", capsys.readouterr().out


def test_train_writes_a_complete_run_folder(trained_run):
    folder, output = trained_run
    assert {p.name for p in folder.iterdir()} >= {
        "config.yaml",
        "metrics.csv",
        "curves.png",
        "best.pt",
        "last.pt",
        "report.json",
    }
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["recipe"]["batch_size"] == 32 and config["recipe"]["epochs"] == 3
    assert config["class_names"] == ["bottom_left", "bottom_right", "top_left", "top_right"]
    assert config["train_images"] == 128 and config["val_images"] == 32  # stratified 20% of 160
    rows = read_metrics_csv(folder / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((folder / "report.json").read_text())
    assert report["evaluation"]["split"] == "test" and report["evaluation"]["count"] == 40
    assert "Epoch 3/3" in output and f"Run folder: {folder}" in output


def test_best_checkpoint_is_the_best_validation_epoch(trained_run):
    folder, _ = trained_run
    rows = read_metrics_csv(folder / "metrics.csv")
    best = torch.load(folder / "best.pt", weights_only=True)
    assert best["metrics"]["validation"]["accuracy"] == pytest.approx(
        max(row["val_accuracy"] for row in rows), abs=1e-5
    )
    assert "optimizer_state" in torch.load(folder / "last.pt", weights_only=True)


def test_run_folders_are_numbered_never_overwritten(quadrant_folder, tmp_path, capsys):
    for _ in range(2):
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(quadrant_folder),
                    "--epochs",
                    "1",
                    "--out",
                    str(tmp_path),
                    "--name",
                    "exp",
                    "--quiet",
                ]
            )
            == 0
        )
    assert (tmp_path / "exp").is_dir() and (tmp_path / "exp2").is_dir()


def test_evaluate_prints_json_and_matches_classes_by_name(trained_run, quadrant_folder, tmp_path, capsys):
    folder, _ = trained_run
    assert main(["evaluate", str(folder / "last.pt"), "--data", str(quadrant_folder), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["count"] == 40 and full["split"] == "test" and 0.0 <= full["accuracy"] <= 1.0
    assert full["accuracy"] >= 0.75
    # Only two of the classes, so their folder indices (0, 1) differ from the model's (1, 3).
    subset = tmp_path / "subset"
    for name in ("bottom_right", "top_right"):
        shutil.copytree(quadrant_folder / "test" / name, subset / name)
    assert main(["evaluate", str(folder / "last.pt"), "--data", str(subset), "--json"]) == 0
    partial = json.loads(capsys.readouterr().out)
    assert partial["count"] == 20 and partial["split"] == "all" and partial["accuracy"] >= 0.75


def test_evaluate_without_data_uses_the_runs_own_test_split(trained_run, capsys):
    folder, _ = trained_run
    assert main(["evaluate", str(folder / "best.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 40


def test_evaluate_names_an_unknown_class(trained_run, quadrant_folder, tmp_path, capsys):
    folder, _ = trained_run
    shutil.copytree(quadrant_folder / "test" / "top_left", tmp_path / "other" / "zebra")
    shutil.copytree(quadrant_folder / "test" / "top_right", tmp_path / "other" / "top_right")
    assert main(["evaluate", str(folder / "last.pt"), "--data", str(tmp_path / "other")]) == 1
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith("cnnkit: error:") and "zebra" in last_line


def test_predict_gives_top_k_class_names(trained_run, quadrant_folder, capsys):
    folder, _ = trained_run
    images = sorted((quadrant_folder / "test" / "top_left").iterdir())[:3]
    assert main(["predict", str(folder / "best.pt"), *map(str, images), "--top-k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == list(map(str, images))
    assert all(len(r["predictions"]) == 2 for r in results)
    assert [r["predictions"][0]["class"] for r in results].count("top_left") >= 2
    first = results[0]["predictions"]
    assert first[0]["probability"] >= first[1]["probability"]


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 1
    assert "Checkpoint not found" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--val-split", "1.5"]) == 1
    assert "Received: validation_split=1.5" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing"), "--model", "tutorail"]) == 1
    assert "Did you mean 'tutorial'" in capsys.readouterr().err  # before any data is read


def test_summary_command_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "cnnkit", "summary", "--model", "tutorial"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Total params: 2,122,186" in result.stdout


def test_train_without_flags_uses_the_fast_recipe(quadrant_folder, tmp_path, capsys):
    assert (
        main(["train", "--data", str(quadrant_folder), "--epochs", "1", "--out", str(tmp_path), "--quiet"])
        == 0
    )
    checkpoint = torch.load(tmp_path / "train" / "best.pt", weights_only=True)
    assert checkpoint["recipe"]["name"] == "fast" and checkpoint["model_name"] == "fast"
    assert checkpoint["recipe"]["tta"] == 2  # evaluate and predict use the recipe's test-time augmentation
    mean = checkpoint["normalization"]["mean"]
    assert mean != [0.0, 0.0, 0.0]  # standardised with statistics of the training images
    assert main(["evaluate", str(tmp_path / "train" / "best.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["count"] == 40


def test_default_recipe_trains_on_a_folder_at_another_image_size(quadrant_folder, tmp_path, capsys):
    out = tmp_path / "runs"
    assert (
        main(
            [
                "train",
                "--data",
                str(quadrant_folder),
                "--img-size",
                "24",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    checkpoint = torch.load(out / "train" / "last.pt", weights_only=True)
    assert checkpoint["image_size"] == 24 and checkpoint["model_arguments"]["image_size"] == 24
    capsys.readouterr()
    image = sorted((quadrant_folder / "test" / "top_left").iterdir())[0]  # 16x16: resized to 24 on the way in
    assert main(["predict", str(out / "train" / "last.pt"), str(image), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["predictions"]) == 4


def test_a_runs_validation_and_test_folders_serve_as_named(tmp_path, capsys):
    images, labels = make_quadrant_images(120, seed=7)
    write_image_folder(tmp_path / "photos" / "train", images[:80], labels[:80])
    write_image_folder(tmp_path / "photos" / "validation", images[80:100], labels[80:100])
    write_image_folder(tmp_path / "photos" / "test", images[100:], labels[100:])
    arguments = ["--recipe", "tutorial", "--epochs", "2", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(["train", "--data", str(tmp_path / "photos"), *arguments]) == 0
    folder = tmp_path / "runs" / "train"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["train_images"] == 80 and config["val_images"] == 20  # the folder, not a carved share
    assert config["splits"]["validation"].endswith("validation/") and config["splits"]["test"].endswith(
        "test/"
    )
    report = json.loads((folder / "report.json").read_text())
    assert report["evaluation"]["split"] == "test" and report["evaluation"]["count"] == 20
    assert "Validating on" in capsys.readouterr().err
    assert main(["evaluate", str(folder / "best.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "test"


def test_a_named_model_outside_the_fast_family_gets_its_own_recipe(quadrant_folder, tmp_path, capsys):
    # The default recipe's Muon steps are the fast network's: `--model tutorial` alone trains as
    # the tutorial does, and says so; --recipe still wins.
    arguments = ["train", "--data", str(quadrant_folder), "--model", "tutorial", "--epochs", "1"]
    arguments += ["--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main([*arguments, "--name", "own"]) == 0
    assert "Training tutorial: the tutorial recipe (--recipe to change)." in capsys.readouterr().err
    own = load_checkpoint(tmp_path / "runs" / "own" / "best.pt")
    assert own.recipe.name == "tutorial" and own.recipe.optimizer == "adam" and own.model_name == "tutorial"
    assert main([*arguments, "--recipe", "fast", "--name", "named", "--quiet"]) == 0
    named = load_checkpoint(tmp_path / "runs" / "named" / "best.pt")
    assert named.recipe.name == "fast" and named.model_name == "tutorial"
