"""Multi-label CIFAR-10 mosaics (issue 21): the data set the multi-label benchmark trains on.

Builds, from ``../shared/data/cifar10-jpeg-train.zip``, 64-px mosaics of 2x2 tiles: each mosaic
holds one to four CIFAR-10 images of *distinct* classes in random tiles, the other tiles blank
(mid grey); its labels are those classes. ``mosaics.zip`` (training, with its ``labels.csv``) uses
the zip's first 40,000 images in a seeded order, ``mosaics-test.zip`` the other 10,000: no tile of
a test mosaic was ever seen in training. Each zip holds ``images/<n>.png`` and a ``labels.csv``
(``image,labels``, labels separated by spaces).

    python benchmarks/multi_label.py [--out /tmp/mosaics] [--train 10000] [--test 2000] [--variants ...]

Then trains ``cnnkit train --data mosaics.zip`` with no other flag (and each other variant asked
for), scores ``best.pt`` with ``cnnkit evaluate --data mosaics-test.zip`` and prints the test mAP,
micro- and macro-F1 (at the thresholds chosen on the validation split), the validation mAP and
the time, beside the CPU.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from cnnkit_runs import train_and_evaluate
from machine import cpu_description

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
TILE, BLANK = 32, 128
TRAIN_SOURCE_IMAGES = 40_000  # of the zip's 50,000, in a seeded order; the rest feed the test mosaics
VARIANTS = {
    "default": [],  # no flag but --data: the photo recipe (64 px), a threshold a label on validation
    # Random-resized crops can cut a labelled tile out of the picture: milder crops keep them.
    "crops 0.75-1": ["--set", "crop_scale=[0.75,1.0]"],
    "default, seed 1": ["--set", "seed=1"],
    "twice the epochs": ["--set", "epochs=16"],
}


def read_tiles(source: Path, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(member, class) of the zip's images, shuffled and cut into the training and test pools."""
    with zipfile.ZipFile(source) as archive:
        members = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
    pairs = [(member, member.split("/")[-2]) for member in members]
    order = np.random.default_rng(seed).permutation(len(pairs))
    shuffled = [pairs[index] for index in order]
    return shuffled[:TRAIN_SOURCE_IMAGES], shuffled[TRAIN_SOURCE_IMAGES:]


def mosaic(archive: zipfile.ZipFile, pool: list[tuple[str, str]], generator: np.random.Generator):
    """One 64x64 mosaic from ``pool`` (tiles of distinct classes), and its sorted labels."""
    count = int(generator.integers(1, 5))
    by_class: dict[str, str] = {}
    while len(by_class) < count:
        member, name = pool[int(generator.integers(len(pool)))]
        by_class.setdefault(name, member)
    pixels = np.full((2 * TILE, 2 * TILE, 3), BLANK, dtype=np.uint8)
    for tile, member in zip(generator.permutation(4)[:count], by_class.values(), strict=False):
        top, left = (tile // 2) * TILE, (tile % 2) * TILE
        image = Image.open(io.BytesIO(archive.read(member))).convert("RGB")
        pixels[top : top + TILE, left : left + TILE] = np.asarray(image)
    return pixels, sorted(by_class)


def write_mosaics(source: Path, path: Path, pool: list[tuple[str, str]], count: int, seed: int) -> None:
    """``count`` mosaics into the zip ``path`` (written whole, then renamed into place)."""
    generator = np.random.default_rng(seed)
    partial = path.with_suffix(".partial")
    rows = ["image,labels"]
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(partial, "w") as output:
        for number in range(count):
            pixels, labels = mosaic(archive, pool, generator)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            name = f"images/{number:05d}.png"
            output.writestr(name, buffer.getvalue())
            rows.append(f"{name},{' '.join(labels)}")
        output.writestr("labels.csv", "\n".join(rows) + "\n")
    partial.replace(path)


def build(source: Path, out: Path, train: int, test: int, seed: int = 0) -> tuple[Path, Path]:
    """``out/mosaics.zip`` and ``out/mosaics-test.zip`` (kept when they exist)."""
    out.mkdir(parents=True, exist_ok=True)
    train_pool, test_pool = read_tiles(source, seed)
    paths = (out / "mosaics.zip", out / "mosaics-test.zip")
    for path, pool, count, offset in ((paths[0], train_pool, train, 1), (paths[1], test_pool, test, 2)):
        if not path.exists():
            write_mosaics(source, path, pool, count, seed + offset)
    return paths


def train_variant(train: Path, test: Path, runs: Path, variant: str) -> dict:
    """Train one variant into ``runs``, evaluate its best.pt on ``test``; the figures."""
    trained = train_and_evaluate(train, test, runs, variant.replace(".", ""), VARIANTS[variant])
    if trained.error:
        return {"variant": variant, "error": trained.error, "seconds": trained.seconds}
    scored, report = trained.evaluation, trained.report
    return {
        "variant": variant,
        **{name: scored[name] for name in ("map", "micro_f1", "macro_f1", "count")},
        "validation_map": report["evaluation"]["map"],
        "epochs": report["epochs"],
        "seconds": trained.seconds,
        "train_seconds": report["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mosaics"))
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["default"])
    options = parser.parse_args()
    train, test = build(options.source, options.out, options.train, options.test)
    print(f"CPU: {cpu_description()}")
    for path in (train, test):
        with zipfile.ZipFile(path) as archive:
            rows = archive.read("labels.csv").decode().splitlines()[1:]
        sizes = np.bincount([len(row.split(",", 1)[1].split()) for row in rows], minlength=5)[1:]
        print(f"{path}: {len(rows):,} mosaics; 1 to 4 labels: {sizes.tolist()}")
    columns = "test mAP | test micro-F1 | test macro-F1 | validation mAP | epochs | run (s) | training (s)"
    print(f"| variant | {columns} |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in options.variants:
        row = train_variant(train, test, options.out / "runs", variant)
        if "error" in row:
            print(f"| {variant} | {row['error']} | | | | | {row['seconds']:.0f} | |", flush=True)
            continue
        figures = " | ".join(f"{row[name]:.4f}" for name in ("map", "micro_f1", "macro_f1", "validation_map"))
        timing = f"{row['epochs']} | {row['seconds']:.0f} | {row['train_seconds']:.0f}"
        print(f"| {variant} | {figures} | {timing} |", flush=True)


if __name__ == "__main__":
    main()
