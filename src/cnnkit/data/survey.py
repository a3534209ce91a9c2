"""How large the images of a source are, read from file headers, and the training size they suggest.

Photo folders hold every size. Decoding needs one size, so a training run without ``--img-size``
reads the headers of up to ``SAMPLE`` training images spread over the folder (a few hundred
kilobytes each at most, nothing decoded) and picks a size from their shorter sides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from cnnkit.data.cache import cnnkit_home, remembered_hash_file
from cnnkit.data.decode import open_header
from cnnkit.data.layout import resolve_layout
from cnnkit.data.readers import FOLDER, ZIP, Listing, list_folder, list_zip, open_reader
from cnnkit.fileio import atomic_write_text, json_text

SAMPLE = 1000
HEADER_BYTES = 256 * 1024  # JPEG's size comes after EXIF (at most 64 KiB) and its thumbnail
# The training sizes a survey may choose: small enough for a CPU, large enough for photos.
SMALLEST_SIZE, LARGEST_SIZE, SIZE_MULTIPLE = 32, 160, 16
# Bump when what a survey reads changes: remembered surveys of older code are then not used.
_SURVEY_VERSION = 1


@dataclass(frozen=True)
class SizeSurvey:
    """The sizes of a sample of a source's training images.

    Attributes:
        count: images whose header was read.
        shortest, median, longest: the smallest, median and largest shorter side, in pixels.
        uniform: ``(width, height)`` when every image read has that one size, else ``None``.
    """

    count: int
    shortest: int
    median: int
    longest: int
    uniform: tuple[int, int] | None

    @property
    def is_uniform_square(self) -> bool:
        return self.uniform is not None and self.uniform[0] == self.uniform[1]


def survey_image_sizes(
    source: str | os.PathLike, sample: int = SAMPLE, refresh: bool = False
) -> SizeSurvey | None:
    """The sizes of up to ``sample`` training images of the folder or zip ``source``, spread evenly.

    None for sources without image files (the CIFAR-10 archive: 32 x 32 throughout) and when no
    header could be read (then decoding reports each file). ``refresh``: hash a zip's bytes again
    rather than trust the digest remembered for it (``load_dataset``'s ``refresh_cache``).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _survey(FOLDER, path, list_folder(path), sample)
    if path.is_file() and path.suffix.lower() == ".zip":
        return _remembered_zip_survey(path, sample, refresh)
    return None


def _remembered_zip_survey(path: Path, sample: int, refresh: bool = False) -> SizeSurvey | None:
    """A zip's survey, remembered in the cache by the zip's content: listing a 400,000-member zip
    takes seconds, which a second run on it should not spend before reading its store."""
    cache = cnnkit_home() / "cache"
    digest = remembered_hash_file(path, cache, refresh)
    memo = cache / "surveys" / f"{digest}-{sample}-v{_SURVEY_VERSION}.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        values = json.loads(memo.read_text(encoding="utf-8"))
        if values is None:
            return None
        uniform = values.pop("uniform")
        return SizeSurvey(**values, uniform=tuple(uniform) if uniform else None)
    survey = _survey(ZIP, path, list_zip(path), sample)
    with contextlib.suppress(OSError):
        atomic_write_text(memo, json_text(dataclasses.asdict(survey) if survey else None))
    return survey


def _survey(kind: str, path: Path, listing: Listing, sample: int) -> SizeSurvey | None:
    try:
        train = [name for name, _ in resolve_layout(listing.images, str(path)).train]
    except ValueError:  # the load itself reports a layout it cannot use, in its own words
        return None
    chosen = [train[index * len(train) // sample] for index in range(min(sample, len(train)))]
    sizes = _header_sizes(open_reader(kind, path), chosen)
    if not sizes:
        return None
    shorter = sorted(min(size) for size in sizes)
    uniform = sizes[0] if all(size == sizes[0] for size in sizes) else None
    return SizeSurvey(len(sizes), shorter[0], int(statistics.median(shorter)), shorter[-1], uniform)


def choose_image_size(survey: SizeSurvey) -> int:
    """The training size for images like ``survey``'s: their own size when all are one square
    size, else the median shorter side rounded to a multiple of 16 within 32-160 px."""
    if survey.is_uniform_square:
        return survey.uniform[0]
    rounded = SIZE_MULTIPLE * round(survey.median / SIZE_MULTIPLE)
    return max(SMALLEST_SIZE, min(LARGEST_SIZE, rounded))


def _header_sizes(reader, names: list[str]) -> list[tuple[int, int]]:
    sizes = []
    try:
        for name in names:
            try:
                with open_header(reader.read_head(name, HEADER_BYTES)) as image:
                    sizes.append(image.size)
            except Exception:  # a broken file: decoding skips it later, with its reason
                continue
    finally:
        reader.close()
    return sizes
