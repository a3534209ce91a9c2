"""Run folders: ``runs/<name>/`` holding a run's config, metrics, curves, checkpoints and report.

Nothing here trains or evaluates: evaluating a checkpoint makes its report folder with these
helpers without loading the trainer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnkit.checkpoint import to_plain
from cnnkit.fileio import atomic_write_text, json_text
from cnnkit.recipes import Recipe

CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"


def output_folder(
    out: str | os.PathLike | None, default: Path | str, name: str, what: str, otherwise: str = ""
) -> Path:
    """``out`` when it is new or empty (made), else a fresh ``default/name``, ``name2``... A file or
    a folder holding files is refused in one line before any work: a report never replaces a
    run's own files or another report. ``what`` names the folder in the message, ``otherwise``
    says what no ``--out`` does."""
    if out is None:
        return create_run_folder(default, name)
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        held = "already holds files" if folder.is_dir() else "is a file"
        instead = f" ({otherwise})" if otherwise else ""
        raise ValueError(
            f"The {what} folder {folder} {held}: give a new or empty folder{instead}. "
            f"Received: out={str(out)!r}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def create_run_folder(out: str | os.PathLike = "runs", name: str | None = None) -> Path:
    """Make a fresh folder ``out/name`` (default name ``train``), numbered if it exists.

    ``train``, ``train2``, ``train3``... as Ultralytics does: an earlier run is never overwritten.
    """
    base = name or "train"
    if not re.fullmatch(r"[\w.\-]+", base):
        raise ValueError(f"A run name may hold letters, digits, '.', '-' and '_'. Received: name={base!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        folder = out / (base if number == 1 else f"{base}{number}")
        try:
            folder.mkdir()  # atomic: two concurrent runs never share a folder
            return folder
        except FileExistsError:
            number += 1


def write_config(folder: Path, config: dict[str, Any]) -> None:
    """``config.yaml``: the run's settings, readable by people and by ``read_run_config``."""
    text = yaml.safe_dump(to_plain(config), sort_keys=False, allow_unicode=True)
    atomic_write_text(folder / CONFIG_FILE, text)


def write_report(folder: Path, report: dict[str, Any]) -> None:
    atomic_write_text(folder / REPORT_FILE, json_text(to_plain(report), indent=2, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class RunConfig:
    """What a run's ``config.yaml`` says to train again: the data, the whole recipe, the precision."""

    path: Path
    data: str
    recipe: Recipe
    precision: str
    strict: bool
    values: dict[str, Any]  # everything the file holds


def read_run_config(path: str | os.PathLike) -> RunConfig:
    """Read a ``config.yaml`` that a run wrote (or a run folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Run config not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a readable YAML file.") from None
    if not isinstance(values, dict) or not isinstance(values.get("recipe"), dict) or "data" not in values:
        raise ValueError(f"{path} is not a cnnkit run config: it needs 'data' and a 'recipe' mapping.")
    try:
        recipe = Recipe.from_dict(values["recipe"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return RunConfig(
        path=path,
        data=str(values["data"]),
        recipe=recipe,
        precision=str(values.get("precision", "auto")),
        strict=bool(values.get("strict", False)),
        values=values,
    )
