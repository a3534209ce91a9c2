"""``cnnkit cache list|clear|remove`` and ``cnnkit train --no-cache`` (issue 19), run in-process."""

from __future__ import annotations

import json
import os
import time

import pytest
from data_fakes import write_image_tree

from cnnkit.cli import main
from cnnkit.data import load_dataset
from cnnkit.data.cache_admin import BUILDING, OLD_FORMAT, READY, UNFINISHED, list_stores

DAY = 86400


def build_stores(tmp_path, home):
    """Two stores (the folder at its own size and at 3 px), a dead build and an old-format store."""
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    load_dataset(tmp_path / "d", progress=False)
    load_dataset(tmp_path / "d", image_size=3, progress=False)
    cache = home / "cache"
    dead = cache / ("folder-" + "1" * 32 + ".partial-99999-dead")
    dead.mkdir()
    (dead / "images.npy").write_bytes(b"x" * 100)
    old = cache / ("folder-" + "2" * 32)
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"version": 5, "count": 7}))
    (cache / ("zip-" + "3" * 32 + ".npz")).write_bytes(b"PK old")
    return {entry.name: entry for entry in list_stores()}


def names(home):
    return sorted(path.name for path in (home / "cache").iterdir() if not path.name.endswith(".lock"))


def test_cache_list_shows_each_store_with_its_source(tmp_path, isolated_home, capsys):
    entries = build_stores(tmp_path, isolated_home)
    states = sorted(entry.state for entry in entries.values())
    assert states == [OLD_FORMAT, OLD_FORMAT, READY, READY, UNFINISHED]
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    ready = [entry for entry in entries.values() if entry.state == READY]
    for entry in ready:
        assert entry.name in out and entry.images == 4
    assert f"image folder ({tmp_path / 'd'}) at 3 px" in out and "format 5, this cnnkit reads 6" in out
    assert out.splitlines()[-1].startswith("5 stores, ") and str(isolated_home / "cache") in out
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {store["name"] for store in listed["stores"]} == set(entries)
    [small] = [store for store in listed["stores"] if store["image_size"] == 3]
    assert small["state"] == "ready" and small["images"] == 4 and small["bytes"] > 4 * 27
    assert small["source"] == f"image folder ({tmp_path / 'd'})" and small["last_used"] > time.time() - 60


def test_cache_clear_removes_what_no_run_reads_then_unused_then_all(tmp_path, isolated_home, capsys):
    entries = build_stores(tmp_path, isolated_home)
    ready = sorted(name for name, entry in entries.items() if entry.state == READY)
    assert main(["cache", "clear", "--dry-run"]) == 0
    assert "Would remove" in capsys.readouterr().out and len(names(isolated_home)) == 5
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert out.count("Removed ") == 3 and "Kept 2 stores in use" in out
    assert names(isolated_home) == ready
    # A store unused for two days goes with --older-than 1; the other was just used.
    stale = isolated_home / "cache" / ready[0]
    os.utime(stale, (time.time() - 2 * DAY, time.time() - 2 * DAY))
    assert main(["cache", "clear", "--older-than", "1"]) == 0
    assert f"Removed {stale}" in capsys.readouterr().out and names(isolated_home) == ready[1:]
    load_dataset(tmp_path / "d", progress=False)  # a load marks its store used, and rebuilds a removed one
    assert main(["cache", "clear", "--all"]) == 0
    assert names(isolated_home) == [] or set(names(isolated_home)) <= {"hashes", "surveys"}


def test_a_store_being_built_is_left_alone(tmp_path, isolated_home, capsys):
    fcntl = pytest.importorskip("fcntl")
    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    load_dataset(tmp_path / "d", progress=False)
    [store] = list_stores()
    partial = store.path.with_name(store.name + ".partial-1234-live")
    partial.mkdir()
    lock = os.open(store.path.with_name(store.name + ".lock"), os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a builder holds it (flock: per open file, so it conflicts)
        assert {entry.name: entry.state for entry in list_stores()}[partial.name] == BUILDING
        assert main(["cache", "clear", "--all"]) == 0
        assert "another process is building it" in capsys.readouterr().out
        assert store.path.is_dir() and partial.is_dir()
        assert main(["cache", "remove", store.name]) == 1
    finally:
        os.close(lock)
    assert main(["cache", "remove", store.name[:12]]) == 0  # a unique start of the name will do
    assert f"Removed {store.path}" in capsys.readouterr().out and not store.path.exists()


def test_cache_remove_refuses_unknown_or_ambiguous_names_in_one_line(tmp_path, isolated_home, capsys):
    build_stores(tmp_path, isolated_home)
    before = names(isolated_home)
    assert main(["cache", "remove", "folder-nothing"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Received: key='folder-nothing'" in err
    assert main(["cache", "remove", "folder-"]) == 1
    assert "give more of the name" in capsys.readouterr().err and names(isolated_home) == before
    assert main(["cache", "remove", "zip-333", "--dry-run"]) == 0 and names(isolated_home) == before


def test_train_no_cache_asks_the_data_layer_to_rebuild(tmp_path, isolated_home, monkeypatch, capsys):
    from cnnkit.runs import training

    write_image_tree(tmp_path / "d", {"a": 2, "b": 2})
    asked = {}

    def stop(data, **keywords):
        asked.update(keywords)
        raise ValueError("stopped after loading")

    original_survey = training.survey_image_sizes
    monkeypatch.setattr(training, "load_dataset", stop)
    monkeypatch.setattr(
        training,
        "survey_image_sizes",
        lambda data, refresh: asked.update(survey=refresh) or original_survey(data),
    )
    arguments = ["train", "--data", str(tmp_path / "d"), "--recipe", "tutorial", "--device", "cpu", "--quiet"]
    assert main(arguments) == 1 and asked["refresh_cache"] is False and asked["survey"] is False
    assert (
        main([*arguments, "--no-cache"]) == 1 and asked["refresh_cache"] is True and asked["survey"] is True
    )
    assert main(["train", "--resume", str(tmp_path), "--no-cache"]) == 1
    assert "Received: --no-cache" in capsys.readouterr().err
