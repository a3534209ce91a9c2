"""The store of decoded images as a cache: hits, invalidation, corruption and its location.

(What a store is and how it is built: ``test_store.py``.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fakes import pattern_image, write_image_tree, write_png

from cnnkit.data import cnnkit_home, load_dataset
from cnnkit.data import sources as sources_module
from cnnkit.data.store import open_store


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*arguments: object, **keywords: object) -> None:
        raise AssertionError("decoded again although the store should have been used")

    monkeypatch.setattr(sources_module, "decode_source", fail)
    monkeypatch.setattr(sources_module, "read_cifar10_archive", fail)
    monkeypatch.setattr(sources_module, "read_cifar10_folder", fail)


def cache_files(home: Path) -> list[Path]:
    """The complete stores under ``home``."""
    return sorted(path for path in (home / "cache").glob("*-*") if (path / "meta.json").is_file())


def test_second_folder_load_hits_the_cache(tmp_path, monkeypatch, isolated_home, capsys):
    write_image_tree(tmp_path / "d", {"train/a": 2, "train/b": 2, "test/a": 1})
    first = load_dataset(tmp_path / "d", progress=False)
    assert len(cache_files(isolated_home)) == 1
    forbid_decoding(monkeypatch)
    second = load_dataset(tmp_path / "d")
    assert "from cache" in capsys.readouterr().err
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert first.train.class_names == second.train.class_names
    assert second.source == first.source


def test_second_archive_load_hits_the_cache(fake_cifar, monkeypatch):
    first = load_dataset(fake_cifar.archive, progress=False)
    forbid_decoding(monkeypatch)
    second = load_dataset(fake_cifar.archive, progress=False)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.images, second.test.images)


def test_changed_file_changes_the_key(tmp_path):
    written = write_image_tree(tmp_path / "d", {"a": 1, "b": 1})
    load_dataset(tmp_path / "d", progress=False)
    replacement = pattern_image(6, 4, seed=1234)
    target = tmp_path / "d" / "b" / "000.png"
    write_png(target, replacement)
    # Pin a different modification time in case the file system clock is coarse.
    os.utime(target, ns=(10**18, 10**18))
    reloaded = load_dataset(tmp_path / "d", progress=False)
    np.testing.assert_array_equal(reloaded.train.images[1].numpy(), replacement)
    np.testing.assert_array_equal(reloaded.train.images[0].numpy(), written["a/000.png"])


def test_changed_zip_bytes_change_the_key(tmp_path, isolated_home):
    import zipfile

    archive = tmp_path / "d.zip"
    for seed in (0, 1):
        write_image_tree(tmp_path / f"d{seed}", {"a": 1, "b": 1}, seed=seed)
        with zipfile.ZipFile(archive, "w") as writer:
            for path in sorted((tmp_path / f"d{seed}").rglob("*.png")):
                writer.write(path, path.relative_to(tmp_path / f"d{seed}").as_posix())
        loaded = load_dataset(archive, progress=False)
        np.testing.assert_array_equal(loaded.train.images[0].numpy(), pattern_image(6, 4, seed))
    assert len(cache_files(isolated_home)) == 2


def test_image_size_has_its_own_entry(tmp_path, isolated_home):
    write_image_tree(tmp_path / "d", {"a": 1, "b": 1})
    assert load_dataset(tmp_path / "d", progress=False).train.images.shape[1:] == (4, 6, 3)
    assert load_dataset(tmp_path / "d", image_size=3, progress=False).train.images.shape[1:] == (
        3,
        3,
        3,
    )
    assert len(cache_files(isolated_home)) == 2


def test_corrupt_cache_is_rebuilt(tmp_path, isolated_home, capsys):
    write_image_tree(tmp_path / "d", {"a": 1, "b": 1})
    first = load_dataset(tmp_path / "d", progress=False)
    [store] = cache_files(isolated_home)
    meta = store / "meta.json"
    meta.write_bytes(meta.read_bytes()[:20])
    second = load_dataset(tmp_path / "d", progress=False)
    assert f"The data store at {store} is damaged (meta.json is not valid JSON); rebuilding it." in (
        capsys.readouterr().err
    )
    assert torch.equal(first.train.images, second.train.images)
    assert open_store(store) is not None  # rewritten whole


def test_old_npz_caches_are_ignored(tmp_path, isolated_home):
    write_image_tree(tmp_path / "d", {"a": 1, "b": 1})
    (isolated_home / "cache").mkdir(parents=True)
    (isolated_home / "cache" / "folder-0123456789abcdef0123456789abcdef.npz").write_bytes(b"PK old cache")
    assert len(load_dataset(tmp_path / "d", progress=False).train) == 2
    assert len(cache_files(isolated_home)) == 1


def test_cnnkit_home_location(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "custom" / "home"))
    assert cnnkit_home() == tmp_path / "custom" / "home"
    assert cnnkit_home().is_dir()
    monkeypatch.delenv("CNNKIT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cnnkit_home() == tmp_path / "user" / ".cache" / "cnnkit"


def test_cache_dir_argument_places_the_cache(tmp_path):
    write_image_tree(tmp_path / "d", {"a": 1, "b": 1})
    load_dataset(tmp_path / "d", cache_dir=tmp_path / "elsewhere", progress=False)
    assert len(cache_files(tmp_path / "elsewhere")) == 1
