"""Nothing of the user's is overwritten, hostile input costs bounded memory and time, and every
mistake is one line: each case here was reproduced against an earlier version."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import sys
import time
import tracemalloc
import zipfile
import zlib
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from cnnkit.data import load_dataset
from cnnkit.inference.batch_prediction import predict_paths
from cnnkit.messages import short_repr, shorten
from tests.conftest import CLASS_NAMES, make_quadrant_images, write_image_folder


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnnkit: error:"), err
    return err[0]


def png(colour: int = 0, size: tuple[int, int] = (16, 16)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, (colour, 255 - colour, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tutorial run on a train/test quadrant folder: (run folder, data folder)."""
    root = tmp_path_factory.mktemp("hostile")
    images, labels = make_quadrant_images(96, seed=1)
    write_image_folder(root / "data" / "train", images, labels)
    test_images, test_labels = make_quadrant_images(24, seed=2)
    write_image_folder(root / "data" / "test", test_images, test_labels)
    arguments = ["train", "--data", str(root / "data"), "--recipe", "tutorial", "--epochs", "3"]
    assert main([*arguments, "--out", str(root / "runs"), "--device", "cpu", "--quiet"]) == 0
    return root / "runs" / "train", root / "data"


# --- nothing of the user's is overwritten -------------------------------------------------------


def test_evaluate_never_replaces_a_runs_files(run, capsys):
    folder, data = run
    report = (folder / "report.json").read_text()
    assert main(["evaluate", str(folder / "best.pt"), "--data", str(data), "--out", str(folder)]) == 1
    assert "already holds files: give a new or empty folder" in one_error_line(capsys)
    assert (folder / "report.json").read_text() == report


def test_predict_never_replaces_the_model_or_an_input(run, tmp_path, capsys):
    folder, data = run
    image = next((data / "test" / CLASS_NAMES[0]).iterdir())
    checkpoint = folder / "best.pt"
    before = checkpoint.read_bytes(), image.read_bytes()
    assert main(["predict", str(checkpoint), str(image), "--output", str(checkpoint)]) == 1
    assert "--output would overwrite the model" in one_error_line(capsys)
    assert main(["predict", str(checkpoint), str(image), "--output", str(image)]) == 1
    assert "--output would overwrite an input" in one_error_line(capsys)
    notes = tmp_path / "notes.md"
    notes.write_text("mine")
    assert main(["predict", str(checkpoint), str(image), "--output", str(notes)]) == 1
    assert "exists and is not a results file" in one_error_line(capsys)
    assert (checkpoint.read_bytes(), image.read_bytes(), notes.read_text()) == (*before, "mine")
    results = tmp_path / "results.csv"
    for _ in range(2):  # a results file of its own is replaced, as a second run expects
        assert (
            main(["predict", str(checkpoint), str(image), "--output", str(results), "--format", "csv"]) == 0
        )
    assert results.read_text().count("\n") == 1 + 4  # header, one row per class


def test_an_output_never_replaces_what_a_run_wrote_unless_forced(run, tmp_path, capsys):
    source, data = run
    folder = shutil.copytree(source, tmp_path / "run")  # --force below must not spoil the shared run
    image = str(next((data / "test" / CLASS_NAMES[0]).iterdir()))
    predict = ["predict", str(source / "best.pt"), image, "--format", "json", "--output"]
    for name in ("report.json", "metrics.csv", "config.yaml", "last.pt", "skipped.txt"):
        before = (folder / name).read_bytes() if (folder / name).exists() else None
        assert main([*predict, str(folder / name)]) == 1
        line = one_error_line(capsys)
        assert f"{name} of the run folder {folder}: cnnkit will not replace it" in line and "--force" in line
        assert ((folder / name).read_bytes() if (folder / name).exists() else None) == before
    evaluation = tmp_path / "evaluation"  # an evaluation report's files are protected the same way
    assert main(["evaluate", str(folder / "best.pt"), "--data", str(data), "--out", str(evaluation)]) == 0
    capsys.readouterr()
    assert main([*predict, str(evaluation / "per_class.csv")]) == 1
    assert "per_class.csv of the evaluation report" in one_error_line(capsys)
    own = folder / "predictions.json"  # a file of the user's own in the run folder stays theirs
    for _ in range(2):
        assert main([*predict, str(own)]) == 0
    assert main([*predict, str(folder / "report.json"), "--force"]) == 0
    assert json.loads((folder / "report.json").read_text())[0]["path"] == image


