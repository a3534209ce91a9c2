"""Training on a messy folder (skipped.txt, --strict, stop-errors) and a full disk mid-run."""

from __future__ import annotations

import errno

import pytest
import torch

from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from tests.conftest import CLASS_NAMES, make_quadrant_images, write_image_folder


@pytest.fixture
def messy_folder(tmp_path):
    """The quadrant classes as PNGs, plus what real folders hold: junk, clutter, broken images."""
    images, labels = make_quadrant_images(80, seed=1)
    root = write_image_folder(tmp_path / "messy", images, labels)
    (root / "top_left" / "notes.txt").write_text("not an image")
    (root / "top_left" / "empty.jpg").write_bytes(b"")
    (root / "bottom_left" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (root / "bottom_right" / ".DS_Store").write_bytes(b"\x00" * 64)
    good = (root / "top_right" / "0003.png").read_bytes()
    (root / "top_right" / "cut.png").write_bytes(good[: len(good) // 2])
    return root


def train_arguments(data, out, *extra: str) -> list[str]:
    common = ["--recipe", "tutorial", "--epochs", "1", "--device", "cpu", "--quiet"]
    return ["train", "--data", str(data), "--out", str(out), *common, *extra]


def test_bad_files_are_skipped_listed_and_counted(messy_folder, tmp_path, capsys):
    assert main(train_arguments(messy_folder, tmp_path / "runs", "--name", "messy")) == 0
    folder = tmp_path / "runs" / "messy"
    listed = {
        line.split("\t")[0].rsplit("/", 2)[-2] + "/" + line.split("\t")[0].rsplit("/", 1)[-1]
        for line in (folder / "skipped.txt").read_text().splitlines()
        if not line.startswith("#")
    }
    assert listed == {
        "top_left/notes.txt",
        "top_left/empty.jpg",
        "bottom_left/Thumbs.db",
        "bottom_right/.DS_Store",
        "top_right/cut.png",
    }
    errors = capsys.readouterr().err
    assert "Skipped 5 of 85 files" in errors
    assert load_checkpoint(folder / "last.pt").config["train_images"] == 64  # 80 good, 20% held out


def test_strict_makes_a_bad_file_an_error_naming_it(messy_folder, tmp_path, capsys):
    assert main(train_arguments(messy_folder, tmp_path / "runs", "--strict")) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("cnnkit: error:") and len(error.splitlines()) == 1
    assert any(name in error for name in ("notes.txt", "empty.jpg", "cut.png"))


def test_fewer_than_two_classes_stops_with_one_line(tmp_path, capsys):
    images, labels = make_quadrant_images(8, seed=1)
    root = write_image_folder(tmp_path / "one", images[labels == 0], labels[labels == 0])
    assert main(train_arguments(root, tmp_path / "runs")) == 1
    error = capsys.readouterr().err.strip()
    assert "training needs at least two class folders" in error and CLASS_NAMES[0] in error


def test_a_full_disk_mid_run_is_one_clear_line_and_keeps_the_last_good_checkpoint(
    quadrant_folder, tmp_path, capsys, monkeypatch
):
    real_save = torch.save
    calls = {"count": 0}

    def fill_the_disk_after_epoch_one(obj, file, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 2:  # epoch 1 wrote last.pt and best.pt; then the disk is full
            file.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_the_disk_after_epoch_one)
    arguments = train_arguments(quadrant_folder, tmp_path / "runs", "--name", "full")
    arguments[arguments.index("--epochs") + 1] = "3"
    assert main(arguments) == 1
    error = capsys.readouterr().err.strip()
    folder = tmp_path / "runs" / "full"
    assert error == f"cnnkit: error: No space left to write {folder / 'last.pt'}"
    monkeypatch.undo()
    assert load_checkpoint(folder / "last.pt").epoch == 1  # the previous good file, whole
    assert not [path for path in folder.iterdir() if path.name.endswith(".tmp")]
