"""Images a user leaves out of training: an ``exclude.txt`` (``cnnkit audit`` writes one, or any
text file), one image path a line, as the data names it (below its folder or in its zip);
blank lines and lines starting with ``#`` are ignored."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cnnkit.data.dataset import DataSplits, ImageData
from cnnkit.data.errors import DataError


@dataclass
class Exclusion:
    """What an exclude list did: the file, images left out, and listed paths no image has."""

    file: str
    excluded: int
    unmatched: list[str]

    def to_dict(self) -> dict:
        return {"file": self.file, "excluded": self.excluded, "unmatched": len(self.unmatched)}

    def describe(self) -> str:
        """One line for the run's output."""
        line = f"Left out {self.excluded:,} image(s) listed in {self.file}"
        if self.unmatched:
            count = len(self.unmatched)
            line += f"; {count:,} listed path(s) name no image of the data, e.g. {self.unmatched[0]}"
        return line + "."


def read_exclude_list(path: str | os.PathLike) -> list[str]:
    """The image paths listed in ``path`` (one a line; blank and ``#`` lines skipped)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(
            f"Exclude list {file} does not exist or is not a file (expected one image path a line)"
        )
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"Exclude list {file} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    lines = (line.strip().replace("\\", "/") for line in text.splitlines())
    return [line.removeprefix("./") for line in lines if line and not line.startswith("#")]


def exclude_images(splits: DataSplits, path: str | os.PathLike) -> tuple[DataSplits, Exclusion]:
    """``splits`` without the images ``path`` lists (matched by their names in the data)."""
    listed = set(read_exclude_list(path))
    if splits.train.names is None:
        raise DataError(
            f"{splits.source} has no file names to match an exclude list against (CIFAR-10 arrays)"
        )
    found: set[str] = set()

    def kept(data: ImageData | None) -> ImageData | None:
        if data is None or data.names is None:
            return data
        keep = [index for index, name in enumerate(data.names) if name not in listed]
        found.update(name for name in data.names if name in listed)
        return data if len(keep) == len(data) else data.subset(torch.tensor(keep, dtype=torch.int64))

    result = replace(
        splits, train=kept(splits.train), validation=kept(splits.validation), test=kept(splits.test)
    )
    if len(result.train) == 0:
        raise DataError(f"{path} lists every training image of {splits.source}: nothing is left to train on")
    unmatched = sorted(listed - found)
    return result, Exclusion(str(path), len(found), unmatched)
