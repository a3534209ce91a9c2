"""`cnnkit audit` end to end (issue 22): duplicates, leaks and suspected label errors found in a
data set read as `train` reads it, the report folder (page, JSON, CSVs, exclude.txt), and
`cnnkit train --exclude` honouring it."""

import csv
import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnkit.cli import main
from tests.conftest import CLASS_NAMES
from tests.test_serve_browser import CHROMIUM, CHROMIUM_ARGUMENTS

FLIPPED = 24


COLOURS = np.array([(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40)])


def make_colour_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16-px noisy images whose class is the colour of a square at a random place: unlike the
    quadrant images, a mirror or a shift (the fast recipe's augmentation) keeps the class."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % len(COLOURS)
    images = generator.integers(0, 90, size=(count, 16, 16, 3), dtype=np.uint8)
    for index, label in enumerate(labels):
        top, left = generator.integers(0, 9, size=2)
        images[index, top : top + 7, left : left + 7] = COLOURS[label]
    return images, labels


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A train/test folder of coloured-square images: 24 training labels flipped, one training image copied
    into test/ (a leak), one into another class (a conflict), one re-encoded beside itself."""
    root = tmp_path_factory.mktemp("audit")
    images, labels = make_colour_images(480, seed=11)
    flipped = set()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        split = "test" if (index // 4) % 8 == 0 else "train"  # an eighth, every class
        if split == "train" and len(flipped) < FLIPPED and index % 5 == 1:
            label = (label + 1) % 4
            flipped.add(f"{split}/{CLASS_NAMES[label]}/{index:04d}.png")
        path = root / "data" / split / CLASS_NAMES[label] / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    data = root / "data"
    original = data / "train" / CLASS_NAMES[labels[40]] / "0040.png"  # a training image, not flipped
    shutil.copy(original, data / "test" / CLASS_NAMES[labels[40]] / "leak.png")
    shutil.copy(original, data / "train" / CLASS_NAMES[(labels[40] + 2) % 4] / "conflict.png")
    Image.open(data / "train" / CLASS_NAMES[labels[45]] / "0045.png").save(
        data / "train" / CLASS_NAMES[labels[45]] / "again.jpg", quality=90
    )
    return root, data, flipped


@pytest.fixture(scope="module")
def audited(planted):
    root, data, flipped = planted
    report = root / "report"
    assert main(["audit", str(data), "--out", str(report), "--device", "cpu"]) == 0
    return root, data, flipped, report, json.loads((report / "audit.json").read_text())


def test_audit_finds_the_planted_duplicates_by_relation(audited):
    *_, result = audited
    relations = {
        member["name"]: set(group["relations"])
        for group in result["duplicates"]
        for member in group["members"]
    }
    assert "across splits" in relations[f"test/{_class_of(result, 'leak.png')}/leak.png"]
    conflict = next(name for name in relations if name.endswith("conflict.png"))
    assert "across classes" in relations[conflict]
    again = next(name for name in relations if name.endswith("again.jpg"))
    assert relations[again] == {"within class"}
    assert result["images"] == 483 and result["splits"] == {"train": 422, "test": 61}


def _class_of(result, file_name):
    return next(
        member["name"].split("/")[1]
        for group in result["duplicates"]
        for member in group["members"]
        if member["name"].endswith(file_name)
    )


def test_audit_flags_most_flipped_labels_by_cross_validation(audited):
    _, _, flipped, _, result = audited
    assert result["method"]["label_issues"] == "cross-validation" and result["method"]["folds"] == 4
    flagged = {row["name"] for row in result["label_issues"]}
    hits = len(flagged & flipped)
    assert hits / len(flipped) >= 0.7  # recall
    assert hits / len(flagged - {name for name in flagged if "conflict" in name}) >= 0.6  # precision
    scores = [row["self_confidence"] for row in result["label_issues"]]
    assert scores == sorted(scores)  # the most suspect first
    assert all(row["suggested"] != row["given"] for row in result["label_issues"])


def test_the_report_folder_holds_the_page_the_csvs_and_an_exclude_list_train_honours(
    audited, tmp_path, capsys
):
    _root, data, _, report, result = audited
    assert {path.name for path in report.iterdir()} == {
        "audit.html",
        "audit.json",
        "duplicates.csv",
        "label_issues.csv",
        "outliers.csv",
        "exclude.txt",
        "probabilities.npy",
    }
    probabilities = np.load(report / "probabilities.npy")
    assert probabilities.shape == (result["images"], 4) and np.allclose(probabilities.sum(1), 1, atol=1e-4)
    with open(report / "label_issues.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == [row["name"] for row in result["label_issues"]]
    listed = [line for line in (report / "exclude.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(listed) == result["excluded"] and set(row["name"] for row in rows) <= set(listed)
    flags = ["--model", "tutorial", "--epochs", "1", "--exclude", str(report / "exclude.txt")]
    assert main(["train", "--data", str(data), "--out", str(tmp_path), "--name", "run", *flags]) == 0
    assert f"Left out {len(listed)} image(s) listed in" in capsys.readouterr().err
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["exclude"]["excluded"] == len(listed) and config["exclude"]["unmatched"] == 0
    assert config["train_images"] + config["val_images"] == 422 - sum(
        name.startswith("train/") for name in listed
    )


def test_a_bad_audit_request_is_one_line(planted, tmp_path, capsys):
    _, data, _ = planted
    assert main(["audit", str(data), "--folds", "1", "--out", str(tmp_path / "a")]) == 1
    assert "folds must be an integer of at least 2. Received: folds=1" in capsys.readouterr().err
    assert main(["audit", str(data), "--label-filter", "strict", "--out", str(tmp_path / "b")]) == 1
    error = capsys.readouterr().err
    assert "label_filter must be one of low_self_confidence, prune_by_noise_rate, both" in error
    assert "Received: label_filter='strict'" in error and not (tmp_path / "b").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    assert main(["audit", str(data), "--out", str(tmp_path / "full")]) == 1
    assert "already holds files" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "mine"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: `make browser` installs it")
def test_the_audit_page_shows_each_finding_with_thumbnails_in_a_browser(audited):
    *_, report, result = audited
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGUMENTS, headless=True)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((report / "audit.html").as_uri())
        for section in ("summary", "duplicates", "label-issues", "outliers", "classes"):
            assert page.locator(f"#{section}").is_visible()
        thumbnails = page.locator("#label-issues img")
        assert thumbnails.count() == len(result["label_issues"])
        widths = page.eval_on_selector_all("img", "images => images.map(image => image.naturalWidth)")
        assert widths and all(width > 0 for width in widths)  # every thumbnail decodes
        assert page.locator("#duplicates .group").count() == len(result["duplicates"])
        browser.close()
        assert errors == []


def test_audit_with_a_model_judges_only_the_images_it_did_not_train_on(planted, tmp_path):
    _, data, _ = planted
    flags = ["--model", "tutorial", "--epochs", "2", "--device", "cpu"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path), "--name", "run", *flags]) == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    report = tmp_path / "audit"
    model = str(tmp_path / "run" / "best.pt")
    assert main(["audit", str(data), "--model", model, "--label-filter", "both", "--out", str(report)]) == 0
    result = json.loads((report / "audit.json").read_text())
    assert result["method"]["label_issues"] == "model" and result["method"]["label_filter"] == "both"
    # Out of its sample: its validation split and the test folder.
    assert result["method"]["judged_images"] == config["val_images"] + result["splits"]["test"]
    judged_splits = {row["split"] for row in result["label_issues"] + result["outliers"]}
    assert judged_splits <= {"train", "test"}
