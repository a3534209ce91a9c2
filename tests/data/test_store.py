"""The decoded-image store (issue 12): exact round trips, interrupted and concurrent builds, and
batches read from disk that equal the in-memory tensor's."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fakes import write_image_tree

from cnnkit.data import load_dataset, load_image_folder, split_train_val
from cnnkit.data import parallel_decode as parallel_decode_module
from cnnkit.data import sources as sources_module
from cnnkit.data import store as store_module
from cnnkit.data.store import META_FILE, open_store
from cnnkit.data.stored_images import StoredImages
from cnnkit.fileio import DiskFullError

LAYOUT = {"train/a": 5, "train/b": 4, "val/a": 2, "val/b": 2, "test/a": 2, "test/b": 1}


def stores(home: Path) -> list[Path]:
    return sorted(
        path for path in (home / "cache").glob("*-*") if path.is_dir() and ".partial-" not in path.name
    )


def partials(home: Path) -> list[Path]:
    return sorted((home / "cache").glob("*.partial-*"))


def messy_tree(root: Path) -> None:
    write_image_tree(root, LAYOUT)
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def assert_same_split(stored, expected) -> None:
    assert torch.equal(stored.images[torch.arange(len(stored))], expected.images)
    assert torch.equal(stored.labels, expected.labels)
    assert stored.names == expected.names and stored.class_names == expected.class_names


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_store_round_trips_exactly(tmp_path, isolated_home, in_memory):
    messy_tree(tmp_path / "d")
    expected = load_image_folder(tmp_path / "d", progress=False)  # decoded without a store
    load_dataset(tmp_path / "d", progress=False)  # builds the store
    loaded = load_dataset(tmp_path / "d", progress=False, in_memory=in_memory)  # reads it back
    assert isinstance(loaded.train.images, torch.Tensor if in_memory else StoredImages)
    for name in ("train", "validation", "test"):
        assert_same_split(getattr(loaded, name), getattr(expected, name))
    assert loaded.skipped == expected.skipped and len(loaded.skipped) == 2
    assert loaded.folders == expected.folders
    [store] = stores(isolated_home)
    assert sorted(path.name for path in store.iterdir()) == [
        "images.npy",
        "labels.npy",
        META_FILE,
        "names.bin",
    ]
    pixels = np.load(store / "images.npy", mmap_mode="r")  # a plain .npy: numpy reads it too
    assert pixels.shape == (16, 4, 6, 3) and not partials(isolated_home)


def test_a_cifar_store_round_trips_without_names(fake_cifar, isolated_home):
    first = load_dataset(fake_cifar.archive, progress=False)
    again = load_dataset(fake_cifar.archive, progress=False, in_memory=False)
    assert_same_split(again.train, first.train)
    assert_same_split(again.test, first.test)
    assert again.train.names is None and again.validation is None


def test_an_interrupted_decode_leaves_no_store_and_the_next_load_rebuilds_it(
    tmp_path, isolated_home, monkeypatch
):
    write_image_tree(tmp_path / "d", {"a": 30, "b": 30})
    original = parallel_decode_module._decode_one
    calls = []

    def interrupted(*arguments, **keywords):
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt  # Ctrl-C in the middle of decoding
        return original(*arguments, **keywords)

    monkeypatch.setattr(parallel_decode_module, "_decode_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(tmp_path / "d", progress=False, workers=1)
    assert stores(isolated_home) == [] and partials(isolated_home) == []
    monkeypatch.setattr(parallel_decode_module, "_decode_one", original)
    rebuilt = load_dataset(tmp_path / "d", progress=False, in_memory=False)
    assert torch.equal(
        rebuilt.train.images[torch.arange(60)], load_image_folder(tmp_path / "d", progress=False).train.images
    )


def test_a_killed_build_is_never_read_and_its_leftovers_are_removed(
    tmp_path, isolated_home, monkeypatch, capsys
):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    load_dataset(tmp_path / "d", progress=False)
    [store] = stores(isolated_home)
    # What a SIGKILL mid-build leaves: a partial folder (here even with every file in it).
    leftover = store.with_name(f"{store.name}.partial-99999-dead")
    store.rename(leftover)
    decoded = []
    original = sources_module.decode_source
    monkeypatch.setattr(
        sources_module, "decode_source", lambda *a, **k: decoded.append(1) or original(*a, **k)
    )
    load_dataset(tmp_path / "d", progress=False)
    assert decoded == [1]  # the partial folder was not taken for a store
    assert stores(isolated_home) == [store] and partials(isolated_home) == []


def test_a_damaged_store_is_reported_and_rebuilt(tmp_path, isolated_home, capsys):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    first = load_dataset(tmp_path / "d", progress=False)
    [store] = stores(isolated_home)
    images = store / "images.npy"
    images.write_bytes(images.read_bytes()[:-10])  # cut short after it was written
    second = load_dataset(tmp_path / "d", progress=False)
    assert "is damaged (images.npy is 406 bytes, expected 416); rebuilding it" in capsys.readouterr().err
    assert torch.equal(first.train.images, second.train.images)
    assert open_store(store) is not None and partials(isolated_home) == []


def test_a_second_load_reads_the_store_without_decoding(tmp_path, isolated_home, monkeypatch, capsys):
    write_image_tree(tmp_path / "d", {"a": 3, "b": 3})
    first = load_dataset(tmp_path / "d", progress=False)

    def fail(*arguments, **keywords):
        raise AssertionError("decoded again although the store should have been read")

    monkeypatch.setattr(sources_module, "decode_source", fail)
    stored = load_dataset(tmp_path / "d", in_memory=False)
    assert "Mapped 6 decoded images" in capsys.readouterr().err
    assert torch.equal(stored.train.images[:], first.train.images)


# Two processes load the same new source at once (each starts once both are ready); decoding is
# slowed so that they overlap.
_CONCURRENT_LOAD = """
import hashlib, os, sys, time
from pathlib import Path
from cnnkit.data import load_dataset
from cnnkit.data import sources
decode = sources.decode_source
def slow_decode(*arguments, **keywords):
    print("decode_source called", file=sys.stderr, flush=True)
    time.sleep(1)
    return decode(*arguments, **keywords)
