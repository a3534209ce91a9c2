"""A damaged store is noticed and rebuilt, never read as pixels (issue 19): checksums over
images.npy, labels and names, a cut file, meta.json of the wrong shape; and a store rebuilt on
request (``refresh_cache``) for a folder whose file changed with the same size and time."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from data_fakes import write_image_tree
from PIL import Image

from cnnkit.data import load_dataset, load_image_folder
from cnnkit.data import sources as sources_module
from cnnkit.data import store as store_module
from cnnkit.data.store_format import META_FILE, VERIFIED_FILE, StoreDamage, read_meta


def only_store(home):
    [store] = [
        path for path in (home / "cache").glob("*-*") if path.is_dir() and ".partial-" not in path.name
    ]
    return store


def overwrite(path, offset, data):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def count_decodes(monkeypatch):
    decoded = []
    original = sources_module.decode_source
    monkeypatch.setattr(
        sources_module, "decode_source", lambda *a, **k: decoded.append(1) or original(*a, **k)
    )
    return decoded


@pytest.mark.parametrize("in_memory", [True, False])
def test_random_bytes_over_the_images_are_noticed_and_the_store_rebuilt(
    tmp_path, isolated_home, monkeypatch, capsys, in_memory
):
    write_image_tree(tmp_path / "d", {"a": 3, "b": 3})
    expected = load_image_folder(tmp_path / "d", progress=False).train.images
    load_dataset(tmp_path / "d", progress=False)
    store = only_store(isolated_home)
    overwrite(store / "images.npy", 128 + 20, np.random.default_rng(0).bytes(30))
    decoded = count_decodes(monkeypatch)
    again = load_dataset(tmp_path / "d", progress=False, in_memory=in_memory)
    err = capsys.readouterr().err
    assert f"The data store at {store} is damaged (images.npy chunk 1 of 1 checksum); rebuilding it." in err
    assert "Traceback" not in err and decoded == [1]
    assert torch.equal(again.train.images[:], expected)


def test_a_chunk_past_the_first_is_named(tmp_path, isolated_home, monkeypatch, capsys):
    monkeypatch.setattr(
        store_module.StoreWriter, "__init__", _small_chunks(store_module.StoreWriter.__init__)
    )
    write_image_tree(tmp_path / "d", {"a": 3, "b": 3})  # 6 images of 72 bytes: 5 chunks of 100
    load_dataset(tmp_path / "d", progress=False)
    store = only_store(isolated_home)
    assert read_meta(store).checksums["chunk_bytes"] == 100 and len(read_meta(store).checksums["images"]) == 5
    overwrite(store / "images.npy", 128 + 250, b"\xff\x00\xff")
    load_dataset(tmp_path / "d", progress=False)
    assert "(images.npy chunk 3 of 5 checksum)" in capsys.readouterr().err


def _small_chunks(original):
    def init(self, *arguments, **keywords):
        original(self, *arguments, **keywords)
        self.checksums.chunk_bytes = 100

    return init


def test_a_large_store_is_checked_whole_only_after_its_file_changed(tmp_path, isolated_home, monkeypatch):
    write_image_tree(tmp_path / "d", {"a": 3, "b": 3})
    load_dataset(tmp_path / "d", progress=False, in_memory=False)  # built: its stamp is in meta.json
    store = only_store(isolated_home)
    checked = []
    original = store_module.check_file_chunks
    monkeypatch.setattr(store_module, "check_file_chunks", lambda *a: checked.append(1) or original(*a))
    load_dataset(tmp_path / "d", progress=False, in_memory=False)
    assert checked == [] and not (store / VERIFIED_FILE).exists()  # untouched: no pass over it
    os.utime(store / "images.npy")  # touched, not changed: checked once, then remembered
    load_dataset(tmp_path / "d", progress=False, in_memory=False)
    load_dataset(tmp_path / "d", progress=False, in_memory=False)
    assert checked == [1] and (store / VERIFIED_FILE).is_file()


def test_a_cut_images_file_is_rebuilt(tmp_path, isolated_home, capsys):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    first = load_dataset(tmp_path / "d", progress=False)
    store = only_store(isolated_home)
    os.truncate(store / "images.npy", 200)
    second = load_dataset(tmp_path / "d", progress=False, in_memory=False)
    assert "is damaged (images.npy is 200 bytes, expected 416); rebuilding it." in capsys.readouterr().err
    assert torch.equal(second.train.images[:], first.train.images)


@pytest.mark.parametrize("name", ["labels.npy", "names.bin"])
def test_damaged_labels_or_names_are_rebuilt(tmp_path, isolated_home, capsys, name):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    first = load_dataset(tmp_path / "d", progress=False)
    store = only_store(isolated_home)
    data = bytearray((store / name).read_bytes())
    data[-1] ^= 1  # the last label, or the last name's last letter
    (store / name).write_bytes(bytes(data))
    second = load_dataset(tmp_path / "d", progress=False)
    assert f"is damaged ({name} checksum); rebuilding it." in capsys.readouterr().err
    assert torch.equal(second.train.labels, first.train.labels) and second.train.names == first.train.names


def _mangle(meta: dict, change: str):
    if change == "list":
        return []
    if change == "null":
        return None
    if change == "splits list":
        return {**meta, "splits": []}
    if change == "only splits":
        return {"splits": []}
    if change == "no count":
        return {key: value for key, value in meta.items() if key != "count"}
    if change == "count text":
        return {**meta, "count": "4"}
    if change == "split outside":
        return {**meta, "splits": {"train": [0, 99]}}
    if change == "class names number":
        return {**meta, "class_names": 3}
    if change == "checksums list":
        return {**meta, "checksums": [1, 2]}
    return {**meta, "skipped": [["a"]]}  # "skipped pair"


MANGLED = [
    ("list", "meta.json holds [], not an object"),
    ("null", "meta.json holds null, not an object"),
    ("splits list", "meta.json's 'splits' is not what a store holds: []"),
    ("only splits", "meta.json is of format None, expected 6"),
    ("no count", "meta.json lacks 'count'"),
    ("count text", "meta.json's 'count' is not what a store holds: \"4\""),
    ("split outside", "meta.json's split 'train' [0, 99] is outside its 4 images"),
    ("class names number", "meta.json's 'class_names' is not what a store holds: 3"),
    ("checksums list", "meta.json's 'checksums' is not what a store holds: [1, 2]"),
    ("skipped pair", "meta.json's 'skipped' is not what a store holds"),
]


@pytest.mark.parametrize(("change", "reason"), MANGLED, ids=[change for change, _ in MANGLED])
def test_meta_of_the_wrong_shape_is_damage_not_a_traceback(tmp_path, isolated_home, capsys, change, reason):
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    first = load_dataset(tmp_path / "d", progress=False)
    store = only_store(isolated_home)
    meta = json.loads((store / META_FILE).read_text())
    (store / META_FILE).write_text(json.dumps(_mangle(meta, change)))
    with pytest.raises(StoreDamage, match=r"^meta\.json") as raised:  # read without its source
        read_meta(store)
    assert reason in str(raised.value) and "\n" not in str(raised.value)
    second = load_dataset(tmp_path / "d", progress=False)
    err = capsys.readouterr().err
    assert f"The data store at {store} is damaged ({reason}" in err and "Traceback" not in err
    assert torch.equal(second.train.images, first.train.images)
    read_meta(store)  # rebuilt whole


def test_refresh_rebuilds_what_the_key_cannot_see(tmp_path, isolated_home, monkeypatch, capsys):
    """A file rewritten with the same size and modification time keeps the folder's key: the
    store is outdated until refreshed."""
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    target = sorted((tmp_path / "d" / "a").iterdir())[0]
    Image.open(target).convert("RGB").save(target, compress_level=0)  # uncompressed: a fixed size
    first = load_dataset(tmp_path / "d", progress=False)
    status = target.stat()
    Image.new("RGB", (6, 4), (255, 0, 0)).save(target, compress_level=0)  # another picture...
    assert target.stat().st_size == status.st_size
    os.utime(target, ns=(status.st_atime_ns, status.st_mtime_ns))  # ...and the same time
    decoded = count_decodes(monkeypatch)
    stale = load_dataset(tmp_path / "d", progress=False)
    assert decoded == [] and torch.equal(stale.train.images, first.train.images)
    fresh = load_dataset(tmp_path / "d", workers=1, refresh_cache=True)
    assert decoded == [1] and (fresh.train.images[0] == torch.tensor([255, 0, 0], dtype=torch.uint8)).all()
    assert "Rebuilding the data store at" in capsys.readouterr().err
    assert torch.equal(load_dataset(tmp_path / "d", progress=False).train.images, fresh.train.images)


def test_a_refresh_takes_a_store_built_since_it_was_asked(tmp_path, isolated_home, monkeypatch):
    """Under torchrun every rank refreshes: the ranks that waited read the store one rank built."""
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    load_dataset(tmp_path / "d", progress=False)
    meta = json.loads((only_store(isolated_home) / META_FILE).read_text())
    (only_store(isolated_home) / META_FILE).write_text(json.dumps({**meta, "built": 4e9}))  # "later"
    decoded = count_decodes(monkeypatch)
    load_dataset(tmp_path / "d", progress=False, refresh_cache=True)
    assert decoded == []
