"""A messy photo folder (every format, broken and stray files), loaded as a folder and as a zip."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from messy_files import (
    animated_gif,
    cmyk_jpeg_without_adobe_marker,
    encode,
    exif_rotated_jpeg,
    float_tiff,
    palette_png,
    photo,
    random_bytes,
    sixteen_bit,
    truncated,
)
from PIL import Image

from cnnkit.data import (
    DataError,
    SkippedFile,
    load_dataset,
    load_image_folder,
    parallel_decode,
    split_train_val,
)
from cnnkit.data import sources as sources_module

SIZE = 16

# Every file of the messy folder that must decode, by class.
GOOD_FILES = {
    "cats/a.jpg": lambda: photo(40, 30, seed=1),
    "cats/b.png": lambda: palette_png(transparent=True),
    "cats/c.gif": animated_gif,
    "cats/d.bmp": lambda: encode(Image.new("L", (20, 20), 77), "BMP"),
    "cats/e.webp": lambda: encode(Image.new("RGB", (20, 20), (10, 200, 30)), "WEBP", lossless=True),
    "cats/f.tiff": lambda: sixteen_bit([[65535] * 20] * 20, "TIFF", "I;16B"),
    "cats/g.TIF": lambda: encode(Image.new("CMYK", (20, 20), (255, 0, 0, 0)), "TIFF"),
    "cats/h.jpeg": lambda: encode(Image.new("CMYK", (20, 20), (255, 0, 0, 0)), "JPEG"),
    "cats/i.png": lambda: encode(Image.new("LA", (20, 20), (50, 255)), "PNG"),
    "dogs/p.JPG": exif_rotated_jpeg,
    "dogs/q.png": lambda: sixteen_bit([[32768] * 20] * 20),
    "dogs/r.tif": lambda: float_tiff([[0.5] * 20] * 20),
    "dogs/s.tif": lambda: encode(Image.new("YCbCr", (20, 20), (76, 85, 255)), "TIFF"),
    "dogs/t.tif": lambda: encode(Image.new("LAB", (20, 20), (255, 128, 128)), "TIFF"),
    "dogs/u.png": lambda: encode(Image.new("1", (20, 20), 1), "PNG"),
    "dogs/v.jpg": lambda: cmyk_jpeg_without_adobe_marker((255, 0, 0, 0), (20, 20)),
    "dogs/sub/w.png": lambda: photo(300, 200, seed=2, format="PNG"),
}
# Every other file, and the reason it is skipped (a regular expression).
BAD_FILES = {
    "cats/notes.txt": (b"hello", r"not an image file \(\.txt\)"),
    "cats/empty.jpg": (b"", r"empty file \(0 bytes\)"),
    "cats/noise.png": (random_bytes(300), r"cannot decode \(unknown image format\)"),
    "cats/cut.jpg": (truncated(photo(64, 64)), r"cannot decode \(OSError: .*[Tt]runcated"),
    "dogs/cut.png": (truncated(photo(64, 64, format="PNG")), r"cannot decode \(OSError: .*truncated"),
    "dogs/IMG_0001.HEIC": (b"....ftypheic", r"unsupported image format \(\.heic\); convert"),
    "dogs/README": (b"x", r"not an image file \(no extension\)"),
    "cats/.DS_Store": (b"\0\0\0\1Bud1", "hidden file"),
    "cats/._a.jpg": (b"\0\5\26\7 resource fork", "hidden file"),
    "dogs/Thumbs.db": (random_bytes(64), r"system file \(Thumbs\.db\)"),
    "dogs/desktop.ini": (b"[.ShellClassInfo]", r"system file \(desktop\.ini\)"),
    ".thumbnails/x.png": (b"never read", "hidden folder"),
    "__MACOSX/cats/._a.jpg": (b"never read", r"system folder \(__MACOSX\)"),
    "stray.png": (encode(Image.new("RGB", (4, 4)), "PNG"), "image outside the class folders"),
}
# What a load reports, sorted by path: a skipped folder is one entry.
FOLDED = {".thumbnails/x.png": ".thumbnails/", "__MACOSX/cats/._a.jpg": "__MACOSX/"}
SKIPPED = sorted((FOLDED.get(name, name), reason) for name, (_, reason) in BAD_FILES.items())
OS_CLUTTER = ["cats/.DS_Store", "cats/._a.jpg", "dogs/Thumbs.db", "dogs/desktop.ini", *FOLDED]


def write_messy_folder(root: Path) -> Path:
    for name, make in GOOD_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(make())
    for name, (content, _) in BAD_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def zip_of(root: Path, destination: Path) -> Path:
    with zipfile.ZipFile(destination, "w") as archive:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            archive.writestr(
                relative + "/" if path.is_dir() else relative, b"" if path.is_dir() else path.read_bytes()
            )
    return destination


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    return write_messy_folder(tmp_path / "photos")


def expected_names() -> list[str]:
    return sorted(name for name in GOOD_FILES if name.startswith("cats/")) + sorted(
        name for name in GOOD_FILES if name.startswith("dogs/")
    )


def assert_skipped(skipped: list[SkippedFile], display) -> None:
    assert [file.path for file in skipped] == [display(name) for name, _ in SKIPPED]
    for file, (name, reason) in zip(skipped, SKIPPED, strict=True):
        assert _matches(reason, file.reason), f"{name}: {file.reason!r} does not match {reason!r}"


def _matches(pattern: str, text: str) -> bool:
    import re

    return re.fullmatch(f"{pattern}.*", text) is not None


def test_messy_folder_decodes_the_good_files_and_lists_the_rest(messy):
    splits = load_image_folder(messy, image_size=SIZE, workers=1, progress=False)
    train = splits.train
    assert train.class_names == ["cats", "dogs"]
    assert train.names == expected_names()
    assert train.labels.tolist() == [0 if name.startswith("cats/") else 1 for name in train.names]
    assert train.images.shape == (len(GOOD_FILES), SIZE, SIZE, 3)
    assert_skipped(splits.skipped, lambda name: str(messy / name) + ("/" if name.endswith("/") else ""))
    assert splits.file_count == len(GOOD_FILES) + len(SKIPPED)
    pixels = {name: train.images[index] for index, name in enumerate(train.names)}
    centre = {name: image[SIZE // 2, SIZE // 2].tolist() for name, image in pixels.items()}
    assert centre["cats/f.tiff"] == [255, 255, 255]  # 16-bit white
    assert centre["dogs/q.png"] == [128, 128, 128]  # 16-bit half grey
    assert centre["dogs/r.tif"] == [128, 128, 128]  # float 0.5
    assert centre["cats/g.TIF"] == [0, 255, 255]  # CMYK cyan
    assert np.abs(np.array(centre["dogs/v.jpg"]) - [0, 255, 255]).max() <= 3  # plain CMYK JPEG cyan
    assert centre["cats/i.png"] == [50, 50, 50] and centre["dogs/u.png"] == [255, 255, 255]
    # The EXIF-rotated 8x4 photo became a portrait before its centre square was cropped.
    rotated = pixels["dogs/p.JPG"].int()
    assert rotated[0, :, 0].min() > 200 and rotated[-1, :, 2].min() > 200


def test_messy_zip_reads_like_the_folder(messy, tmp_path):
    archive = zip_of(messy, tmp_path / "photos.zip")
    from_folder = load_image_folder(messy, image_size=SIZE, workers=1, progress=False)
    from_zip = load_dataset(archive, image_size=SIZE, workers=1, progress=False)
    assert from_zip.train.names == from_folder.train.names
    assert torch.equal(from_zip.train.images, from_folder.train.images)
    assert_skipped(from_zip.skipped, lambda name: f"{name} in {archive}")


def test_parallel_decoding_skips_the_same_files(messy, monkeypatch):
    sequential = load_image_folder(messy, image_size=SIZE, workers=1, progress=False)
    monkeypatch.setattr(parallel_decode, "PARALLEL_THRESHOLD", 0)
    monkeypatch.setattr(parallel_decode, "_CHUNK_RANGE", (3, 3))
    parallel = load_image_folder(messy, image_size=SIZE, workers=2, progress=False)
    assert torch.equal(parallel.train.images, sequential.train.images)
    assert torch.equal(parallel.train.labels, sequential.train.labels)
    assert parallel.train.names == sequential.train.names
    assert parallel.skipped == sequential.skipped


@pytest.mark.parametrize("workers", [1, 2])
def test_failures_anywhere_keep_images_labels_and_names_aligned(tmp_path, monkeypatch, workers):
    # Without image_size the first decodable image sets the shape, so start with failures.
    monkeypatch.setattr(parallel_decode, "PARALLEL_THRESHOLD", 0)
    monkeypatch.setattr(parallel_decode, "_CHUNK_RANGE", (4, 4))
    expected = {}
    for index in range(23):
        name = f"{'ab'[index % 2]}/{index:02d}.png"
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        if index in (0, 1, 2, 7, 8, 9, 10, 22):
            (tmp_path / "d" / name).write_bytes(random_bytes(50, seed=index))
        else:
            pixels = np.full((3, 5, 3), index, np.uint8)
            (tmp_path / "d" / name).write_bytes(encode(Image.fromarray(pixels), "PNG"))
            expected[name] = index
    splits = load_image_folder(tmp_path / "d", workers=workers, progress=False)
    names = sorted(expected, key=lambda name: (name[0], name))
    assert splits.train.names == names
    assert splits.train.images[:, 0, 0, 0].tolist() == [expected[name] for name in names]
    assert splits.train.labels.tolist() == [0 if name[0] == "a" else 1 for name in names]
    assert len(splits.skipped) == 8


def test_strict_stops_at_the_first_real_problem(messy):
    with pytest.raises(DataError, match=r"photos/cats/notes\.txt: not an image file \(\.txt\); strict mode"):
        load_image_folder(messy, image_size=SIZE, progress=False, strict=True)


def test_strict_stops_at_a_broken_image_but_not_at_os_clutter(tmp_path, monkeypatch):
    for name in ("a/1.png", "a/2.png", "b/1.png"):
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_bytes(photo(8, 8, format="PNG"))
    for name in OS_CLUTTER:
        target = tmp_path / "d" / name.replace("cats/", "a/").replace("dogs/", "b/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(BAD_FILES[name][0])
    clean = load_image_folder(tmp_path / "d", progress=False, strict=True)
    assert len(clean.train) == 3 and all(file.is_os_clutter for file in clean.skipped)
    (tmp_path / "d" / "b" / "2.jpg").write_bytes(truncated(photo(64, 64)))
    with pytest.raises(DataError, match=r"d/b/2\.jpg: cannot decode \(OSError: .*runcated.*strict mode"):
        load_image_folder(tmp_path / "d", progress=False, strict=True)
    monkeypatch.setattr(parallel_decode, "PARALLEL_THRESHOLD", 0)
    with pytest.raises(DataError, match=r"d/b/2\.jpg: cannot decode"):
        load_image_folder(tmp_path / "d", progress=False, strict=True, workers=2)


def test_cache_hit_reports_the_same_skipped_files_and_names(messy, tmp_path, monkeypatch, capsys):
    first = load_dataset(messy, image_size=SIZE, progress=False)

    def fail(*arguments: object, **keywords: object) -> None:
        raise AssertionError("decoded again although the cache should have been used")

    monkeypatch.setattr(sources_module, "decode_source", fail)
    second = load_dataset(messy, image_size=SIZE)
    err = capsys.readouterr().err
    assert "from cache" in err and f"Skipped {len(SKIPPED)} of {first.file_count} files" in err
    assert second.skipped == first.skipped and second.train.names == first.train.names
    assert torch.equal(second.train.images, first.train.images)
    # Strict refuses the same files from the cache as it would while decoding.
    with pytest.raises(DataError, match=r"cats/notes\.txt: not an image file"):
        load_dataset(messy, image_size=SIZE, progress=False, strict=True)
    # A moved folder (same names, sizes and times) hits the cache and names its new place.
    moved = shutil.copytree(messy, tmp_path / "moved", copy_function=shutil.copy2)
    third = load_dataset(moved, image_size=SIZE, progress=False)
    assert [file.path for file in third.skipped] == [
        file.path.replace(str(messy), str(moved)) for file in first.skipped
    ]


def test_decoding_reports_size_and_skipped_summary(messy, capsys):
    load_image_folder(messy, image_size=SIZE, workers=1)
    err = capsys.readouterr().err
    size = len(GOOD_FILES) * SIZE * SIZE * 3 / 1024
    assert f"Decoded {len(GOOD_FILES)} images ({size:.1f} KiB as uint8) from {messy} in " in err
    assert (
        f"Skipped {len(SKIPPED)} of {len(GOOD_FILES) + len(SKIPPED)} files (2 not images, "
        "1 unsupported format, 4 unreadable, 6 hidden, 1 outside the class folders)"
    ) in err


def test_train_test_split_keeps_names_and_lists_test_failures(tmp_path):
    for name in ("train/a/1.png", "train/a/2.png", "train/b/1.png", "test/a/1.png", "test/b/ok.png"):
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_bytes(photo(8, 8, format="PNG"))
    (tmp_path / "d" / "test" / "b" / "bad.png").write_bytes(b"")
    splits = load_dataset(tmp_path / "d", progress=False)
    assert splits.test.names == ["test/a/1.png", "test/b/ok.png"]
    assert splits.skipped == [SkippedFile(str(tmp_path / "d" / "test/b/bad.png"), "empty file (0 bytes)")]
    train, val = split_train_val(splits.train, 0.34, seed=0)
    assert sorted(train.names + val.names) == ["train/a/1.png", "train/a/2.png", "train/b/1.png"]
    for part in (train, val):
        for image, name in zip(part.images, part.names, strict=True):
            assert torch.equal(image, splits.train.images[splits.train.names.index(name)])