def test_the_protected_names_are_the_files_cnnkit_writes(run):
    from cnnkit.experiments import compare, study, tune
    from cnnkit.runs import folders
    from cnnkit.runs.evaluation import REPORT_FILES
    from cnnkit.runs.outputs import FOLDER_KINDS

    folder, _ = run
    marker, names = FOLDER_KINDS["run folder"]
    assert marker == folders.CONFIG_FILE and {folders.CONFIG_FILE, folders.REPORT_FILE} <= names
    assert {path.name for path in folder.iterdir() if path.is_file()} <= names
    assert FOLDER_KINDS["evaluation report"][1] == set(REPORT_FILES.values())
    tune_files = {study.STUDY_FILE, tune.TRIALS_FILE, tune.BEST_RECIPE_FILE, tune.HISTORY_PLOT}
    assert FOLDER_KINDS["tuning study"][1] == {*tune_files, tune.IMPORTANCE_PLOT}
    assert FOLDER_KINDS["comparison"][1] == {compare.COMPARISON_JSON, compare.COMPARISON_PLOT}


# --- hostile input: bounded memory and time -----------------------------------------------------


def write_zip_bomb(path: Path, inflated_mib: int) -> Path:
    """A small zip holding ``inflated_mib`` MiB of zeros named like an image, beside a real image."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in ("cat/1.png", "dog/1.png"):
            archive.writestr(name, png(40 if name.startswith("cat") else 200))
        with archive.open("cat/zeros.jpg", "w", force_zip64=True) as member:
            block = bytes(2**20)
            for _ in range(inflated_mib):
                member.write(block)
    return path


def test_a_zip_bomb_is_refused_from_its_declared_size_in_bounded_memory(run, tmp_path):
    folder, _ = run
    bomb = write_zip_bomb(tmp_path / "bomb.zip", inflated_mib=256)
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    try:
        results = list(predict_paths(folder / "best.pt", bomb, device="cpu"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    errors = {result.path: result.error for result in results if result.failed}
    assert list(errors) == [f"{bomb}/cat/zeros.jpg"] and len(results) == 3
    assert errors[f"{bomb}/cat/zeros.jpg"].startswith(
        "too large to be an image (256 MiB; the limit is 64 MiB"
    )
    assert peak < 16 * 2**20  # never the 256 MiB the member inflates to
    splits = load_dataset(bomb, image_size=16, progress=False)
    assert [(file.path, file.reason.split(" (")[0]) for file in splits.skipped] == [
        (f"cat/zeros.jpg in {bomb}", "too large to be an image")
    ]


def mark_encrypted(archive: Path, name: str) -> None:
    """Set the "encrypted" flag of member ``name``: zipfile then refuses it as a real encrypted one."""
    content = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as reader:
        member = reader.getinfo(name)
    content[member.header_offset + 6] |= 0x01  # in the local header...
    central = content.index(b"PK\x01\x02")  # the central directory: find the member's entry
    while content[central + 46 : central + 46 + len(name)] != name.encode():
        central = content.index(b"PK\x01\x02", central + 4)
    content[central + 8] |= 0x01  # ...and in the central directory
    archive.write_bytes(bytes(content))


def test_encrypted_and_corrupt_zip_members_are_error_entries(run, tmp_path, capsys):
    folder, _ = run
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr("a_good.png", png(10), compress_type=zipfile.ZIP_STORED)
        writer.writestr("b_locked.png", png(20), compress_type=zipfile.ZIP_STORED)
        writer.writestr("c_broken.png", png(30) * 40, compress_type=zipfile.ZIP_DEFLATED)
    mark_encrypted(archive, "b_locked.png")
    content = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as reader:
        broken = reader.getinfo("c_broken.png")
    data_start = broken.header_offset + 30 + len("c_broken.png")
    content[data_start : data_start + 8] = b"\xff" * 8  # deflate data that cannot inflate
    archive.write_bytes(bytes(content))
    assert main(["predict", str(folder / "best.pt"), str(archive), "--format", "json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert "predictions" in results[0]
    assert results[1]["error"] == "member 'b_locked.png' is encrypted; cnnkit reads unencrypted zips only"
    assert results[2]["error"].startswith("cannot read (")


def test_training_on_an_encrypted_zip_says_which_member_is_encrypted(tmp_path, capsys):
    archive = tmp_path / "locked.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for index in range(4):
            writer.writestr(f"{'cat' if index % 2 else 'dog'}/{index}.png", png(index * 60))
    mark_encrypted(archive, "dog/2.png")
    arguments = ["--recipe", "tutorial", "--epochs", "1", "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(["train", "--data", str(archive), *arguments, "--device", "cpu"]) == 1
    assert one_error_line(capsys) == (
        f"cnnkit: error: {archive}: member 'dog/2.png' is encrypted; cnnkit reads unencrypted zips only"
    )
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_the_service_bounds_pixels_per_request_and_keeps_errors_short(tmp_path):
    import httpx

    from cnnkit.serving import create_app, load_service_predictor, start_server_thread
    from tests.test_serve import train_colour_checkpoint

    threads = torch.get_num_threads()
    predictor = load_service_predictor(train_colour_checkpoint(tmp_path / "colours.pt"))
    app = create_app(predictor, max_request_pixels=2_000_000)
    big = png(0, (1000, 1000))
    with start_server_thread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        files = [("files", (f"{index}.png", big, "image/png")) for index in range(3)]
        refused = client.post("/v1/predict", files=files)
        assert (
            refused.status_code == 413
            and "3 megapixels, over the 2 megapixel limit" in refused.json()["detail"]
        )
        assert client.post("/v1/predict", files=files[:2]).status_code == 200
        # Many fields but no images: the 422 names a few, not all of them back.
        fields = {f"field{index}": "x" * 1000 for index in range(2000)}
        response = client.post("/v1/predict", data=fields, files={"other": ("a.txt", b"a")})
        assert response.status_code == 422 and len(response.content) < 1000 and "more" in response.text
        invalid = client.post("/v1/predict", params={"top_k": "x" * 5000}, files=files[:1])
        assert invalid.status_code == 422 and len(invalid.content) < 1000
    torch.set_num_threads(threads)


def test_a_small_request_does_not_wait_behind_a_large_one(tmp_path):
    import threading
    import time

    import httpx

    from cnnkit.serving import create_app, load_service_predictor, start_server_thread
    from tests.test_serve import train_colour_checkpoint

    threads = torch.get_num_threads()
    predictor = load_service_predictor(train_colour_checkpoint(tmp_path / "colours.pt"))
    large = [("files", (f"{index}.png", png(index, (4000, 4000)), "image/png")) for index in range(8)]
    finished: dict[str, float] = {}
    with start_server_thread(create_app(predictor)) as server:
        started = time.perf_counter()

        def send(name: str, files: list) -> None:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                assert client.post("/v1/predict", files=files).status_code == 200
            finished[name] = time.perf_counter() - started

        sender = threading.Thread(target=send, args=("large", large))
        sender.start()
        time.sleep(0.3)  # the large request is decoding
        send("small", [("files", ("small.png", png(7), "image/png"))])
        sender.join()
    torch.set_num_threads(threads)
    # 128 megapixels take seconds to decode; the small request did not queue behind them.
    assert finished["small"] < finished["large"] / 2


# --- tracebacks where a line belongs ------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_bad_port_is_one_line_before_start_up(run, port, capsys):
    folder, _ = run
    assert main(["serve", str(folder / "best.pt"), "--port", port]) == 1
    assert f"port must be an integer from 0 to 65535. Received: port={port}" in one_error_line(capsys)


def test_a_truncated_checkpoint_is_called_truncated(run, tmp_path, capsys):
    folder, _ = run
    data = (folder / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert main(["evaluate", str(tmp_path / "cut.pt")]) == 1
    assert "is truncated or damaged" in one_error_line(capsys)


def test_library_warnings_do_not_reach_the_user(tmp_path, capsys):
    with open(tmp_path / "foreign.pt", "wb") as file:
        pickle.dump({"weights": [1, 2, 3]}, file, protocol=5)  # torch warns about protocol 5
    assert main(["evaluate", str(tmp_path / "foreign.pt")]) == 1
    assert "Cannot read" in one_error_line(capsys)  # the only line: no UserWarning

    # A header claiming 100 megapixels: refused by cnnkit's own check, without Pillow's warning.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0))
    bomb = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "huge.png").write_bytes(bomb)
    model = Classifier("tutorial", class_names=["cat", "dog"], image_size=16, device="cpu")
    model.save(tmp_path / "model.pt")
    assert main(["predict", str(tmp_path / "model.pt"), str(tmp_path / "cat" / "huge.png")]) == 1
    captured = capsys.readouterr()
    assert "too many pixels (10000 x 10000; the limit is 64 megapixels)" in captured.out
    assert captured.err == ""


# --- wrong or misleading ------------------------------------------------------------------------


def test_the_report_scores_best_pt_and_says_so(run):
    folder, data = run
    report = json.loads((folder / "report.json").read_text())
    evaluation = report["evaluation"]
    assert (evaluation["checkpoint"], evaluation["epoch"]) == ("best.pt", report["best_epoch"])
    best = Classifier.load(folder / "best.pt", device="cpu")
    test = load_dataset(data, image_size=16, progress=False).test
    assert best.evaluate(test.images, test.labels)["accuracy"] == pytest.approx(evaluation["accuracy"])
    assert load_checkpoint(folder / "best.pt").metrics["test"]["accuracy"] == pytest.approx(
        evaluation["accuracy"]
    )
    assert set(report["final_epoch"]) >= {"train", "validation"}  # figures named by their split


def test_unsafe_zip_paths_are_skipped_with_their_reason(tmp_path):
    archive = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for name, colour in (("cat/1.png", 10), ("dog/1.png", 200), ("cat/2.png", 20), ("dog/2.png", 210)):
            writer.writestr(name, png(colour))
        writer.writestr(zipfile.ZipInfo("/etc/cat/3.png"), png(30))
        writer.writestr(zipfile.ZipInfo("../escape/4.png"), png(40))
    splits = load_dataset(archive, image_size=16, progress=False)
    assert splits.train.class_names == ["cat", "dog"]
    reasons = {file.path.split(" in ")[0]: file.reason for file in splits.skipped}
    assert reasons == {
        "/etc/cat/3.png": "unsafe path in the archive (absolute)",
        "../escape/4.png": "unsafe path in the archive (it leads outside the archive)",
    }


def test_an_empty_class_folder_is_reported_not_dropped_silently(tmp_path, capsys):
    images, labels = make_quadrant_images(24, seed=4)
    write_image_folder(tmp_path / "data", images, labels % 3)
    (tmp_path / "data" / "zebra").mkdir()
    splits = load_dataset(tmp_path / "data", image_size=16, progress=True)
    assert len(splits.train.class_names) == 3
    assert [(file.path, file.reason) for file in splits.skipped] == [
        (f"{tmp_path / 'data' / 'zebra'}/", "empty folder: no class is made of it")
    ]
    assert "(1 empty folder)" in capsys.readouterr().err


def test_small_classes_and_slow_precision_are_named(tmp_path, capsys):
    images, labels = make_quadrant_images(41, seed=5)
    labels[-1] = 3
    labels[labels == 3] = 0
    labels[-1] = 3  # class 3: a single image
    write_image_folder(tmp_path / "data", images, labels)
    arguments = ["--recipe", "tutorial", "--epochs", "1", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(["train", "--data", str(tmp_path / "data"), *arguments, "--precision", "fp16"]) == 0
    err = capsys.readouterr().err
    assert f"in class(es) {CLASS_NAMES[3]}: they are trained on but not validated" in err
    assert "fp16 on a CPU is emulated" in err


def test_resume_on_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 1
    assert "is not a run folder (it has no config.yaml)" in one_error_line(capsys)


def test_the_printed_command_runs_where_cnnkit_is_not_on_the_path(run, monkeypatch, capsys, tmp_path):
    _, data = run
    monkeypatch.setattr(sys, "argv", ["/somewhere/.venv/bin/cnnkit"])
    monkeypatch.setenv("PATH", str(tmp_path))
    arguments = ["--recipe", "tutorial", "--epochs", "1", "--quiet", "--device", "cpu"]
    assert main(["train", "--data", str(data), *arguments, "--out", str(tmp_path / "runs")]) == 0
    assert "class by class: /somewhere/.venv/bin/cnnkit evaluate " in capsys.readouterr().out


def test_evaluate_names_the_folder_it_decodes_not_a_training_split(run, tmp_path, capsys):
    folder, data = run
    shutil.copytree(data / "test", tmp_path / "holdout")
    assert main(["evaluate", str(folder / "best.pt"), "--data", str(tmp_path / "holdout")]) == 0
    err = capsys.readouterr().err
    assert "train" not in err.lower() and "holdout" in err


def test_config_keeps_unicode_and_records_the_batch_actually_used(tmp_path):
    images, labels = make_quadrant_images(160, seed=6)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "data" / ["dög", "cät", "fîsh", "bïrd"][label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    arguments = ["--epochs", "1", "--out", str(tmp_path / "runs"), "--device", "cpu", "--quiet"]
    assert main(["train", "--data", str(tmp_path / "data"), *arguments]) == 0  # the fast recipe
    text = (tmp_path / "runs" / "train" / "config.yaml").read_text(encoding="utf-8")
    assert "dög" in text and "\\x" not in text
    plan = yaml.safe_load(text)["training_plan"]
    # 128 training images: batch 2000 becomes 12, so that an epoch still has 10 steps.
    assert plan == {"batch_size": 12, "steps_per_epoch": 10, "epochs": 1, "total_steps": 10}  # drop_last
    assert np.isfinite(yaml.safe_load(text)["recipe"]["learning_rate"])


# --- errors that echo a value stay short --------------------------------------------------------


def alias_bomb(levels: int) -> str:
    """A YAML flow mapping whose last key, ``z`` (anchor ``&z``), holds 9**levels strings through
    shared aliases: a few hundred bytes of YAML, loaded in microseconds, whose repr is huge."""
    names = "abcdefghijklmnopqrstuvwxy"[:levels]
    parts = [f"{names[0]}: &{names[0]} [{', '.join(['xxxxxxxxx'] * 9)}]"]
    parts += [f"{name}: &{name} [{', '.join([f'*{below}'] * 9)}]" for below, name in pairwise(names)]
    return "{" + ", ".join([*parts, f"z: &z [{', '.join([f'*{names[-1]}'] * 9)}]"]) + "}"


def test_a_yaml_alias_bomb_is_one_short_line_in_no_time(tmp_path, capsys):
    # Nine levels made a 351 MB message (minutes, 15 GB); seven (4.8 million strings, a 62 MB repr)
    # show the cut as well, and cost a regression a second rather than a machine's memory.
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(f"base: tutorial\nmodel_arguments:\n  unused: {alias_bomb(6)}\nepochs: *z\n")
    arguments = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--device", "cpu"]
    for bomb in (["--recipe", str(recipe)], ["--recipe", "tutorial", "--set", f"translate={alias_bomb(6)}"]):
        started = time.perf_counter()
        assert main(["train", *bomb, *arguments]) == 1
        line = one_error_line(capsys)
        assert time.perf_counter() - started < 5
        assert "must be" in line and "Received: " in line and line.endswith("(cut at 200 characters)")
        assert len(line) < 400


def test_short_repr_is_repr_until_the_limit_and_costs_only_the_limit():
    values = [5, -1.5, "it's", b"x", None, True, [], (), (1,), {}, set(), frozenset({2}), {"a": [1, (2, 3)]}]
    assert [short_repr(value) for value in values] == [repr(value) for value in values]
    looped: list = [1]
    looped.append(looped)
    assert short_repr(looped) == repr(looped)
    assert short_repr("y" * 1000, limit=10) == "'yyyyyyyyy… (cut at 10 characters)"
    bomb = yaml.safe_load(alias_bomb(6))  # 4.8 million strings: its repr takes ~0.5 s and 62 MB
    started = time.perf_counter()
    assert len(short_repr(bomb)) < 250 and time.perf_counter() - started < 0.05
    assert shorten("z" * 600) == "z" * 500 + "… (100 characters cut)" and shorten("short") == "short"


def test_any_error_line_is_cut_to_500_characters(monkeypatch, tmp_path, capsys):
    from cnnkit.cli import use

    def failing(arguments):
        raise ValueError("a message quoting a whole file: " + "q" * 100_000)

    monkeypatch.setattr(use, "_predict", failing)
    assert main(["predict", str(tmp_path / "model.pt"), "image.png"]) == 1
    line = one_error_line(capsys)
    cut = "… (99532 characters cut)"
    assert line.endswith("q" + cut) and len(line) == len("cnnkit: error: ") + 500 + len(cut)
