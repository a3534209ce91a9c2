"""Predicting at scale: folders, zips, globs and bad inputs, batching, and the output formats."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.cli import main
from cnnkit.data import decode_image
from cnnkit.inference.batch_prediction import expand_inputs, predict_files, predict_paths
from cnnkit.inference.batch_prediction import predict_files as predict_files_from_workflows
from cnnkit.inference.prediction_files import (
    check_output_path,
    format_predictions,
    write_predictions,
    write_predictions_file,
)
from tests.conftest import CLASS_NAMES, make_quadrant_images

IMAGES, LABELS = make_quadrant_images(12, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tutorial model trained for two epochs on 16x16 quadrant images (a few seconds on CPU)."""
    images, labels = make_quadrant_images(160, seed=1)
    classifier = Classifier("tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu")
    classifier.fit(images, labels, batch_size=32, epochs=2, verbose=False)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    classifier.save(path)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Nested folders, a zip, loose files for a glob, and the inputs that must fail."""
    root = tmp_path_factory.mktemp("inputs")

    def save(index: int, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(IMAGES[index]).save(path)

    save(0, root / "photos" / "b" / "0.png")
    save(1, root / "photos" / "a" / "deep" / "1.png")
    save(2, root / "photos" / "a" / "2.jpg")
    save(3, root / "photos" / "3.bmp")
    save(4, root / "photos" / ".hidden.png")  # skipped, as are the next two
    save(5, root / "photos" / "__MACOSX" / "5.png")
    (root / "photos" / "notes.txt").write_text("not an image")
    (root / "photos" / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    for index in (6, 7):
        save(index, root / "loose" / f"{index}.png")
    with zipfile.ZipFile(root / "archive.zip", "w") as archive:
        archive.writestr("z/8.png", _png_bytes(8))
        archive.writestr("9.png", _png_bytes(9))
        archive.writestr("__MACOSX/._9.png", b"resource fork")
        archive.writestr("readme.txt", "not an image")
    (root / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def _png_bytes(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(IMAGES[index]).save(buffer, "PNG")
    return buffer.getvalue()


def _arguments(tree: Path) -> list[str]:
    return [
        str(tree / "photos"),
        str(tree / "archive.zip"),
        str(tree / "loose" / "*.png"),
        str(tree / "photos" / "b" / "0.png"),  # already in photos: predicted once
        str(tree / "notes.txt"),
        str(tree / "missing.png"),
        str(tree / "empty"),
        str(tree / "nothing*.png"),
    ]


def _expected_paths(tree: Path) -> list[str]:
    photos = tree / "photos"
    return [
        str(photos / "3.bmp"),  # sorted by path component: "3.bmp" < "a" < "b"
        str(photos / "a" / "2.jpg"),
        str(photos / "a" / "corrupt.jpg"),
        str(photos / "a" / "deep" / "1.png"),
        str(photos / "b" / "0.png"),
        f"{tree / 'archive.zip'}/9.png",
        f"{tree / 'archive.zip'}/z/8.png",
        str(tree / "loose" / "6.png"),
        str(tree / "loose" / "7.png"),
        str(tree / "notes.txt"),
        str(tree / "missing.png"),
        str(tree / "empty"),
        str(tree / "nothing*.png"),
    ]


FAILING = {"corrupt.jpg", "notes.txt", "missing.png", "empty", "nothing*.png"}


def _failing(path: str) -> bool:
    return Path(path).name in FAILING


def test_expand_inputs_orders_deduplicates_and_flags_bad_paths(tree):
    items = expand_inputs(_arguments(tree))
    assert [item.path for item in items] == _expected_paths(tree)
    # A corrupt image is found here; only decoding tells it apart.
    assert [item.path for item in items if item.error] == [
        path for path in _expected_paths(tree) if _failing(path) and "corrupt" not in path
    ]
    assert expand_inputs(f"{tree / 'archive.zip'}/z") == expand_inputs(f"{tree / 'archive.zip'}/z/8.png")
    assert expand_inputs(f"{tree / 'archive.zip'}/readme.txt")[0].error.startswith("not an image file")


def test_results_keep_every_path_in_place_with_errors_for_the_bad_ones(tree, checkpoint):
    results = list(predict_paths(checkpoint, _arguments(tree), top_k=3, device="cpu"))
    assert [result.path for result in results] == _expected_paths(tree)
    assert [result.path for result in results if result.failed] == [
        path for path in _expected_paths(tree) if _failing(path)
    ]
    by_name = {Path(result.path).name: result.error for result in results if result.failed}
    assert "Cannot decode" in by_name["corrupt.jpg"] and "no such file" in by_name["missing.png"]
    assert "no images" in by_name["empty"] and "no images match" in by_name["nothing*.png"]
    for result in results:
        if result.failed:
            assert result.predictions == ()
            continue
        probabilities = [prediction.probability for prediction in result.predictions]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-5
        assert {prediction.class_name for prediction in result.predictions} <= set(CLASS_NAMES)


def test_each_result_belongs_to_its_own_image(tree, checkpoint):
    classifier = Classifier.load(checkpoint, device="cpu")
    good = [path for path in _expected_paths(tree) if not _failing(path) and "archive" not in path]
    results = list(predict_paths(classifier, good, top_k=4, batch_size=2))
    for path, result in zip(good, results, strict=True):
        image = decode_image(Path(path).read_bytes(), 16, path)
        expected = classifier.predict(image[None].copy())[0]
        got = {prediction.class_name: prediction.probability for prediction in result.predictions}
        assert [got[name] for name in CLASS_NAMES] == pytest.approx(expected.tolist(), abs=1e-5)
    labels_by_index = {int(Path(path).stem): LABELS[int(Path(path).stem)] for path in good}
    correct = sum(
        result.predictions[0].class_name == CLASS_NAMES[labels_by_index[int(Path(result.path).stem)]]
        for result in results
    )
    assert correct >= len(results) - 2  # the model learned the quadrants, and results are not shuffled


def test_small_batches_give_the_same_results_as_one_big_batch(tree, checkpoint):
    classifier = Classifier.load(checkpoint, device="cpu")
    small = list(predict_paths(classifier, _arguments(tree), top_k=4, batch_size=3))
    big = list(predict_paths(classifier, _arguments(tree), top_k=4, batch_size=256))
    assert [(r.path, r.failed) for r in small] == [(r.path, r.failed) for r in big]
    for one, other in zip(small, big, strict=True):
        assert [p.class_name for p in one.predictions] == [p.class_name for p in other.predictions]
        assert [p.probability for p in one.predictions] == pytest.approx(
            [p.probability for p in other.predictions], abs=1e-5
        )


def test_cli_formats_parse_back_and_the_exit_code_tells_failures(tree, checkpoint, capsys):
    command = ["predict", str(checkpoint), *_arguments(tree), "--top-k", "2", "--device", "cpu"]
    assert main([*command, "--format", "json"]) == 1
    parsed = json.loads(capsys.readouterr().out)
    assert [entry["path"] for entry in parsed] == _expected_paths(tree)
    assert all(("error" in entry) == _failing(entry["path"]) for entry in parsed)
    assert all(len(entry["predictions"]) == 2 for entry in parsed if "error" not in entry)

    assert main([*command, "--format", "csv"]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["path", "rank", "class", "probability", "error"]
    assert [row["path"] for row in rows if row["rank"] in ("", "1")] == _expected_paths(tree)
    for entry in parsed:
        mine = [row for row in rows if row["path"] == entry["path"]]
        if "error" in entry:
            assert [_stable(row["error"]) for row in mine] == [_stable(entry["error"])]
        else:
            assert [(row["class"], float(row["probability"])) for row in mine] == [
                (prediction["class"], prediction["probability"]) for prediction in entry["predictions"]
            ]

    assert main(command) == 1  # table, the default
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == _expected_paths(tree)
    for line, entry in zip(lines, parsed, strict=True):
        rest = line.split(": ", 1)[1]
        if "error" in entry:
            assert _stable(rest) == _stable(f"error: {entry['error']}")
        else:
            pairs = [pair.rsplit(" ", 1) for pair in rest.split(", ")]
            assert [name for name, _ in pairs] == [p["class"] for p in entry["predictions"]]
            assert [float(value) for _, value in pairs] == pytest.approx(
                [p["probability"] for p in entry["predictions"]], abs=5e-4
            )

    assert main(["predict", str(checkpoint), str(tree / "archive.zip"), "--device", "cpu"]) == 0


def _stable(error: str) -> str:
    # Pillow's message names the in-memory buffer's address, which differs from run to run.
    return error.split(" (")[0]


def test_output_writes_the_file_and_prints_a_summary(tree, checkpoint, tmp_path, capsys):
    output = tmp_path / "out" / "predictions.csv"
    arguments = ["predict", str(checkpoint), str(tree / "photos"), "--device", "cpu"]
    assert main([*arguments, "--format", "csv", "--output", str(output)]) == 1
    assert capsys.readouterr().out == f"5 images, 1 failed, written to {output}\n"
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 4 * 4 + 1  # top-k capped at the 4 classes; one row for the corrupt image
    assert [p.name for p in output.parent.iterdir()] == ["predictions.csv"]  # no temporary left


def test_top_k_is_capped_and_validated(tree, checkpoint, capsys):
    image = str(tree / "photos" / "3.bmp")
    assert main(["predict", str(checkpoint), image, "--top-k", "99", "--json", "--device", "cpu"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["predictions"]) == len(CLASS_NAMES)
    assert main(["predict", str(checkpoint), image, "--top-k", "0"]) == 1
    assert "Received: top_k=0" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), image, "--batch-size", "0"]) == 1
    assert "Received: batch_size=0" in capsys.readouterr().err


def test_predict_files_returns_dicts_with_error_entries(tree, checkpoint):
    paths = [tree / "photos" / "3.bmp", tree / "missing.png"]
    results = predict_files(checkpoint, paths, top_k=1, device="cpu")
    assert predict_files_from_workflows is predict_files
    assert results[0]["path"] == str(paths[0]) and len(results[0]["predictions"]) == 1
    assert results[1] == {"path": str(paths[1]), "error": "no such file or folder"}


def test_formats_of_no_results_still_parse():
    assert json.loads(format_predictions([], "json")) == []
    assert format_predictions([], "csv") == "path,rank,class,probability,error\n"
    assert format_predictions([], "table") == ""
    with pytest.raises(ValueError, match="Received: format='xml'"):
        write_predictions([], io.StringIO(), "xml")


def test_no_paths_give_no_results(checkpoint):
    assert list(predict_paths(checkpoint, [], device="cpu")) == []


def test_a_damaged_zip_member_is_an_error_entry(checkpoint, tmp_path):
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as writer:
        writer.writestr("good.png", _png_bytes(0))
        writer.writestr("bad.png", _png_bytes(1))
    content = bytearray(archive.read_bytes())
    position = content.index(_png_bytes(1)) + 40
    content[position] ^= 0xFF  # the stored CRC no longer matches
    archive.write_bytes(bytes(content))
    results = list(predict_paths(checkpoint, archive, device="cpu"))
    assert [(result.path, result.failed) for result in results] == [
        (f"{archive}/bad.png", True),
        (f"{archive}/good.png", False),
    ]
    assert results[0].error.startswith("cannot read (BadZipFile: Bad CRC-32")


def test_force_lets_an_output_replace_any_file_but_the_model_and_the_inputs(tree, checkpoint, tmp_path):
    image = tree / "photos" / "3.bmp"
    notes = tmp_path / "notes.md"
    notes.write_text("mine")
    with pytest.raises(ValueError, match=r"exists and is not a results file.*--force"):
        check_output_path(notes, checkpoint, [image])
    check_output_path(notes, checkpoint, [image], force=True)
    for kept, what in ((checkpoint, "the model"), (image, "an input")):
        with pytest.raises(ValueError, match=f"--output would overwrite {what}"):
            check_output_path(kept, checkpoint, [image], force=True)
    results = predict_paths(checkpoint, [image], device="cpu")
    assert write_predictions_file(notes, results, "csv").count == 1
    assert notes.read_text().startswith("path,rank,class")
