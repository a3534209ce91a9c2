"""Reporting skipped files, the errors that do stop a load, and per-image names."""

from __future__ import annotations

import zipfile

import pytest
import torch
from messy_files import photo, random_bytes

from cnnkit.data import (
    DataError,
    ImageData,
    SkippedFile,
    check_trainable,
    load_dataset,
    load_image_folder,
    skipped_summary,
    split_train_val,
    write_skipped_list,
)


def write(root, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def image_data(labels: list[int], class_names: list[str], names: list[str] | None = None) -> ImageData:
    images = torch.zeros((len(labels), 2, 2, 3), dtype=torch.uint8)
    return ImageData(images, torch.tensor(labels, dtype=torch.int64), class_names, names)


SKIPPED = [
    SkippedFile("d/a/notes.txt", "not an image file (.txt)"),
    SkippedFile("d/a/x.txt", "not an image file (.txt)"),
    SkippedFile("d/b/cut.jpg", "cannot decode (OSError: image file is truncated)"),
    SkippedFile("d/.DS_Store", "hidden file"),
    SkippedFile("d/__MACOSX/", "system folder (__MACOSX)"),
    SkippedFile("d/a/b.heic", "unsupported image format (.heic); convert it to JPEG or PNG"),
]


def test_skipped_summary_counts_by_category():
    assert skipped_summary(SKIPPED[:4], 1204, "runs/train/skipped.txt") == (
        "Skipped 4 of 1,204 files (2 not images, 1 unreadable, 1 hidden); list in runs/train/skipped.txt"
    )
    assert skipped_summary(SKIPPED[2:], 4) == (
        "Skipped 4 of 4 files (1 unsupported format, 1 unreadable, 2 hidden)"
    )
    assert skipped_summary([], 1) == "Skipped 0 of 1 file"
    with pytest.raises(
        ValueError, match=r"total must be an integer of at least len\(skipped\)=6. Received: total=2"
    ):
        skipped_summary(SKIPPED, 2)


def test_categories_and_clutter():
    assert [file.category for file in SKIPPED] == [
        "not image",
        "not image",
        "unreadable",
        "hidden",
        "hidden",
        "unsupported",
    ]
    assert [file.is_os_clutter for file in SKIPPED] == [False, False, False, True, True, False]


def test_write_skipped_list_is_one_line_a_file(tmp_path):
    target = tmp_path / "runs" / "train" / "skipped.txt"
    odd = SkippedFile("d/a/tab\there\nnew \udcff.jpg", "cannot decode (x)")
    write_skipped_list(target, [*SKIPPED[:2], odd])
    lines = target.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# 3 skipped files: path<TAB>reason"
    assert lines[1] == "d/a/notes.txt\tnot an image file (.txt)"
    assert lines[3] == "d/a/tab\\there\\nnew \\udcff.jpg\tcannot decode (x)"
    assert len(lines) == 4 and not list(target.parent.glob(".*.tmp"))


def test_check_trainable_needs_two_classes_with_images():
    check_trainable(image_data([0, 1], ["cats", "dogs"]))
    with pytest.raises(
        DataError, match=r"^The training data has 1 class \(cats\); training needs at least two"
    ):
        check_trainable(image_data([0, 0], ["cats"]))
    with pytest.raises(DataError, match=r"^image folder \(d\) has images of 1 of its 3 classes \(dogs\)"):
        check_trainable(image_data([1], ["cats", "dogs", "eels"]), "image folder (d)")


def test_a_one_class_folder_loads_for_evaluation(tmp_path):
    write(tmp_path / "d", {"cats/1.png": photo(8, 8, format="PNG")})
    splits = load_dataset(tmp_path / "d", progress=False)
    assert splits.train.class_names == ["cats"]
    with pytest.raises(DataError, match=r"has 1 class \(cats\); training needs at least two class folders"):
        check_trainable(splits.train, splits.source)


def test_names_are_validated_and_follow_subsets():
    data = image_data([0, 1, 0], ["a", "b"], ["a/1.png", "b/1.png", "a/2.png"])
    assert data.subset(torch.tensor([2, 0])).names == ["a/2.png", "a/1.png"]
    assert image_data([0], ["a"]).subset(torch.tensor([0])).names is None
    with pytest.raises(
        ValueError, match=r"names must hold one name per image or be None. Received: len\(names\)=1"
    ):
        image_data([0, 1], ["a", "b"], ["a/1.png"])
    with pytest.raises(ValueError, match="names must be a list of strings or None"):
        image_data([0], ["a"], "a/1.png")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"a/1.png": photo(8, 8, format="PNG"), "docs/readme.txt": b"hi"},
            r"Class folder .*/d/docs holds no image files \(only files like docs/readme\.txt\); add images",
        ),
        (
            {"a/1.png": photo(8, 8, format="PNG"), "b/.DS_Store": b"x", "b/Thumbs.db": b"x"},
            r"Class folder .*/d/b holds no image files",
        ),
        (
            {"a/1.png": photo(8, 8, format="PNG"), "b/1.jpg": b"", "b/2.png": random_bytes(40)},
            r"Class folder .*/d/b/ has no usable image: all 2 of its image files failed to decode "
            r"\(b/1\.jpg: empty file \(0 bytes\)\); replace them or remove the folder",
        ),
        (
            {"train/a/1.png": photo(8, 8, format="PNG"), "test/a/1.png": b""},
            r"Class folder .*/d/test/a/ has no usable image",
        ),
        ({"notes.txt": b"x", "a/b.doc": b"x"}, r".*/d holds no images; found only other files, like"),
        ({".DS_Store": b"x"}, r".*/d holds no images; found only other files, like \.DS_Store"),
        ({}, r".*/d holds no images \(expected DIR/<class>/<image>.*images are files ending in \.jpg"),
    ],
)
def test_stop_errors_name_the_folder(tmp_path, files, message):
    (tmp_path / "d").mkdir()
    write(tmp_path / "d", files)
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path / "d", progress=False)


