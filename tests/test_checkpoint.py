import os
import pickle

import pytest
import torch

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import CLASS_NAMES, make_quadrant_images


@pytest.fixture
def trained():
    images, labels = make_quadrant_images(64)
    classifier = Classifier(
        "tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu", precision="fp32"
    )
    classifier.fit(images, labels, epochs=1, verbose=False)
    return classifier, images


def test_round_trip_needs_nothing_but_the_file(trained, tmp_path):
    classifier, images = trained
    path = tmp_path / "model.pt"
    classifier.save(path)
    restored = Classifier.load(path, device="cpu", precision="fp32")
    assert restored.class_names == CLASS_NAMES and restored.image_size == 16
    assert restored.model_name == "tutorial"
    assert torch.equal(
        torch.from_numpy(restored.predict(images)), torch.from_numpy(classifier.predict(images))
    )
    checkpoint = load_checkpoint(path)
    assert checkpoint.epoch == 1 and "loss" in checkpoint.metrics["train"]
    assert checkpoint.normalization.mean == (0.0, 0.0, 0.0)
    assert checkpoint.recipe.batch_size == 32


def test_checkpoint_holds_only_plain_data(trained, tmp_path):
    classifier, _ = trained
    classifier.save(tmp_path / "model.pt")
    contents = torch.load(tmp_path / "model.pt", weights_only=True)  # raises on anything but plain data
    assert contents["format"] == "cnnkit-checkpoint"
    assert contents["model_arguments"] == {"num_classes": 4, "image_size": 16}


def test_a_failed_write_leaves_the_previous_checkpoint_intact(trained, tmp_path, monkeypatch):
    classifier, _ = trained
    path = tmp_path / "model.pt"
    classifier.save(path)
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        classifier.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary file left behind


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the crafted file's own protocol
def test_a_crafted_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as file:
        pickle.dump({"format": "cnnkit-checkpoint", "payload": RunsCode()}, file)
    with pytest.raises(ValueError, match=r"Cannot read evil\.pt as a cnnkit checkpoint: it holds objects"):
        load_checkpoint("evil.pt")
    assert not (tmp_path / "pwned_marker").exists()


def test_other_files_are_refused_clearly(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="is not a cnnkit checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="it is not a PyTorch checkpoint file"):
        load_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_checkpoint_returns_the_path(trained, tmp_path):
    classifier, _ = trained
    assert save_checkpoint(tmp_path / "x.pt", classifier.to_checkpoint()) == tmp_path / "x.pt"
