"""Multi-label data end to end (issue 21): a labels.csv found in a folder or zip (or given with
--labels) loads multi-hot labels through the store, and `cnnkit train` trains a multi-label model
with no other flag: mAP monitored, a threshold a label chosen on validation and kept in best.pt."""

import json
import zipfile

import numpy as np
import pytest
import torch
import yaml

from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from cnnkit.data import load_dataset
from cnnkit.data.errors import DataError
from tests.conftest import CLASS_NAMES, make_quadrant_sets, write_label_table_data


def _zip_folder(folder, path, inside=""):
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, inside + file.relative_to(folder).as_posix())
    return path


def test_a_labels_csv_in_a_folder_or_zip_gives_multi_hot_labels_and_skips_what_it_cannot_match(tmp_path):
    images, labels = make_quadrant_sets(12, seed=1)
    data = write_label_table_data(tmp_path / "data", images, labels)
    (data / "images" / "0000.png").rename(data / "images" / "unlisted.png")  # an image without a row
    with open(data / "labels.csv", "a") as table:
        table.write("images/gone.png,top_left\nimages/0001.png,bottom_left\n")  # no image; a second row
    splits = load_dataset(data, progress=False)
    assert splits.train.multi_label and splits.train.class_names == CLASS_NAMES
    assert splits.train.names == [f"images/{index:04d}.png" for index in range(1, 12)]
    assert splits.train.labels.tolist() == labels[1:].tolist()
    reasons = {file.path.replace(str(data), "DATA"): file.reason for file in splits.skipped}
    assert reasons == {
        "DATA/images/unlisted.png": "labels: no row in labels.csv",
        "DATA/labels.csv row 2: images/0000.png": "labels: names no image of the data",
        f"DATA/labels.csv row {len(images) + 2}: images/gone.png": "labels: names no image of the data",
        f"DATA/labels.csv row {len(images) + 3}: images/0001.png": (
            "labels: a second row for the same image (the first is kept)"
        ),
    }
    again = load_dataset(data, progress=False)  # read back from the store: 2-D labels kept
    assert torch.equal(again.train.labels, splits.train.labels) and len(again.skipped) == 4
    with pytest.raises(DataError, match=r"unlisted.png: labels: no row in labels.csv; strict mode stops"):
        load_dataset(data, progress=False, strict=True, refresh_cache=True)
    # A zip holding one folder: its labels.csv is found there and names images below it.
    archive = _zip_folder(data, tmp_path / "data.zip", inside="set/")
    zipped = load_dataset(archive, progress=False)
    assert torch.equal(zipped.train.labels, splits.train.labels)
    assert zipped.train.names == ["set/" + name for name in splits.train.names]  # paths in the zip


def test_a_table_given_apart_labels_the_images_and_is_part_of_the_store_key(tmp_path):
    images, labels = make_quadrant_sets(8, seed=2)
    data = write_label_table_data(tmp_path / "data", images, labels)
    outside = tmp_path / "other.csv"
    (data / "labels.csv").rename(outside)
    assert load_dataset(data, progress=False, labels=outside).train.labels.tolist() == labels.tolist()
    flipped = 1 - labels
    rows = [
        f"images/{index:04d}.png,{' '.join(np.array(CLASS_NAMES)[row == 1])}"
        for index, row in enumerate(flipped)
    ]
    outside.write_text("\n".join(rows) + "\n")
    reread = load_dataset(data, progress=False, labels=outside)  # another table: another store
    assert reread.train.labels.tolist() == flipped.tolist()
    with pytest.raises(DataError, match=r"Label table .*missing.csv does not exist"):
        load_dataset(data, progress=False, labels=tmp_path / "missing.csv")
    with pytest.raises(DataError, match=r"is CIFAR-10, labelled by its own batches"):
        load_dataset("cifar10", progress=False, labels=outside, cache_dir=tmp_path / "no-download")


def test_train_and_test_folders_under_one_table_are_the_splits(tmp_path):
    images, labels = make_quadrant_sets(20, seed=3)
    data = tmp_path / "data"
    write_label_table_data(data, images[:14], labels[:14], folder="train")
    train_rows = (data / "labels.csv").read_text().splitlines()
    write_label_table_data(data, images[14:], labels[14:], folder="test")
    test_rows = (data / "labels.csv").read_text().splitlines()[1:]
    (data / "labels.csv").write_text("\n".join(train_rows + test_rows) + "\n")
    splits = load_dataset(data, progress=False)
    assert splits.train.labels.tolist() == labels[:14].tolist()
    assert splits.test.labels.tolist() == labels[14:].tolist()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"a/labels.csv": b"x", "b/labels.csv": b"x"},
            r"Found 2 label tables \(a/labels.csv, b/labels.csv\)",
        ),
        ({"labels.csv": b"\xff\xfe\x00bad"}, r"labels.csv is not UTF-8 text"),
        ({"labels.csv": b"image,labels\n"}, r"labels.csv has no rows"),
    ],
)
def test_a_table_that_cannot_be_used_is_one_line(tmp_path, files, message):
    images, labels = make_quadrant_sets(4, seed=4)
    data = write_label_table_data(tmp_path / "data", images, labels, folder="a")
    (data / "labels.csv").unlink()
    for name, content in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_dataset(data, progress=False)


