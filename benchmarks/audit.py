"""The data audit (issue 22): does ``cnnkit audit`` find planted label errors, duplicates and leaks?

Builds, from ``../shared/data/cifar10-jpeg-train.zip``, a ``train/`` (9,000 images) and ``test/``
(1,000) folder layout of 10,000 images with 10 % of the labels flipped (seeded, each to a random
other class: the file goes into the other class's folder), then plants, in a copy of that data:
20 exact copies of training images into ``test/`` (leaks across splits), 20 exact copies into
another class's folder (label conflicts), and 20 near copies (re-encoded as JPEG quality 60)
beside their originals (within class). Runs ``cnnkit audit DIR`` with no other flag and prints
the label errors' precision and recall (on the 10,000 original images), how many planted
duplicates were found by kind, and the time, with the CPU. Targets: precision and recall of at
least 0.7 each, every planted duplicate found, at most 15 minutes on 2 cores.

    python benchmarks/audit.py [--out /tmp/cifar10-audit] [--images 10000]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from machine import cpu_description

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
FLIP_SHARE, PLANTED = 0.10, 20


def build(source: Path, out: Path, count: int, seed: int = 0) -> tuple[Path, set[str], dict[str, list[str]]]:
    """The data folder, the paths (below it) of the flipped images, and the planted copies by kind."""
    generator = np.random.default_rng(seed)
    with zipfile.ZipFile(source) as archive:
        members = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
        chosen = [members[index] for index in sorted(generator.choice(len(members), count, replace=False))]
        classes = sorted({member.split("/")[-2] for member in members})
        flipped: set[str] = set()
        paths: list[tuple[str, str, bytes]] = []  # (split, class folder, bytes) per image
        test = set(generator.choice(count, count // 10, replace=False).tolist())
        flips = set(generator.choice(count, int(FLIP_SHARE * count), replace=False).tolist())
        for index, member in enumerate(chosen):
            label = original = member.split("/")[-2]
            if index in flips:
                label = classes[
                    (classes.index(label) + int(generator.integers(1, len(classes)))) % len(classes)
                ]
            split = "test" if index in test else "train"
            # The zip numbers images within a class: the original class keeps names unique.
            relative = f"{split}/{label}/{original}-{Path(member).name}"
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            data = archive.read(member)
            (out / relative).write_bytes(data)
            if index in flips:
                flipped.add(relative)
            paths.append((split, label, data))
    planted = plant_duplicates(out, paths, classes, generator)
    return out, flipped, planted


def plant_duplicates(out: Path, paths, classes: list[str], generator) -> dict[str, list[str]]:
    """Copies of training images: into test/ (same class), into another class, re-encoded beside."""
    training = [item for item in paths if item[0] == "train"]
    picks = generator.choice(len(training), 3 * PLANTED, replace=False)
    planted: dict[str, list[str]] = {"across splits": [], "across classes": [], "within class": []}
    for number, pick in enumerate(picks):
        _, label, data = training[pick]
        kind = list(planted)[number // PLANTED]
        if kind == "across splits":
            relative = f"test/{label}/planted-{number}.jpg"
        elif kind == "across classes":
            other = classes[(classes.index(label) + 1) % len(classes)]
            relative = f"train/{other}/planted-{number}.jpg"
        else:
            buffer = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buffer, format="JPEG", quality=60)
            data, relative = buffer.getvalue(), f"train/{label}/planted-{number}.jpg"
        (out / relative).write_bytes(data)
        planted[kind].append(relative)
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cifar10-audit"))
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--set", action="append", default=[], help="passed to cnnkit audit")
    options = parser.parse_args()
    data = options.out / "data"
    if data.exists():
        raise SystemExit(f"{data} exists: remove it (the planted files are built fresh)")
    data, flipped, planted = build(options.source, data, options.images)
    report = options.out / f"report-{int(time.time())}"
    command = [sys.executable, "-m", "cnnkit", "audit", str(data), "--out", str(report)]
    command += [item for text in options.set for item in ("--set", text)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    result = json.loads((report / "audit.json").read_text())
    flagged = {row["name"] for row in result["label_issues"]} - {
        p for paths in planted.values() for p in paths
    }
    hits = len(flagged & flipped)
    print(f"CPU: {cpu_description()}; {options.images:,} images, {len(flipped):,} labels flipped")
    print(
        f"label errors: flagged {len(flagged):,}, precision {hits / max(1, len(flagged)):.3f}, "
        f"recall {hits / len(flipped):.3f}"
    )
    relations = {
        member["name"]: group["relations"] for group in result["duplicates"] for member in group["members"]
    }
    for kind, paths in planted.items():
        found = sum(kind in relations.get(path, ()) for path in paths)
        print(f"planted {kind}: {found}/{len(paths)} found in a group marked {kind}")
    print(f"duplicate groups in all: {len(result['duplicates'])}; audit time {seconds:.0f} s")


if __name__ == "__main__":
    main()
