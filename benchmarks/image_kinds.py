"""Does the default recipe learn every kind of image? (issue 19)

Builds eight kinds of image folder, from code and from the shared CIFAR-10 zip, and trains each
twice as a user would: once with no flag but ``--data`` (the default recipe), once with the
Keras tutorial's recipe (``--model tutorial``). Prints one table: validation accuracy of both,
the largest class's share (what always answering it scores), whether the run diverged or said it
learned nothing, and the time. Every image kind is one a user brings and a photo set is not:

- ``flat-colours``: five hues with a little noise (a flat image: nearly no patch variance);
- ``digits-on-black``: ten digits drawn in white on black, slightly rotated, at random places;
- ``outlines-on-white``: five shapes drawn as thin black outlines on white;
- ``glyphs``: eight letters, small and dark on a light page, as a scan of text;
- ``grayscale-dark``: greyscale blurred bright blobs, bars and rings on a dark background (X-ray-like);
- ``tiny-8px``: the digits at 8x8 in 16 grey levels (scikit-learn's digits' size and depth);
- ``photos``: 1,000 CIFAR-10 photos (10 classes) from ``../shared/data/cifar10-jpeg-train.zip``;
- ``icons``: filled shapes in flat random colours on flat random backgrounds (screenshots, logos).

    python benchmarks/image_kinds.py [--out /tmp/image-kinds] [--kinds flat-colours icons]
        [--recipes default tutorial] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from machine import cpu_description

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
SIDE = 32

# A kind: (images uint8 (N, H, W) or (N, H, W, 3), labels, class names).
Kind = tuple[np.ndarray, np.ndarray, list[str]]


def flat_colours(count: int = 200, seed: int = 0) -> Kind:
    """Five hues, each image one colour with a little noise (the issue's first failure)."""
    hues = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (220, 210, 40)}
    hues["purple"] = (140, 50, 160)
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % len(hues)
    base = np.array(list(hues.values()), dtype=np.float32)[labels][:, None, None, :]
    shade = generator.uniform(-25, 25, size=(count, 1, 1, 1))  # lighter or darker, per image
    noise = generator.normal(0, 3, size=(count, SIDE, SIDE, 3))
    return _to_uint8(base + shade + noise), labels, list(hues)


