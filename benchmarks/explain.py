"""Grad-CAM's pointing game (issue 22): does the heatmap's peak fall on the object that was classified?

Builds, from ``../shared/data/cifar10-jpeg-train.zip``, 64-px images of 2x2 tiles: one CIFAR-10
image (32 px) in a random tile, the other three blank (mid grey); the label is that image's class.
The training images (class folders of PNGs under ``--out``) and the held-out ones use disjoint
tiles of the zip, in a seeded order: no held-out tile was seen in training. Then trains
``cnnkit train --data DIR`` with no other flag (``--epochs`` overrides the recipe's, for a quick
check), loads ``best.pt`` and, on the held-out images, resized and centre-cropped as prediction
does them, computes Grad-CAM maps for the predicted class and for the true one: a hit is a map
whose peak, mapped back from the centre crop to the 64-px image, lies in the object's tile. Chance
is 25 %; the issue's target is 90 %.

Blank tiles give the object away: the only texture in the image is the object's, and an untrained
network of the same architecture points at it too (measured: 100 % on 300 images). So the table
shows that baseline beside the trained figures, and ``--background scrambled`` fills the other
tiles with other training images' pixels shuffled (natural colours and contrast, no object), where
pointing has to come from what the network learned.

    python benchmarks/explain.py [--out /tmp/explain] [--train 10000] [--test 1000] [--epochs N]
        [--background blank|scrambled]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnkit import Classifier
from cnnkit.data.decode import resize_array
from cnnkit.models import create_model
from cnnkit.runtime.device import configure_process
from cnnkit.runtime.explanation import explain_pixels
from machine import cpu_description

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
TILE, BLANK = 32, 128
SIDE = 2 * TILE


def read_pools(source: Path, train: int, test: int, seed: int) -> tuple[list, list]:
    """(member, class) pairs of the zip's images, shuffled: ``train`` for training, ``test`` after them."""
    with zipfile.ZipFile(source) as archive:
        members = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
    if train + test > len(members):
        raise SystemExit(f"--train + --test must be at most {len(members)}. Received: {train + test}")
    order = np.random.default_rng(seed).permutation(len(members))
    pairs = [(members[index], members[index].split("/")[-2]) for index in order]
    return pairs[:train], pairs[train : train + test]


