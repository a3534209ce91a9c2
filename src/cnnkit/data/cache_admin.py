"""The stores of decoded images in the cache, listed and removed (``cnnkit cache``); torch-free.

Stores are never removed by loading data (a new source, size or format version makes a new one),
so they pile up: this lists them (source, images, size, last use) and removes what is asked.

Removing is safe against other processes: a store is removed while holding the ``flock`` its
builder holds (``data.store``), so a store being built or rebuilt, and a partial folder being
written, are left alone ("busy"); and it is first renamed to a partial name, which no load reads,
so a removal cut short leaves no half store. A run that already opened a store it reads batch by
batch keeps reading it (an open file outlives its name); a run starting after the removal decodes
its data again. The ``<name>.lock`` files (empty) stay: removing one while a process waits on it
would let two builders in at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnnkit.data.cache import cnnkit_home
from cnnkit.data.store_format import (
    LOCK_BUSY,
    STORE_FORMAT_VERSION,
    StoreDamage,
    folder_bytes,
    read_meta,
    read_version,
    try_lock,
)

READY, OLD_FORMAT, DAMAGED, BUILDING, UNFINISHED = "ready", "old format", "damaged", "building", "unfinished"
# <kind>-<32 hex digits>, and its partial folders <kind>-<key>.partial-<anything>.
_NAME = re.compile(r"^(?P<base>[a-z0-9]+-[0-9a-f]{32})(?P<partial>\.partial-.+)?$")
# Formats 1-4 were one <kind>-<key>.npz file each, never read since.
_NPZ_NAME = re.compile(r"^[a-z0-9]+-[0-9a-f]{32}\.npz$")
# Memos of zip digests and surveys (``data.cache``, ``data.survey``): removed with ``--all``.
_MEMO_FOLDERS = ("hashes", "surveys")
# Without flock (Windows) a partial folder cannot be told from one being written but by its age.
_UNLOCKED_PARTIAL_AGE = 24 * 3600


@dataclass
class StoreEntry:
    """One folder of the cache: a store (``ready``, ``old format``, ``damaged``) or a partial one
    (``building``: a process is writing it; ``unfinished``: left by a build that died).

    ``last_used``: the folder's modification time, which each load of the store sets.
    """

    name: str
    path: Path
    state: str
    bytes: int
    last_used: float
    source: str | None = None
    image_size: int | None = None
    images: int | None = None
    built: float | None = None
    problem: str | None = None

    def to_json(self) -> dict:
        """The entry as JSON values (times as seconds since the epoch)."""
        values = dict(self.__dict__)
        values["path"] = str(self.path)
        return values


@dataclass
class Removal:
    """What ``clear_stores`` or ``remove_stores`` removed (or would, ``dry_run``), and what it left
    because another process holds it."""

    removed: list[StoreEntry] = field(default_factory=list)
    busy: list[StoreEntry] = field(default_factory=list)
    kept: list[StoreEntry] = field(default_factory=list)
    memo_files: int = 0

    @property
    def freed(self) -> int:
        return sum(entry.bytes for entry in self.removed)


def stores_folder(home: Path | None = None) -> Path:
    """The folder holding the stores: ``<home>/cache``, home being ``cnnkit_home()`` by default."""
    return Path(home).expanduser() / "cache" if home is not None else cnnkit_home() / "cache"


def list_stores(home: Path | None = None) -> list[StoreEntry]:
    """Every store and partial store under ``stores_folder(home)``, most recently used first.

    Reads each ``meta.json`` (not the pixels: ``damaged`` here means meta.json is unreadable or
    of the wrong shape; checksums are checked when a store is loaded).
    """
    folder = stores_folder(home)
    entries = []
    with contextlib.suppress(FileNotFoundError):
        for path in folder.iterdir():
            match = _NAME.match(path.name)
            with contextlib.suppress(FileNotFoundError):  # removed by another process meanwhile
                if match and path.is_dir() and not path.is_symlink():
                    entries.append(_describe(path, match["base"], bool(match["partial"])))
                elif _NPZ_NAME.match(path.name) and path.is_file():
                    status = path.stat()
                    problem = "one .npz file: formats 1-4"
                    entries.append(
                        StoreEntry(
                            path.name, path, OLD_FORMAT, status.st_size, status.st_mtime, problem=problem
                        )
                    )
    return sorted(entries, key=lambda entry: (-entry.last_used, entry.name))


def clear_stores(
    home: Path | None = None,
    older_than_days: float | None = None,
    everything: bool = False,
    dry_run: bool = False,
) -> Removal:
    """Remove what no load will read again: unfinished builds, stores of an older format and
    damaged ones; and also the stores last used over ``older_than_days`` days ago, or with
    ``everything`` every store (and the remembered zip digests and surveys).
    Stores being built by another process are left (``Removal.busy``).
    """
    if older_than_days is not None and (
        isinstance(older_than_days, bool)
        or not isinstance(older_than_days, int | float)
        or not math.isfinite(older_than_days)
        or older_than_days < 0
    ):
        raise ValueError(
            f"older_than_days must be a number of days >= 0. Received: older_than_days={older_than_days!r}"
        )
    now = time.time()
    removal = Removal()
    for entry in list_stores(home):
        stale = older_than_days is not None and now - entry.last_used >= older_than_days * 86400
        if entry.state == BUILDING:
            (removal.busy if everything else removal.kept).append(entry)
        elif entry.state != READY or everything or stale:
            _remove(entry, dry_run, removal)
        else:
            removal.kept.append(entry)
    if everything:
        removal.memo_files = _remove_memos(stores_folder(home), dry_run)
    return removal


def remove_stores(names: list[str], home: Path | None = None, dry_run: bool = False) -> Removal:
    """Remove the stores named (a folder name as ``list_stores`` gives it, or the start of one
    naming a single store). Every name is checked before anything is removed.

    Raises:
        ValueError: a name that names no store, or several.
    """
    entries = [entry for entry in list_stores(home) if entry.state != BUILDING]
    chosen: list[StoreEntry] = []
    for name in names:
        # A start names a store, not its partial folders (those go by their full name or clear).
        matches = [entry for entry in entries if entry.name == name] or [
            entry
            for entry in entries
            if name and entry.name.startswith(name) and ".partial-" not in entry.name
        ]
        if not matches:
            raise ValueError(
                f"No store in {stores_folder(home)} is named {name!r} (`cnnkit cache list` names "
                f"them). Received: key={name!r}"
            )
        if len(matches) > 1:
            shown = ", ".join(entry.name for entry in matches[:3])
            raise ValueError(
                f"{name!r} begins {len(matches)} store names ({shown}{', ...' if len(matches) > 3 else ''}): "
                f"give more of the name. Received: key={name!r}"
            )
        if matches[0] not in chosen:
            chosen.append(matches[0])
    removal = Removal()
    for entry in chosen:
        _remove(entry, dry_run, removal)
    return removal


def _describe(path: Path, base: str, partial: bool) -> StoreEntry:
    last_used = path.stat().st_mtime
    entry = StoreEntry(path.name, path, READY, folder_bytes(path), last_used)
    if partial:
        entry.state = BUILDING if _held(path.with_name(base)) else UNFINISHED
        return entry
    version = read_version(path)
    if version is not None and version != STORE_FORMAT_VERSION:
        entry.state, entry.problem = OLD_FORMAT, f"format {version}, this cnnkit reads {STORE_FORMAT_VERSION}"
        return entry
    try:
        meta = read_meta(path)
    except (StoreDamage, OSError) as error:
        entry.state, entry.problem = DAMAGED, str(error) if isinstance(error, StoreDamage) else "no meta.json"
        return entry
    entry.source, entry.image_size, entry.images, entry.built = (
        meta.source,
        meta.image_size,
        meta.count,
        meta.built,
    )
    return entry


def _remove(entry: StoreEntry, dry_run: bool, removal: Removal) -> None:
    """Remove ``entry`` under its store's lock, or note it busy."""
    if entry.path.suffix == ".npz":  # read by no cnnkit since format 5, so locked by none
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
        removal.removed.append(entry)
        return
    base = _NAME.match(entry.name)["base"]
    lock = try_lock(entry.path.with_name(base))
    if lock is LOCK_BUSY or (lock is None and entry.state == UNFINISHED and _young(entry)):
        removal.busy.append(entry)
        return
    try:
        if not dry_run:
            if entry.path.name == base:  # a store: out of its name first, so no load sees half of it
                doomed = entry.path.with_name(f"{base}.partial-removing-{secrets.token_hex(4)}")
                os.rename(entry.path, doomed)
            else:
                doomed = entry.path
            shutil.rmtree(doomed, ignore_errors=True)
        removal.removed.append(entry)
    finally:
        if lock is not None:
            os.close(lock)


def _held(store: Path) -> bool:
    """Whether a process holds the builder lock of ``store`` (without creating the lock file)."""
    try:
        import fcntl

        descriptor = os.open(store.with_name(store.name + ".lock"), os.O_RDWR)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # releases the probe's lock, if it took it


def _young(entry: StoreEntry) -> bool:
    return time.time() - entry.last_used < _UNLOCKED_PARTIAL_AGE


def _remove_memos(folder: Path, dry_run: bool) -> int:
    """Remove the remembered digests and surveys (each is worked out again when next needed)."""
    count = 0
    for name in _MEMO_FOLDERS:
        for path in (folder / name).glob("*") if (folder / name).is_dir() else []:
            if path.is_file() and not path.name.startswith("."):  # not a memo being written
                count += 1
                if not dry_run:
                    with contextlib.suppress(OSError):
                        path.unlink()
    return count
