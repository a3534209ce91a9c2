"""Image folders and zips: layouts, decoding, resizing and errors."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fakes import pattern_image, write_image_tree, write_png
from PIL import Image

from cnnkit.data import DataError, decode_image, load_dataset, load_image_folder, parallel_decode


def zip_folder(root: Path, destination: Path, with_folder_entries: bool) -> Path:
    with zipfile.ZipFile(destination, "w") as archive:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file():
                archive.write(path, relative)
            elif with_folder_entries:
                archive.writestr(relative + "/", b"")
    return destination


def expected_images(written: dict[str, np.ndarray], prefix: str, classes: list[str]):
    names = sorted(name for name in written if name.startswith(prefix))
    by_class = sorted(names, key=lambda name: classes.index(name[len(prefix) :].split("/")[0]))
    return np.stack([written[name] for name in by_class])


def test_flat_class_layout(tmp_path):
    written = write_image_tree(tmp_path / "set", {"zebra": 2, "ant": 3, "moth/deeper": 1})
    (tmp_path / "set" / "ant" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "set" / ".hidden" / "x.png", pattern_image(6, 4, 99))
    write_png(tmp_path / "set" / "ant" / ".x.png", pattern_image(6, 4, 98))
    splits = load_dataset(tmp_path / "set", progress=False)
    assert splits.test is None
    assert splits.source == f"image folder ({tmp_path / 'set'})"
    assert splits.train.class_names == ["ant", "moth", "zebra"]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert splits.train.images.shape == (6, 4, 6, 3)
    expected = expected_images(written, "", ["ant", "moth", "zebra"])
    np.testing.assert_array_equal(splits.train.images.numpy(), expected)


def test_train_test_layout_matches_classes_by_name(tmp_path):
    write_image_tree(tmp_path / "d", {"train/cat": 2, "train/dog": 2, "train/eel": 1})
    written = write_image_tree(tmp_path / "d", {"test/eel": 1, "test/cat": 1}, seed=50)
    splits = load_dataset(tmp_path / "d", progress=False)
    assert splits.train.class_names == splits.test.class_names == ["cat", "dog", "eel"]
    assert splits.test.labels.tolist() == [0, 2]
    np.testing.assert_array_equal(splits.test.images[1].numpy(), written["test/eel/000.png"])


def test_a_val_folder_is_the_validation_split(tmp_path):
    write_image_tree(tmp_path / "d", {"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1})
    splits = load_dataset(tmp_path / "d", progress=False)
    assert len(splits.train) == 4 and splits.test is None and splits.validation.labels.tolist() == [0, 1]


def test_test_class_unknown_to_train_is_named(tmp_path):
    write_image_tree(tmp_path / "d", {"train/a": 1, "train/b": 1, "test/c": 1})
    with pytest.raises(DataError, match="class folder 'c' that train/ lacks"):
        load_dataset(tmp_path / "d", progress=False)


def test_single_folders_are_descended_into(tmp_path):
    write_image_tree(tmp_path / "outer" / "inner" / "train", {"a": 1, "b": 2})
    (tmp_path / "outer" / "README.txt").write_text("non-images do not stop the descent")
    splits = load_dataset(tmp_path / "outer", progress=False)
    assert splits.train.class_names == ["a", "b"] and splits.test is None


@pytest.mark.parametrize("with_folder_entries", [True, False])
def test_zip_reads_like_the_folder(tmp_path, with_folder_entries):
    write_image_tree(tmp_path / "d" / "train", {"a": 2, "b": 1})
    write_image_tree(tmp_path / "d" / "test", {"a": 1, "b": 1}, seed=20)
    write_png(tmp_path / "d" / "__MACOSX" / "a" / "junk.png", pattern_image(9, 9, 1))
    archive = zip_folder(tmp_path / "d", tmp_path / "d.zip", with_folder_entries)
    from_folder = load_image_folder(tmp_path / "d", progress=False)
    from_zip = load_dataset(archive, progress=False)
    assert from_zip.source == f"image zip ({archive})"
    for left, right in [(from_folder.train, from_zip.train), (from_folder.test, from_zip.test)]:
        assert torch.equal(left.images, right.images)
        assert torch.equal(left.labels, right.labels)
        assert left.class_names == right.class_names


def test_resize_shorter_side_then_center_crop(tmp_path):
    # 30x10: red, green and blue thirds. The center crop keeps only the green square.
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :10, 0] = pixels[:, 10:20, 1] = pixels[:, 20:, 2] = 255
    write_png(tmp_path / "d" / "a" / "wide.png", pixels)
    write_png(tmp_path / "d" / "b" / "small.png", pattern_image(3, 3, 0))
    green = torch.tensor([0, 255, 0], dtype=torch.uint8)
    splits = load_dataset(tmp_path / "d", image_size=10, progress=False)
    assert splits.train.images.shape == (2, 10, 10, 3)
    assert (splits.train.images[0] == green).all()
    # Shrinking too: bilinear blends only the outermost columns with the cropped-off bands.
    shrunk = load_dataset(tmp_path / "d", image_size=5, progress=False).train.images[0]
    assert (shrunk[:, 1:4] == green).all()
    assert (shrunk[:, 0, 0] < 64).all() and (shrunk[:, 4, 2] < 64).all()


def test_different_sizes_without_image_size_name_a_file(tmp_path):
    write_image_tree(tmp_path / "d", {"a": 1}, size=(6, 4))
    write_image_tree(tmp_path / "d", {"b": 1}, size=(8, 8))
    with pytest.raises(DataError, match=r"b/000.png is 8x8 but .*a/000.png is 6x4.*image_size"):
        load_dataset(tmp_path / "d", progress=False)


def test_test_split_of_another_size_is_named(tmp_path):
    write_image_tree(tmp_path / "d", {"train/a": 1})
    write_image_tree(tmp_path / "d", {"test/a": 1}, size=(5, 5))
    with pytest.raises(DataError, match=r"test/a/000\.png is 5x5"):
        load_dataset(tmp_path / "d", progress=False)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root.mkdir(), "holds no images"),
        (lambda root: None, "does not exist"),
        (lambda root: write_png(root / "loose.png", pattern_image(4, 4, 0)), "no class folders"),
    ],
)
def test_unusable_paths_are_data_errors(tmp_path, make, message):
    make(tmp_path / "d")
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "d", progress=False)


def test_unsupported_file_and_bad_zip(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="Unsupported data file"):
        load_dataset(tmp_path / "notes.txt", progress=False)
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(DataError, match=r"broken\.zip is not a readable zip archive"):
        load_dataset(tmp_path / "broken.zip", progress=False)


def test_undecodable_image_is_skipped_and_named(tmp_path):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 1})
    (tmp_path / "d" / "a" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    splits = load_dataset(tmp_path / "d", progress=False)
    assert len(splits.train) == 3
    [skipped] = splits.skipped
    assert skipped.path == str(tmp_path / "d" / "a" / "bad.jpg")
    with pytest.raises(DataError, match=r"d/a/bad\.jpg: cannot .*strict mode"):
        load_dataset(tmp_path / "d", progress=False, strict=True)
    with pytest.raises(DataError, match=r"Cannot decode .*a/bad.jpg as an image"):
        decode_image(b"\xff\xd8 not a jpeg", None, "a/bad.jpg")


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque; the rest fully transparent black
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), None, "t.png")
    assert decoded.tolist() == [[[10, 20, 30], [255] * 3], [[255] * 3, [255] * 3]]


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated a quarter turn: portrait
    buffer = io.BytesIO()
    Image.new("RGB", (8, 4), (200, 0, 0)).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), None, "r.jpg").shape == (8, 4, 3)


def test_grayscale_becomes_rgb():
    buffer = io.BytesIO()
    Image.new("L", (3, 2), 77).save(buffer, format="BMP")
    decoded = decode_image(buffer.getvalue(), 4, "g.bmp")
    assert decoded.shape == (4, 4, 3) and (decoded == 77).all()


def test_parallel_decoding_matches_sequential(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "d", {"a": 40, "b": 30})
    archive = zip_folder(tmp_path / "d", tmp_path / "d.zip", with_folder_entries=False)
    sequential = load_image_folder(archive, workers=1, progress=False)
    monkeypatch.setattr(parallel_decode, "PARALLEL_THRESHOLD", 0)
    monkeypatch.setattr(parallel_decode, "_CHUNK_RANGE", (8, 8))
    parallel = load_image_folder(archive, workers=2, progress=False)
    assert torch.equal(sequential.train.images, parallel.train.images)
    # A file failing inside a worker process is skipped there; strict raises it in the caller.
    (tmp_path / "d" / "b" / "zz.png").write_bytes(b"broken")
    skipping = load_image_folder(tmp_path / "d", workers=2, progress=False)
    assert torch.equal(skipping.train.images, sequential.train.images)
    assert [file.path for file in skipping.skipped] == [str(tmp_path / "d" / "b" / "zz.png")]
    with pytest.raises(DataError, match=r"b/zz\.png: cannot decode \(unknown image format\); strict"):
        load_image_folder(tmp_path / "d", workers=2, progress=False, strict=True)


def test_progress_reports_decode_time(tmp_path, capsys):
    write_image_tree(tmp_path / "d", {"a": 1, "b": 1})
    load_dataset(tmp_path / "d", workers=1)
    assert "Decoded 2 images (144 bytes as uint8) from" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"image_size": 0},
            "image_size must be a positive integer or None. Received: image_size=0",
        ),
        ({"workers": 0}, "workers must be a positive integer or None. Received: workers=0"),
        ({"source": 3}, "source must be a string, a path or None. Received: source=3"),
    ],
)
def test_invalid_arguments_are_named(tmp_path, arguments, message):
    arguments = {"source": tmp_path, **arguments}
    with pytest.raises(ValueError, match=message):
        load_dataset(**arguments)


def test_train_val_test_folders_are_three_splits(tmp_path):
    tree = {"train/a": 3, "train/b": 3, "valid/a": 1, "valid/b": 2, "test/a": 2, "test/b": 1}
    write_image_tree(tmp_path / "d", tree)
    splits = load_dataset(tmp_path / "d", progress=False)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (6, 3, 3)
    assert splits.validation.labels.tolist() == [0, 1, 1] and splits.test.labels.tolist() == [0, 0, 1]
    assert splits.folders == {
        "train": f"{tmp_path / 'd' / 'train'}/",
        "validation": f"{tmp_path / 'd' / 'valid'}/",
        "test": f"{tmp_path / 'd' / 'test'}/",
    }
    again = load_dataset(tmp_path / "d", progress=False)  # from the cache: the same three splits
    assert torch.equal(again.validation.images, splits.validation.images) and again.folders == splits.folders