def read_tile(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    with Image.open(io.BytesIO(archive.read(member))) as image:
        return np.asarray(image.convert("RGB"))


def compose(
    archive: zipfile.ZipFile, member: str, pool: list, background: str, generator: np.random.Generator
) -> tuple[np.ndarray, int]:
    """A 64-px image with ``member``'s pixels in a random tile (0 top-left, 1 top-right, 2 and 3
    below), and that tile. The other tiles: mid grey (``blank``), or other images of ``pool`` with
    their pixels shuffled (``scrambled``: natural colours and contrast, no object)."""
    pixels = np.full((SIDE, SIDE, 3), BLANK, dtype=np.uint8)
    tile = int(generator.integers(4))
    for position in range(4):
        if position == tile:
            content = read_tile(archive, member)
        elif background == "scrambled":
            other = read_tile(archive, pool[int(generator.integers(len(pool)))][0]).reshape(-1, 3)
            content = other[generator.permutation(len(other))].reshape(TILE, TILE, 3)
        else:
            continue
        top, left = (position // 2) * TILE, (position % 2) * TILE
        pixels[top : top + TILE, left : left + TILE] = content
    return pixels, tile


def write_training_folder(source: Path, folder: Path, pool: list, background: str, seed: int) -> None:
    """``folder/<class>/<n>.png`` for every pair in ``pool`` (written whole, then renamed into place)."""
    generator = np.random.default_rng(seed)
    partial = folder.with_name(folder.name + ".partial")
    with zipfile.ZipFile(source) as archive:
        for number, (member, name) in enumerate(pool):
            target = partial / name / f"{number:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(compose(archive, member, pool, background, generator)[0]).save(target)
    partial.rename(folder)


def held_out(
    source: Path, pool: list, background: str, seed: int
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The held-out images (uint8 ``(N, 64, 64, 3)``), their class names and their object's tile."""
    generator = np.random.default_rng(seed)
    with zipfile.ZipFile(source) as archive:
        composed = [compose(archive, member, pool, background, generator) for member, _ in pool]
    images, tiles = zip(*composed, strict=True)
    return np.stack(images), [name for _, name in pool], np.array(tiles)


def train(folder: Path, runs: Path, name: str, epochs: float | None) -> tuple[Path, float]:
    """``cnnkit train --data folder`` (plus ``--set epochs=`` when asked) into a fresh folder under
    ``runs`` (cnnkit numbers a run name that exists: its own folder keeps best.pt's path known);
    best.pt and the seconds."""
    runs.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=runs))
    command = [sys.executable, "-m", "cnnkit", "train", "--data", str(folder), "--out", str(out)]
    command += ["--name", "run", "--quiet", *(["--set", f"epochs={epochs}"] if epochs else [])]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode:
        raise SystemExit(f"Training failed: {finished.stderr.strip()}")
    return out / "run" / "best.pt", time.perf_counter() - started


def peak_tiles(maps: np.ndarray, resize_size: int) -> np.ndarray:
    """The 64-px image's tile under each map's peak (-1 for an all-zero map). A map covers the centre
    crop of the image resized to ``resize_size``: its pixel centres are mapped back through both."""
    crop = maps.shape[1]
    rows, columns = np.unravel_index(maps.reshape(len(maps), -1).argmax(1), maps.shape[1:])
    offset = (resize_size - crop) // 2  # center_crop_images's offsets
    scale = SIDE / resize_size
    rows, columns = ((position + offset + 0.5) * scale - 0.5 for position in (rows, columns))
    tiles = (rows >= TILE).astype(int) * 2 + (columns >= TILE).astype(int)
    return np.where(maps.reshape(len(maps), -1).max(1) > 0, tiles, -1)


def pointing_game(classifier: Classifier, images: np.ndarray, labels: np.ndarray, tiles: np.ndarray) -> dict:
    """Accuracy and the hit rates of the predicted and the true class's maps, and of an untrained
    network of the same architecture (what the images alone give away); the explaining time."""
    resized = images
    if classifier.resize_size != SIDE:  # as prediction resizes a file (data.decode's one policy)
        resized = np.stack([resize_array(image, classifier.resize_size) for image in images])
    predicted = classifier.predict(resized).argmax(1)  # TTA and any logit offset included
    view = classifier.model_view(torch.as_tensor(resized)).contiguous()
    network, normalization = classifier.network, classifier.normalization
    started = time.perf_counter()
    predicted_maps = explain_pixels(network, view, normalization, class_indices=predicted)
    seconds = time.perf_counter() - started
    true_maps = explain_pixels(network, view, normalization, class_indices=labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = create_model(network.model_name, **network.model_arguments).eval()
    untrained_maps = explain_pixels(untrained, view, normalization)
    hits = {
        name: float((peak_tiles(maps, classifier.resize_size) == tiles).mean())
        for name, maps in (("predicted", predicted_maps), ("true", true_maps), ("untrained", untrained_maps))
    }
    return {"accuracy": float((predicted == labels).mean()), **hits, "explain_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/explain"))
    parser.add_argument("--train", type=int, default=10_000, help="training images (default: 10,000)")
    parser.add_argument("--test", type=int, default=1_000, help="held-out images (default: 1,000)")
    parser.add_argument("--epochs", type=float, help="override the recipe's epochs (a quick check)")
    parser.add_argument("--background", choices=("blank", "scrambled"), default="blank")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    configure_process()
    train_pool, test_pool = read_pools(options.source, options.train, options.test, options.seed)
    name = f"{options.background}-{options.train}-seed{options.seed}"
    folder = options.out / f"tiles-{name}"
    if not folder.exists():
        write_training_folder(options.source, folder, train_pool, options.background, options.seed + 1)
    run_name = name + (f"-epochs{options.epochs:g}" if options.epochs else "")
    checkpoint, train_seconds = train(folder, options.out / "runs", run_name, options.epochs)
    classifier = Classifier.load(checkpoint, device="cpu")
    images, names, tiles = held_out(options.source, test_pool, options.background, options.seed + 2)
    labels = np.array([classifier.class_names.index(name) for name in names])
    row = pointing_game(classifier, images, labels, tiles)
    print(f"CPU: {cpu_description()}; {torch.get_num_threads()} threads")
    print(
        f"{options.train:,} training images, {options.test:,} held out, {options.background} tiles around "
        f"the object; model {classifier.model_name} at {classifier.image_size} px (stored at "
        f"{classifier.resize_size}), recipe {classifier.recipe.name if classifier.recipe else '?'}"
    )
    columns = "test accuracy | pointing game: predicted class | true class | untrained network"
    print(f"| {columns} | run (s) | Grad-CAM (ms/image) |")
    print("|---|---|---|---|---|---|")
    figures = " | ".join(f"{row[key]:.4f}" for key in ("accuracy", "predicted", "true", "untrained"))
    per_image = 1000 * row["explain_seconds"] / max(1, len(images))
    print(f"| {figures} | {train_seconds:.0f} | {per_image:.1f} |")


if __name__ == "__main__":
    main()