def _draw_glyph(
    text: str, side: int, generator: np.random.Generator, ink: int, paper: int, size_range, angle: float
) -> np.ndarray:
    """One character in a random font size, place and small rotation, as a greyscale array."""
    canvas = Image.new("L", (side * 2, side * 2), paper)
    font = ImageFont.load_default(size=int(generator.integers(*size_range)))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = side - (right + left) / 2 + generator.uniform(-side / 6, side / 6)
    y = side - (bottom + top) / 2 + generator.uniform(-side / 6, side / 6)
    draw.text((x, y), text, fill=ink, font=font)
    canvas = canvas.rotate(generator.uniform(-angle, angle), resample=Image.BILINEAR, fillcolor=paper)
    return np.asarray(canvas.crop((side // 2, side // 2, side // 2 + side, side // 2 + side)))


def digits_on_black(count: int = 600, seed: int = 0, side: int = SIDE) -> Kind:
    """Ten digits in white strokes on black, slightly rotated (MNIST-like)."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    size_range = (max(6, side * 5 // 8), max(7, side * 7 // 8))
    images = np.stack([_draw_glyph(str(label), side, generator, 255, 0, size_range, 12) for label in labels])
    return images, labels, [str(digit) for digit in range(10)]


def glyphs(count: int = 480, seed: int = 0) -> Kind:
    """Eight letters, small and dark grey on a light, slightly uneven page (a scan of text)."""
    letters = list("AEHKMRSW")
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % len(letters)
    images = []
    for label in labels:
        paper = int(generator.integers(215, 250))
        glyph = _draw_glyph(
            letters[label], SIDE, generator, int(generator.integers(10, 70)), paper, (11, 18), 4
        )
        images.append(glyph.astype(np.float32) + generator.normal(0, 2, glyph.shape))
    return _to_uint8(np.stack(images)), labels, letters


def _shape_points(shape: str, centre: tuple[float, float], radius: float, turn: float) -> list:
    corners = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}.get(shape)
    if shape == "star":
        angles = [turn + math.pi * k / 5 for k in range(10)]
        radii = [radius if k % 2 == 0 else radius * 0.45 for k in range(10)]
    else:
        angles = [turn + 2 * math.pi * k / corners for k in range(corners)]
        radii = [radius] * corners
    return [
        (centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, generator, fill=None, outline=None, width=1) -> None:
    radius = generator.uniform(SIDE * 0.22, SIDE * 0.42)
    centre = tuple(generator.uniform(radius + 1, SIDE - radius - 1, size=2))
    if shape == "circle":
        box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    else:
        points = _shape_points(shape, centre, radius, generator.uniform(0, 2 * math.pi))
        draw.polygon(points, fill=fill, outline=outline, width=width)


def _shape_kind(shapes: list[str], count: int, seed: int, draw_one) -> Kind:
    """Images of ``shapes`` in turn, each drawn by ``draw_one(shape, generator)`` -> uint8 array."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % len(shapes)
    return np.stack([draw_one(shapes[label], generator) for label in labels]), labels, shapes


def outlines_on_white(count: int = 300, seed: int = 0) -> Kind:
    """Five shapes as thin black outlines on white (drawings, diagrams)."""

    def draw_one(shape: str, generator: np.random.Generator) -> np.ndarray:
        canvas = Image.new("L", (SIDE, SIDE), 255)
        width = int(generator.integers(1, 3))
        _draw_shape(ImageDraw.Draw(canvas), shape, generator, outline=0, width=width)
        return np.asarray(canvas)

    return _shape_kind(["circle", "triangle", "square", "star", "hexagon"], count, seed, draw_one)


def icons(count: int = 360, seed: int = 0) -> Kind:
    """Filled shapes in a flat random colour on a flat random background: the class is the shape."""

    def draw_one(shape: str, generator: np.random.Generator) -> np.ndarray:
        background, foreground = generator.integers(0, 256, size=(2, 3))
        while np.abs(background - foreground).sum() < 150:  # the shape must show
            foreground = generator.integers(0, 256, size=3)
        canvas = Image.new("RGB", (SIDE, SIDE), tuple(int(v) for v in background))
        _draw_shape(ImageDraw.Draw(canvas), shape, generator, fill=tuple(int(v) for v in foreground))
        return np.asarray(canvas)

    return _shape_kind(["circle", "triangle", "square", "star", "pentagon", "hexagon"], count, seed, draw_one)


def grayscale_dark(count: int = 400, seed: int = 0) -> Kind:
    """Greyscale, mostly black: blurred bright blobs, bars and rings (an X-ray or microscope look)."""
    kinds = ["one-blob", "two-blobs", "ring", "bar", "cross"]
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % len(kinds)
    images = []
    for label in labels:
        canvas = Image.new("L", (SIDE, SIDE), int(generator.integers(0, 20)))
        draw, light = ImageDraw.Draw(canvas), int(generator.integers(120, 230))
        x, y = generator.uniform(10, 22, size=2)
        r = generator.uniform(4, 7)
        turn = generator.uniform(0, math.pi)
        if kinds[label] in ("one-blob", "two-blobs"):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=light)
            if kinds[label] == "two-blobs":
                dx, dy = 9 * math.cos(turn), 9 * math.sin(turn)
                draw.ellipse(
                    [x + dx - r * 0.8, y + dy - r * 0.8, x + dx + r * 0.8, y + dy + r * 0.8], fill=light
                )
        elif kinds[label] == "ring":
            draw.ellipse([x - r - 3, y - r - 3, x + r + 3, y + r + 3], outline=light, width=2)
        else:
            for angle in [turn] if kinds[label] == "bar" else [turn, turn + math.pi / 2]:
                dx, dy = 11 * math.cos(angle), 11 * math.sin(angle)
                draw.line([x - dx, y - dy, x + dx, y + dy], fill=light, width=3)
        blurred = canvas.filter(ImageFilter.GaussianBlur(generator.uniform(0.8, 1.6)))
        images.append(np.asarray(blurred).astype(np.float32) + generator.normal(0, 2, (SIDE, SIDE)))
    return _to_uint8(np.stack(images)), labels, kinds


def tiny_digits(count: int = 600, seed: int = 0) -> Kind:
    """The digits at 8x8 in 16 grey levels, as scikit-learn's handwritten digits are stored."""
    images, labels, names = digits_on_black(count, seed, side=32)
    small = np.stack([np.asarray(Image.fromarray(image).resize((8, 8), Image.BOX)) for image in images])
    return (small // 16 * 17).astype(np.uint8), labels, names


def photos(count: int = 1000, seed: int = 0, source: Path = DEFAULT_SOURCE) -> Kind:
    """CIFAR-10 photos, the same number from each class, drawn from the shared zip."""
    generator = np.random.default_rng(seed)
    with zipfile.ZipFile(source) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
        classes = sorted({name.split("/")[-2] for name in names})
        chosen: list[str] = []
        for name in classes:
            members = [member for member in names if member.split("/")[-2] == name]
            chosen += list(generator.choice(members, size=count // len(classes), replace=False))
        images = np.stack([np.asarray(Image.open(archive.open(name)).convert("RGB")) for name in chosen])
    labels = np.array([classes.index(name.split("/")[-2]) for name in chosen])
    return images, labels, classes


KINDS: dict[str, Callable[..., Kind]] = {
    "flat-colours": flat_colours,
    "digits-on-black": digits_on_black,
    "outlines-on-white": outlines_on_white,
    "glyphs": glyphs,
    "grayscale-dark": grayscale_dark,
    "tiny-8px": tiny_digits,
    "photos": photos,
    "icons": icons,
}


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def write_folder(root: Path, kind: Kind) -> Path:
    """``root/<class>/<index>.png`` for every image (greyscale kinds as greyscale PNGs)."""
    images, labels, names = kind
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    return root


def train_once(data: Path, run: Path, extra: list[str]) -> dict:
    """``cnnkit train --data DATA`` plus ``extra`` as a user runs it; the run's figures."""
    command = [sys.executable, "-m", "cnnkit", "train", "--data", str(data), "--out", str(run.parent)]
    command += ["--name", run.name, "--quiet", *extra]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = finished.stdout + finished.stderr
    report_path = run / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    evaluation = report.get("evaluation") or {}
    return {
        "exit": finished.returncode,
        "seconds": seconds,
        # best.pt scored on the validation split with the recipe's test-time augmentation: the
        # figure the run prints last (the data has no test folder).
        "val_accuracy": evaluation.get("accuracy"),
        "learned": report.get("learned"),
        "diverged": "diverged" in output or "became" in output,
        "retried": "again from step" in output,
        "last_line": output.strip().splitlines()[-1][:200] if output.strip() else "",
    }


RECIPE_FLAGS = {"default": [], "tutorial": ["--model", "tutorial"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/image-kinds"))
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPE_FLAGS), default=list(RECIPE_FLAGS))
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    print(f"CPU: {cpu_description()}; seed {options.seed}")
    rows = []
    for name in options.kinds:
        kind = KINDS[name](seed=options.seed)
        data = options.out / name / "data"
        if not data.exists():
            write_folder(data, kind)
        largest_share = np.bincount(kind[1]).max() / len(kind[1])
        row = {"kind": name, "images": len(kind[1]), "classes": len(kind[2]), "largest_class": largest_share}
        for recipe in options.recipes:
            run = options.out / name / f"run-{recipe}-{options.seed}"
            row[recipe] = train_once(data, run, [*RECIPE_FLAGS[recipe], "--seed", str(options.seed)])
            print(name, recipe, json.dumps(row[recipe]), flush=True)
        rows.append(row)
    print()
    print(_table(rows, options.recipes))


def _table(rows: list[dict], recipes: list[str]) -> str:
    header = "| kind | images | classes | largest class |"
    header += "".join(f" {recipe}: val acc | {recipe}: s | {recipe}: outcome |" for recipe in recipes)
    lines = [header, "|" + "---|" * (4 + 3 * len(recipes))]
    for row in rows:
        line = f"| {row['kind']} | {row['images']} | {row['classes']} | {row['largest_class']:.3f} |"
        for recipe in recipes:
            result = row[recipe]
            accuracy = "-" if result["val_accuracy"] is None else f"{result['val_accuracy']:.3f}"
            outcome = f"exit {result['exit']}" + (", learned nothing" if result["learned"] is False else "")
            outcome += ", retried" if result["retried"] else ""
            line += f" {accuracy} | {result['seconds']:.0f} | {outcome} |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