def test_missing_path_and_split_without_training_image(tmp_path):
    with pytest.raises(DataError, match=r"Data source .*/missing does not exist; expected 'cifar10'"):
        load_dataset(tmp_path / "missing", progress=False)
    with pytest.raises(DataError, match=r"missing does not exist; expected an image folder or a \.zip"):
        load_image_folder(tmp_path / "missing", progress=False)
    # A class that lost all but one image to skipping keeps it for training...
    write(tmp_path / "d", {"a/1.png": photo(8, 8, format="PNG"), "a/2.png": photo(8, 8, format="PNG")})
    write(tmp_path / "d", {"b/1.png": photo(8, 8, format="PNG"), "b/2.png": b"broken"})
    train, val = split_train_val(load_dataset(tmp_path / "d", progress=False).train, 0.5, seed=0)
    assert train.names[1:] == ["b/1.png"] and len(val.names) == 1 and val.names[0].startswith("a/")
    # ...and one without images (possible in arrays, not folders) is named.
    with pytest.raises(
        DataError, match=r"Class 'c' has 0 images: a validation split would leave it no training"
    ):
        split_train_val(image_data([0, 1, 0, 1], ["a", "b", "c"]), 0.5, seed=0)


def test_unreadable_files_are_skipped_in_folders_and_zips(tmp_path):
    good = photo(8, 8, format="PNG")
    write(tmp_path / "d", {"a/1.png": good, "b/1.png": good})
    (tmp_path / "d" / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    splits = load_image_folder(tmp_path / "d", progress=False)
    assert [(file.path, file.reason) for file in splits.skipped] == [
        (str(tmp_path / "d" / "a" / "gone.jpg"), "cannot read (No such file or directory)")
    ]
    # A member whose bytes no longer match its CRC: the zip reader refuses that member only.
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as writer:
        writer.writestr("a/1.png", good)
        writer.writestr("b/1.png", good)
        writer.writestr("b/2.png", good[:20] + b"X" + good[21:])
    content = archive.read_bytes()
    start = content.index(good[:20] + b"X")  # stored uncompressed: flip one byte of its data
    archive.write_bytes(content[: start + 30] + bytes([content[start + 30] ^ 0xFF]) + content[start + 31 :])
    splits = load_dataset(archive, progress=False)
    [skipped] = splits.skipped
    assert skipped.path == f"b/2.png in {archive}"
    assert skipped.reason.startswith("cannot read (BadZipFile: Bad CRC")
    assert splits.train.names == ["a/1.png", "b/1.png"]