sources.decode_source = slow_decode
ready = Path(sys.argv[2])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:
    time.sleep(0.01)
splits = load_dataset(sys.argv[1], workers=1, in_memory=False)
digest = hashlib.sha256(splits.train.images[:].numpy().tobytes() + splits.train.labels.numpy().tobytes())
print(digest.hexdigest())
"""


def test_two_processes_loading_one_new_source_end_with_one_valid_store(tmp_path, isolated_home):
    write_image_tree(tmp_path / "d", {"a": 20, "b": 20})
    (tmp_path / "ready").mkdir()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_LOAD, str(tmp_path / "d"), str(tmp_path / "ready")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for _ in range(2)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], results
    digests = {stdout.strip() for stdout, _ in results}
    errors = "".join(stderr for _, stderr in results)
    assert len(digests) == 1
    assert errors.count("decode_source called") == 1 and "waiting for it to finish" in errors
    assert len(stores(isolated_home)) == 1 and partials(isolated_home) == []
    expected = load_image_folder(tmp_path / "d", progress=False).train
    assert torch.equal(load_dataset(tmp_path / "d", progress=False).train.images, expected.images)


def test_batches_read_from_the_store_equal_the_in_memory_tensor(tmp_path):
    write_image_tree(tmp_path / "d", {"a": 7, "b": 6, "c": 5}, size=(9, 7))
    memory = load_dataset(tmp_path / "d", progress=False, in_memory=True).train
    disk = load_dataset(tmp_path / "d", progress=False, in_memory=False).train
    assert disk.images.shape == memory.images.shape and len(disk.images) == 18
    assert disk.images.numel() == memory.images.numel() and disk.images.dtype == torch.uint8
    generator = torch.Generator().manual_seed(0)
    keys = [
        torch.randperm(18, generator=generator)[:8],  # a shuffled batch
        torch.tensor([3, 3, 0, 17]),  # repeats
        np.array([-1, 5]),
        [2, 1],
        slice(4, 11),
        slice(None, None, 5),
        slice(10, 10),
    ]
    for key in keys:
        assert torch.equal(disk.images[key], memory.images[key]), key
    assert torch.equal(disk.images[-2], memory.images[-2])
    assert torch.equal(disk.images[torch.tensor(4)], memory.images[4])
    # Views: rows and crops, as splits and evaluation take them, read nothing until indexed.
    train_disk, val_disk = split_train_val(disk, 0.3, seed=1)
    train_memory, val_memory = split_train_val(memory, 0.3, seed=1)
    assert isinstance(val_disk.images, StoredImages)
    assert torch.equal(val_disk.images[:], val_memory.images)
    assert torch.equal(train_disk.images[torch.tensor([0, 9])], train_memory.images[[0, 9]])
    crop = train_disk.images.subset(slice(2, 9)).crop(1, 2, 5, 4)
    assert crop.shape == (7, 5, 4, 3)
    assert torch.equal(crop[:], train_memory.images[2:9, 1:6, 2:6])
    assert torch.equal(pickle.loads(pickle.dumps(crop))[[6, 0]], train_memory.images[[8, 2], 1:6, 2:6])


def test_stored_images_refuse_what_a_tensor_index_would_not_mean(tmp_path):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    images = load_dataset(tmp_path / "d", progress=False, in_memory=False).train.images
    with pytest.raises(IndexError):
        images[4]
    with pytest.raises(IndexError):
        images[torch.tensor([0, 4])]
    with pytest.raises(TypeError):
        images[torch.tensor([True, False, True, False])]
    with pytest.raises(ValueError, match="Cannot crop"):
        images.crop(0, 0, 5, 6)


def test_the_in_memory_limit_decides_by_size(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})  # 4 images of 6x4: 288 bytes
    monkeypatch.setenv("CNNKIT_IN_MEMORY_MB", str(287 / 2**20))
    assert isinstance(load_dataset(tmp_path / "d", progress=False).train.images, StoredImages)
    monkeypatch.setenv("CNNKIT_IN_MEMORY_MB", str(288 / 2**20))
    assert isinstance(load_dataset(tmp_path / "d", progress=False).train.images, torch.Tensor)


def test_decoding_says_the_size_and_place_of_the_store_first(tmp_path, isolated_home, capsys):
    write_image_tree(tmp_path / "d", {"a": 3, "b": 2}, size=(8, 8))
    load_dataset(tmp_path / "d", image_size=4, workers=1)
    [store] = stores(isolated_home)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"Decoding 5 images into a 368 bytes store at {store}"  # 128-byte header + 5 x 48
    assert "images/s" in lines[-2]  # the progress bar's last line, before "Decoded ..."


def test_a_full_disk_is_one_clear_line_and_leaves_nothing(tmp_path, isolated_home, monkeypatch):
    write_image_tree(tmp_path / "d", {"a": 3, "b": 3})

    def no_space(*arguments):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)  # the space reserved before decoding
    with pytest.raises(DiskFullError, match=r"No space left for the data store of 560 bytes at .* free\)"):
        load_dataset(tmp_path / "d", progress=False)
    assert stores(isolated_home) == [] and partials(isolated_home) == []
    monkeypatch.undo()
    monkeypatch.setenv("CNNKIT_HOME", str(isolated_home))
    written = []

    def full_after_one(self, images):  # a disk that fills up while decoding
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(images))

    monkeypatch.setattr(store_module.StoreWriter, "append", full_after_one)
    with pytest.raises(DiskFullError) as raised:
        load_dataset(tmp_path / "d", progress=False, workers=1)
    assert "\n" not in str(raised.value)
    assert stores(isolated_home) == [] and partials(isolated_home) == []


def test_an_unwritable_cache_decodes_into_memory(tmp_path, isolated_home, monkeypatch, capsys):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})

    def read_only(*arguments):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store_module, "_lock", read_only)
    splits = load_dataset(tmp_path / "d", progress=False)
    assert "decoding into memory without it" in capsys.readouterr().err
    assert isinstance(splits.train.images, torch.Tensor) and len(splits.train) == 4
    assert stores(isolated_home) == []


def test_meta_is_what_marks_a_store_complete(tmp_path, isolated_home):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    load_dataset(tmp_path / "d", progress=False)
    [store] = stores(isolated_home)
    meta = json.loads((store / META_FILE).read_text())
    assert meta["count"] == 4 and meta["splits"] == {"train": [0, 4]} and meta["class_names"] == ["a", "b"]
    (store / META_FILE).unlink()
    assert open_store(store) is None


def test_a_zip_is_hashed_and_surveyed_once(tmp_path, isolated_home, monkeypatch):
    """A second run on a large zip reads neither its bytes (hash) nor its directory (survey)."""
    import zipfile

    from cnnkit.data import cache as cache_module
    from cnnkit.data import survey as survey_module

    write_image_tree(tmp_path / "d", {"a": 3, "b": 3}, size=(8, 8))
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for path in sorted((tmp_path / "d").rglob("*.png")):
            writer.write(path, path.relative_to(tmp_path / "d").as_posix())
    survey = survey_module.survey_image_sizes(archive)
    first = load_dataset(archive, progress=False)

    def fail(*arguments, **keywords):
        raise AssertionError("read the zip again")

    monkeypatch.setattr(cache_module, "hash_file", fail)
    monkeypatch.setattr(survey_module, "list_zip", fail)
    monkeypatch.setattr(sources_module, "decode_source", fail)
    assert survey_module.survey_image_sizes(archive) == survey and survey.uniform == (8, 8)
    assert torch.equal(load_dataset(archive, progress=False).train.images, first.train.images)
    os.utime(archive, ns=(10**18, 10**18))  # touched: hashed again (and found the same)
    with pytest.raises(AssertionError, match="read the zip again"):
        load_dataset(archive, progress=False)
