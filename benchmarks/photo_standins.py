"""Photo-like stand-in image folders built from the CIFAR-10 JPEG zip, for work on users' photo folders.

Users train on folders of their own photos: mixed sizes and aspect ratios, real resolution, JPEGs and
PNGs with assorted file names and the odd greyscale, palette or RGBA file, in the usual
``train/val/test`` layout. No such photos are available offline, so this script fakes them: each
image is a CIFAR-10 training image, randomly cropped (at least 75% of each side kept, so the object
stays), upscaled with bicubic or Lanczos filtering to a shorter side of 64-256 px at an aspect ratio
(long:short) between 1:1 and 16:9, portrait or landscape, lightly altered (brightness and contrast
within a few percent, a little Gaussian noise or a slight blur) and saved as JPEG (quality 75-95,
about 75% of files) or PNG (about 25%). About 2% of all files are RGBA PNGs (opaque alpha), about 2%
palette PNGs and about 2% greyscale JPEGs, to exercise mode handling.

What they are not: real photos. They are upscaled 32x32 images with no high-frequency detail, a
square source stretched by up to 4:3 for the widest ratios (a 75%-per-side crop reaches 4:3 at
most), and the same 32-px content at any resolution. They are fit for testing decoding, resizing,
layouts, memory and speed at photo-like sizes; accuracy measured on them says nothing final about
real photos.

Kinds (the counts are per class; every count and the class set are options):

- ``small``: airplane, automobile, bird, cat; 60 train, 25 val, 50 test.
- ``large``: all 10 classes; 2,000 train, 300 val, 500 test.
- ``finetune``: frog, horse, ship, truck (the last four CIFAR classes); 60 train, 40 val,
  100 test, plus ``DIR/pretrain/train/<class>/`` holding the other six classes' original 32x32
  JPEGs, copied byte for byte (all 5,000 each), to pretrain a CIFAR network on classes the
  target photos never show.

Each split draws on different source images, and a seed gives the same files byte for byte on
every run (each image has its own random stream, so the worker count does not matter).

    python benchmarks/photo_standins.py --out /tmp/photos --kind small
    python benchmarks/photo_standins.py --out /tmp/photos --kind large --per-class 200 --workers 2
    python benchmarks/photo_standins.py --out /tmp/photos --kind finetune [--seed 0]
        [--source ../shared/data/cifar10-jpeg-train.zip] [--classes frog,horse]
        [--per-class 60] [--val-per-class 40] [--test-per-class 100] [--pretrain-per-class 5000]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
SPLITS = ("train", "val", "test")

# Defaults per kind: how many classes, and the train/val/test/pretrain images per class.
KIND_DEFAULTS = {
    "small": {"classes": 4, "train": 60, "val": 25, "test": 50},
    "large": {"classes": 10, "train": 2000, "val": 300, "test": 500},
    "finetune": {"classes": 4, "train": 60, "val": 40, "test": 100, "pretrain": 5000},
}

SHORTER_SIDE_RANGE = (64, 256)
LONGEST_RATIO = 16 / 9
# The crop keeps at least this share of each side of the 32x32 source, so the object stays in view.
SMALLEST_CROP_SHARE = 0.75
JPEG_QUALITY_RANGE = (75, 95)
PNG_SHARE = 0.25
# Odd modes stay rare, as in real folders: shares of the PNGs / JPEGs, about 2% of all files each.
RGBA_SHARE_OF_PNG = 0.08
PALETTE_SHARE_OF_PNG = 0.08
GREY_SHARE_OF_JPEG = 0.025

# Camera, phone, download and scan naming styles; {number} is unique within a folder.
NAME_PATTERNS = (
    "IMG_{number:04d}",
    "DSC{number:05d}",
    "DSCN{number:04d}",
    "photo_{number:04d}",
    "image-{number}",
    "PXL_2023{number:04d}_120455",
    "{number:05d}",
    "scan {number:03d}",
)
JPEG_EXTENSIONS = (".jpg", ".jpg", ".jpg", ".JPG", ".jpeg")


@dataclass(frozen=True)
class Task:
    """One stand-in image to make: the source member, where to write it, and its random stream."""

    member: str
    folder: str  # relative to the output directory, e.g. "train/cat"
    stem: str  # the file name without extension, chosen by the main process (unique per folder)
    seed: tuple[int, ...]


@dataclass(frozen=True)
class Written:
    """What was written for one image, for the summary."""

    split: str
    size: tuple[int, int]
    mode: str
    extension: str
    bytes: int


def crop_box(generator: np.random.Generator, source_size: int, width: int, height: int) -> tuple:
    """A random sub-pixel crop of the square source, as close to ``width:height`` as the 75% rule allows.

    The remaining mismatch in aspect ratio (up to 16:9 against 4:3) is taken up by the resize as a mild
    stretch, rather than by cropping away the object.
    """
    long_share = generator.uniform(0.85, 1.0)
    ratio = max(width, height) / min(width, height)
    short_share = long_share / ratio
    if short_share < SMALLEST_CROP_SHARE:
        # Too wide a crop for the 75% rule: widen the long side (up to all of it) to limit the stretch.
        short_share = SMALLEST_CROP_SHARE
        long_share = max(long_share, min(1.0, SMALLEST_CROP_SHARE * ratio))
    crop_width, crop_height = (long_share, short_share) if width >= height else (short_share, long_share)
    crop_width, crop_height = crop_width * source_size, crop_height * source_size
    left = generator.uniform(0, source_size - crop_width)
    top = generator.uniform(0, source_size - crop_height)
    return (left, top, left + crop_width, top + crop_height)


def target_size(generator: np.random.Generator) -> tuple[int, int]:
    """A photo-like (width, height): shorter side 64-256 px, long:short 1 to 16:9, either orientation."""
    shorter = int(generator.integers(SHORTER_SIDE_RANGE[0], SHORTER_SIDE_RANGE[1] + 1))
    longer = round(shorter * generator.uniform(1.0, LONGEST_RATIO))
    return (longer, shorter) if generator.random() < 0.5 else (shorter, longer)


def add_realism(generator: np.random.Generator, image: Image.Image) -> Image.Image:
    """Slight camera-like variation: brightness and contrast within 5%, then noise or a blur (or neither)."""
    image = ImageEnhance.Brightness(image).enhance(generator.uniform(0.95, 1.05))
    image = ImageEnhance.Contrast(image).enhance(generator.uniform(0.95, 1.05))
    choice = generator.random()
    if choice < 0.45:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + generator.normal(0.0, generator.uniform(1.0, 3.0), pixels.shape)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    elif choice < 0.8:
        image = image.filter(ImageFilter.GaussianBlur(generator.uniform(0.3, 0.8)))
    return image


def encode(generator: np.random.Generator, image: Image.Image) -> tuple[bytes, str, str]:
    """The image as file bytes in a random format and mode; returns (data, extension, mode)."""
    buffer = io.BytesIO()
    if generator.random() < PNG_SHARE:
        mode_draw = generator.random()
        if mode_draw < RGBA_SHARE_OF_PNG:
            # Opaque alpha, as screenshots and exported photos carry: decoding must drop it cleanly.
            image = image.convert("RGBA")
        elif mode_draw < RGBA_SHARE_OF_PNG + PALETTE_SHARE_OF_PNG:
            image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        image.save(buffer, "PNG", compress_level=6)
        return buffer.getvalue(), ".png", image.mode
    if generator.random() < GREY_SHARE_OF_JPEG:
        image = image.convert("L")
    quality = int(generator.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    # Phones and cameras at high quality often keep full chroma; the rest use 4:2:0.
    subsampling = "4:4:4" if quality >= 90 and generator.random() < 0.5 else "4:2:0"
    image.save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue(), str(generator.choice(JPEG_EXTENSIONS)), image.mode


def make_standin(source_bytes: bytes, seed: tuple[int, ...]) -> tuple[bytes, str, str, tuple[int, int]]:
    """One photo-like image from one CIFAR JPEG: (file bytes, extension, mode, (width, height))."""
    generator = np.random.default_rng(np.random.SeedSequence(seed))
    with Image.open(io.BytesIO(source_bytes)) as source:
        source = source.convert("RGB")
    width, height = target_size(generator)
    box = crop_box(generator, source.width, width, height)
    resample = Image.Resampling.BICUBIC if generator.random() < 0.5 else Image.Resampling.LANCZOS
    image = add_realism(generator, source.resize((width, height), resample, box=box))
    data, extension, mode = encode(generator, image)
    return data, extension, mode, (width, height)


# Each worker opens the zip once; tasks then carry only a member name (bounded memory, small pickles).
_worker_archive: zipfile.ZipFile | None = None
_worker_output: Path | None = None


def _start_worker(source: str, output: str) -> None:
    global _worker_archive, _worker_output
    _worker_archive = zipfile.ZipFile(source)
    _worker_output = Path(output)


def run_task(task: Task) -> Written:
    """Make and write one stand-in (in a worker, or in the main process after ``_start_worker``)."""
    data, extension, mode, size = make_standin(_worker_archive.read(task.member), task.seed)
    path = _worker_output / task.folder / (task.stem + extension)
    path.write_bytes(data)
    return Written(task.folder.split("/")[0], size, mode, extension.lower(), len(data))


def class_members(archive: zipfile.ZipFile) -> dict[str, list[str]]:
    """The source's images by class, both sorted: the class order is the CIFAR-10 label order."""
    members: dict[str, list[str]] = {}
    for name in sorted(archive.namelist()):
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "train" and parts[2].lower().endswith(".jpg"):
            members.setdefault(parts[1], []).append(name)
    if not members:
        sys.exit(f"No train/<class>/<image>.jpg members in the source zip {archive.filename}")
    return members