def test_cnnkit_train_on_a_zip_with_labels_csv_trains_a_multi_label_model_with_no_other_flag(
    tmp_path, capsys
):
    images, labels = make_quadrant_sets(200, seed=5)
    archive = _zip_folder(write_label_table_data(tmp_path / "data", images, labels), tmp_path / "sets.zip")
    out = tmp_path / "runs"
    # The fast recipe with no flag but a shorter schedule, as a test must be quick.
    assert main(["train", "--data", str(archive), "--out", str(out), "--name", "run", "--epochs", "4"]) == 0
    printed = capsys.readouterr()
    assert "Training 4-label" in printed.out and "mAP" in printed.out
    assert "Thresholds: one a label for its best validation F1" in printed.err
    config = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert config["task"] == "multi_label" and config["recipe"]["monitor"] == "val_map"
    assert set(config["class_counts"]) == set(CLASS_NAMES)
    best = load_checkpoint(out / "run" / "best.pt")
    assert best.task == "multi_label" and len(best.thresholds) == 4
    report = json.loads((out / "run" / "report.json").read_text())
    assert report["thresholds"]["chosen_on"] == "validation"
    assert list(report["thresholds"]["thresholds"].values()) == pytest.approx(best.thresholds)
    assert report["evaluation"]["split"] == "validation"
    assert report["evaluation"]["map"] > 0.7  # chance: about 0.4
    assert report["learned"] is True and report["chance"]["metric"] == "map"
    header = (out / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"map", "micro_f1", "macro_f1", "val_map"} <= set(header) and "accuracy" not in header
    # compare shows the run by its mAP and F1, with no empty accuracy columns.
    assert main(["compare", str(out / "run"), "--out", str(tmp_path / "compared")]) == 0
    table = capsys.readouterr().out
    assert "best val_map" in table and "best val_macro_f1" in table and "val_acc" not in table
    assert (tmp_path / "compared" / "comparison.png").is_file()


def test_without_a_validation_split_every_label_keeps_one_half_and_the_report_says_so(tmp_path, capsys):
    images, labels = make_quadrant_sets(60, seed=6)
    data = write_label_table_data(tmp_path / "data", images, labels)
    out = tmp_path / "runs"
    flags = ["--model", "tutorial", "--epochs", "1", "--set", "validation_split=0"]
    assert main(["train", "--data", str(data), "--out", str(out), "--name", "run", *flags]) == 0
    assert "Thresholds: 0.5 for every label (no validation split" in capsys.readouterr().err
    assert load_checkpoint(out / "run" / "best.pt").thresholds is None
    report = json.loads((out / "run" / "report.json").read_text())
    assert report["thresholds"] == {"chosen_on": None, "thresholds": dict.fromkeys(CLASS_NAMES, 0.5)}


def test_a_stopped_multi_label_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    import contextlib

    import cnnkit.runs.training as training_jobs
    from cnnkit.engine.interrupt import TrainingInterrupted
    from cnnkit.recipes import get_recipe
    from tests.run_helpers import learning_metrics
    from tests.test_resume import StopAfter, assert_same_weights

    images, labels = make_quadrant_sets(80, seed=7)
    data = write_label_table_data(tmp_path / "data", images, labels)
    recipe = get_recipe("tutorial").replace(epochs=2, batch_size=8, seed=3)
    whole = training_jobs.train(data, recipe, device="cpu", out=tmp_path, name="whole", verbose=False)

    @contextlib.contextmanager
    def stop_midway():
        yield StopAfter(12)  # 8 steps an epoch: in the middle of epoch 2

    monkeypatch.setattr(training_jobs, "stop_on_signals", stop_midway)
    with pytest.raises(TrainingInterrupted):
        training_jobs.train(data, recipe, device="cpu", out=tmp_path, name="cut", verbose=False)
    monkeypatch.undo()
    resumed = training_jobs.resume(tmp_path / "cut", device="cpu", verbose=False)
    assert learning_metrics(tmp_path / "cut") == learning_metrics(whole.run_folder)
    assert_same_weights(tmp_path / "cut" / "best.pt", whole.run_folder / "best.pt")
    assert resumed.report["thresholds"] == whole.report["thresholds"]
    assert (
        load_checkpoint(tmp_path / "cut" / "best.pt").thresholds
        == load_checkpoint(whole.run_folder / "best.pt").thresholds
    )


def test_tune_scores_multi_label_trials_by_validation_map(tmp_path, capsys):
    pytest.importorskip("optuna")
    images, labels = make_quadrant_sets(60, seed=8)
    data = write_label_table_data(tmp_path / "data", images, labels)
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump({"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    )
    command = [
        "tune",
        "--data",
        str(data),
        "--recipe",
        "tutorial",
        "--set",
        "epochs=2",
        "--space",
        str(space),
    ]
    assert main([*command, "--trials", "2", "--out", str(tmp_path / "runs"), "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    assert "val_map" in output and "val_accuracy" not in output
    trial = json.loads((tmp_path / "runs" / "tune" / "trial-0" / "report.json").read_text())
    assert trial["thresholds"]["chosen_on"] == "validation"