def file_stems(generator: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct camera-style file names (without extension) for one folder."""
    numbers = generator.choice(np.arange(1, 10000), size=count, replace=False)
    patterns = generator.integers(0, len(NAME_PATTERNS), size=count)
    return [
        NAME_PATTERNS[pattern].format(number=int(number))
        for pattern, number in zip(patterns, numbers, strict=True)
    ]


def plan_tasks(members: dict[str, list[str]], classes: list[str], counts: dict[str, int], seed: int):
    """The tasks for every split and class, with disjoint source images per split.

    Each class's images are shuffled with the seed, then cut into consecutive train, val and test
    slices, so no source image appears in two splits.
    """
    class_index = {name: index for index, name in enumerate(sorted(members))}
    tasks = []
    for name in classes:
        shuffled = np.random.default_rng([seed, class_index[name]]).permutation(members[name])
        start = 0
        for split_index, split in enumerate(SPLITS):
            chosen = shuffled[start : start + counts[split]]
            start += counts[split]
            naming = np.random.default_rng([seed, class_index[name], split_index, 1])
            for member, stem in zip(chosen, file_stems(naming, len(chosen)), strict=True):
                # Seeded by the source image itself: the same file whatever the order or worker.
                number = int(Path(member).stem)
                tasks.append(Task(str(member), f"{split}/{name}", stem, (seed, class_index[name], number)))
    return tasks


def copy_pretrain(
    archive: zipfile.ZipFile, members: dict[str, list[str]], classes: list[str], per_class: int, output: Path
) -> tuple[int, int]:
    """Copy the first ``per_class`` original JPEGs of each class to ``output/pretrain/train/<class>/``."""
    files, written = 0, 0
    for name in classes:
        folder = output / "pretrain" / "train" / name
        folder.mkdir(parents=True)
        for member in members[name][:per_class]:
            data = archive.read(member)
            (folder / Path(member).name).write_bytes(data)
            files, written = files + 1, written + len(data)
    return files, written


def resolve_classes(argument: str | None, kind: str, all_classes: list[str]) -> list[str]:
    """The classes for ``--classes``: a comma-separated list of names, or a count N.

    A count takes the first N classes in label order, or for ``finetune`` the last N, so that the
    default four are frog, horse, ship and truck and the pretraining classes are the rest.
    """
    argument = argument or str(KIND_DEFAULTS[kind]["classes"])
    if argument.isdigit():
        count = int(argument)
        if not 1 <= count <= len(all_classes) - (kind == "finetune"):
            sys.exit(f"--classes {count}: expected 1 to {len(all_classes) - (kind == 'finetune')}")
        return all_classes[-count:] if kind == "finetune" else all_classes[:count]
    chosen = [name.strip() for name in argument.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(all_classes))
    if unknown:
        sys.exit(f"--classes: unknown {', '.join(unknown)} (the source has {', '.join(all_classes)})")
    return sorted(set(chosen), key=all_classes.index)


def resolve_counts(arguments: argparse.Namespace) -> dict[str, int]:
    """Images per class in each split, and originals per pretraining class.

    Unset val/test counts scale with ``--per-class``, so a quick run with fewer training images keeps
    the kind's proportions instead of making the full val/test sets.
    """
    defaults = KIND_DEFAULTS[arguments.kind]
    train = arguments.per_class if arguments.per_class is not None else defaults["train"]
    scale = train / defaults["train"]
    counts = {
        "train": train,
        "val": arguments.val_per_class
        if arguments.val_per_class is not None
        else max(1, round(defaults["val"] * scale)),
        "test": arguments.test_per_class
        if arguments.test_per_class is not None
        else max(1, round(defaults["test"] * scale)),
    }
    counts["pretrain"] = (
        arguments.pretrain_per_class
        if arguments.pretrain_per_class is not None
        else defaults.get("pretrain", 0)
    )
    if min(counts.values()) < 0 or train < 1:
        sys.exit("Counts must be positive (--per-class at least 1)")
    return counts


def generate(tasks: list[Task], source: str, output: Path, workers: int) -> list[Written]:
    """Run the tasks, in a pool of ``workers`` processes when more than one."""
    for folder in sorted({task.folder for task in tasks}):
        (output / folder).mkdir(parents=True)
    if workers <= 1:
        _start_worker(source, str(output))
        return [run_task(task) for task in tasks]
    # imap_unordered with modest chunks: each worker holds one image at a time, and results are
    # small records, so memory stays flat however many images are made.
    with multiprocessing.Pool(workers, initializer=_start_worker, initargs=(source, str(output))) as pool:
        return list(pool.imap_unordered(run_task, tasks, chunksize=32))


def summarise(written: list[Written], pretrain: tuple[int, int, float] | None, seconds: float) -> None:
    """Print counts per split, the size range, formats and modes, bytes and time.

    ``pretrain`` is (files, bytes, seconds) of the copied originals, or ``None``; ``seconds`` is the
    stand-ins' time alone, so the rate per 1,000 is comparable between kinds.
    """
    for split in SPLITS:
        in_split = [record for record in written if record.split == split]
        print(f"{split:>5}: {len(in_split):6d} images, {sum(r.bytes for r in in_split) / 2**20:8.1f} MiB")
    if pretrain:
        print(
            f"pretrain/train: {pretrain[0]} original 32x32 JPEGs, {pretrain[1] / 2**20:.1f} MiB, "
            f"copied in {pretrain[2]:.1f} s"
        )
    if written:
        widths = [record.size[0] for record in written]
        heights = [record.size[1] for record in written]
        shorter = [min(record.size) for record in written]
        portrait = sum(record.size[1] > record.size[0] for record in written)
        print(
            f"sizes: width {min(widths)}-{max(widths)}, height {min(heights)}-{max(heights)}, "
            f"shorter side {min(shorter)}-{max(shorter)} px; {portrait} portrait of {len(written)}"
        )
        formats = Counter(f"{record.extension} {record.mode}" for record in written)
        print("files: " + ", ".join(f"{key} {count}" for key, count in sorted(formats.items())))
    total = sum(record.bytes for record in written) + (pretrain[1] if pretrain else 0)
    rate = seconds / len(written) * 1000 if written else 0.0
    print(f"total: {total / 2**20:.1f} MiB; stand-ins made in {seconds:.1f} s ({rate:.2f} s per 1,000)")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (must not exist, or be empty)")
    parser.add_argument("--kind", required=True, choices=sorted(KIND_DEFAULTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="the CIFAR-10 JPEG zip")
    parser.add_argument("--classes", help="a count N, or comma-separated class names (default per kind)")
    parser.add_argument("--per-class", type=int, help="training images per class (default per kind)")
    parser.add_argument("--val-per-class", type=int, help="default per kind, scaled with --per-class")
    parser.add_argument("--test-per-class", type=int, help="default per kind, scaled with --per-class")
    parser.add_argument("--pretrain-per-class", type=int, help="finetune only: originals per class (5000)")
    parser.add_argument("--workers", type=int, help="processes (default 2 for large, else 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    output = arguments.out
    # Never write over anything: the output folder must be new or empty.
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        sys.exit(f"{output} exists and is not an empty folder; choose a new --out")
    counts = resolve_counts(arguments)
    with zipfile.ZipFile(arguments.source) as archive:
        members = class_members(archive)
        all_classes = sorted(members)
        classes = resolve_classes(arguments.classes, arguments.kind, all_classes)
        needed = counts["train"] + counts["val"] + counts["test"]
        smallest = min(len(members[name]) for name in classes)
        if needed > smallest:
            sys.exit(f"{needed} images per class requested, but a class has only {smallest} in the source")
        tasks = plan_tasks(members, classes, counts, arguments.seed)
        pretrain = None
        if arguments.kind == "finetune" and counts["pretrain"] > 0:
            started = time.perf_counter()
            others = [name for name in all_classes if name not in classes]
            files, size = copy_pretrain(archive, members, others, counts["pretrain"], output)
            pretrain = (files, size, time.perf_counter() - started)
    workers = arguments.workers or (2 if arguments.kind == "large" else 1)
    started = time.perf_counter()
    written = generate(tasks, arguments.source, output, workers)
    seconds = time.perf_counter() - started
    print(
        f"{output} ({arguments.kind}, seed {arguments.seed}, {workers} worker(s), "
        f"{len(classes)} classes: {', '.join(classes)})"
    )
    summarise(written, pretrain, seconds)


if __name__ == "__main__":
    main()
