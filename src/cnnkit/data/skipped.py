"""Files an image-folder load skipped, why, and how to report them.

Reasons come from a closed set of wordings (built here, or by the decoder), so that each
skipped file's category, used by summaries and by strict mode, follows from its reason alone.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from cnnkit.data.errors import DataError
from cnnkit.fileio import atomic_write_text

NOT_IMAGE = "not image"
UNSUPPORTED = "unsupported"
UNREADABLE = "unreadable"
HIDDEN = "hidden"
UNUSED = "unused"
UNSAFE = "unsafe"
EMPTY = "empty"
LABEL_MISMATCH = "label table"

HIDDEN_FILE = "hidden file"
HIDDEN_FOLDER = "hidden folder"
OUTSIDE_CLASSES = "image outside the class folders"
EMPTY_FOLDER = "empty folder: no class is made of it"
# A multi-label table's rows and images that do not match (data.label_table).
LABEL_TABLE_PREFIX = "labels: "
_UNSAFE_PREFIX = "unsafe path in the archive"
_NOT_IMAGE_PREFIX = "not an image file"
_UNSUPPORTED_PREFIX = "unsupported image format"
_SYSTEM_PREFIX = "system "
_CATEGORY_PREFIXES = (
    (_NOT_IMAGE_PREFIX, NOT_IMAGE),
    (_UNSUPPORTED_PREFIX, UNSUPPORTED),
    (HIDDEN_FILE, HIDDEN),
    (HIDDEN_FOLDER, HIDDEN),
    (_SYSTEM_PREFIX, HIDDEN),
    (OUTSIDE_CLASSES, UNUSED),
    (_UNSAFE_PREFIX, UNSAFE),
    (EMPTY_FOLDER, EMPTY),
    (LABEL_TABLE_PREFIX, LABEL_MISMATCH),
)
# (singular, plural) in summaries, in the order they are listed.
_CATEGORY_LABELS = {
    NOT_IMAGE: ("not an image", "not images"),
    UNSUPPORTED: ("unsupported format", "unsupported formats"),
    UNREADABLE: ("unreadable", "unreadable"),
    HIDDEN: ("hidden", "hidden"),
    UNUSED: ("outside the class folders", "outside the class folders"),
    UNSAFE: ("unsafe path", "unsafe paths"),
    EMPTY: ("empty folder", "empty folders"),
    LABEL_MISMATCH: ("not matched by the label table", "not matched by the label table"),
}
# Files and folders that operating systems, photo tools and NAS boxes drop into folders.
_SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"}
_SYSTEM_FOLDERS = {"__macosx", "@eadir", "$recycle.bin", "system volume information"}
# Photo formats people do have in their folders but the decoder does not read.
_UNSUPPORTED_IMAGE_EXTENSIONS = {
    ".heic", ".heif", ".avif", ".jxl", ".svg", ".psd", ".ico", ".raw", ".dng", ".cr2", ".cr3",
    ".nef", ".arw", ".orf", ".rw2",
}  # fmt: skip


@dataclass(frozen=True)
class SkippedFile:
    """A file that loading did not use, and why.

    Attributes:
        path: the file as the user would name it: a path below the folder given, or
            ``member in archive.zip``; a skipped folder ends with ``/``.
        reason: one line, e.g. ``not an image file (.txt)``, ``hidden file``, or the decoder's
            ``cannot decode (OSError: image file is truncated ...)``.
    """

    path: str
    reason: str

    @property
    def category(self) -> str:
        """``"not image"``, ``"unsupported"``, ``"unreadable"``, ``"hidden"`` or ``"unused"``."""
        for prefix, category in _CATEGORY_PREFIXES:
            if self.reason.startswith(prefix):
                return category
        return UNREADABLE

    @property
    def is_os_clutter(self) -> bool:
        """Hidden and system files: skipped even in strict mode, as nobody put them there."""
        return self.category == HIDDEN


def clutter_reason(name: str, is_folder: bool) -> str | None:
    """Why the file or folder called ``name`` (one path component) is OS clutter, or ``None``."""
    lowered = name.lower()
    if is_folder and lowered in _SYSTEM_FOLDERS:
        return f"{_SYSTEM_PREFIX}folder ({name})"
    if not is_folder and lowered in _SYSTEM_FILES:
        return f"{_SYSTEM_PREFIX}file ({name.strip()})"
    if name.startswith("."):
        # Also macOS's "._photo.jpg" resource forks, which carry an image extension.
        return HIDDEN_FOLDER if is_folder else HIDDEN_FILE
    return None


def unsafe_member_reason(name: str) -> str | None:
    """Why a zip member's name is no path inside the archive (absolute, or climbing out), or None.

    Such names come from crafted or broken archives; cnnkit never extracts, but a name like
    ``/cat.jpg`` would make a class called '' and ``../x/cat.jpg`` one called '..'.
    """
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return f"{_UNSAFE_PREFIX} (absolute)"
    if ".." in name.replace("\\", "/").split("/"):
        return f"{_UNSAFE_PREFIX} (it leads outside the archive)"
    return None


def path_clutter(relative_path: str) -> tuple[str, str] | None:
    """The clutter in a relative POSIX path: ``(the cluttered file or folder, reason)`` or ``None``.

    A folder is returned with a trailing ``/``, so every file below it maps to one record.
    """
    parts = relative_path.rstrip("/").split("/")
    is_folder_entry = relative_path.endswith("/")
    for index, part in enumerate(parts):
        is_folder = index < len(parts) - 1 or is_folder_entry
        reason = clutter_reason(part, is_folder)
        if reason is not None:
            return "/".join(parts[: index + 1]) + ("/" if is_folder else ""), reason
    return None


def not_image_reason(name: str) -> str:
    """The reason recorded for a file whose extension is not a supported image type."""
    extension = os.path.splitext(name)[1].lower()
    if extension in _UNSUPPORTED_IMAGE_EXTENSIONS:
        return f"{_UNSUPPORTED_PREFIX} ({extension}); convert it to JPEG or PNG"
    return f"{_NOT_IMAGE_PREFIX} ({extension or 'no extension'})"


def strict_error(skipped: SkippedFile) -> DataError:
    """The error strict mode raises for the first file it cannot use."""
    return DataError(
        f"{skipped.path}: {skipped.reason}; strict mode stops at any file that is not a usable "
        "image (without strict such files are skipped and listed)"
    )


def first_problem(skipped: Sequence[SkippedFile]) -> SkippedFile | None:
    """The first skipped file that is not OS clutter: what strict mode refuses.

    Files refused by their name (type, place) come before undecodable ones, as a strict load
    finds those in the listing, before it decodes anything: a cached list names the same file.
    """
    problems = [file for file in skipped if not file.is_os_clutter]
    by_name = [file for file in problems if file.category != UNREADABLE]
    return (by_name or problems or [None])[0]


def skipped_summary(
    skipped: Sequence[SkippedFile], total: int, list_path: str | os.PathLike | None = None
) -> str:
    """One line summing up ``skipped``, e.g. ``Skipped 4 of 1,204 files (2 not images, 1 hidden)``.

    Args:
        skipped: the skipped files (``DataSplits.skipped``).
        total: how many files there were in all: ``DataSplits.file_count``. A skipped folder
            (``__MACOSX/``) counts as one.
        list_path: where the full list was written (``write_skipped_list``), named at the end.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < len(skipped):
        raise ValueError(
            f"total must be an integer of at least len(skipped)={len(skipped)}. Received: total={total!r}"
        )
    counts = Counter(file.category for file in skipped)
    parts = []
    for category, (singular, plural) in _CATEGORY_LABELS.items():
        if counts[category]:
            parts.append(f"{counts[category]:,} {singular if counts[category] == 1 else plural}")
    line = f"Skipped {len(skipped):,} of {total:,} file{'' if total == 1 else 's'}"
    if parts:
        line += f" ({', '.join(parts)})"
    if list_path is not None:
        line += f"; list in {os.fspath(list_path)}"
    return line


def write_skipped_list(path: str | os.PathLike, skipped: Sequence[SkippedFile]) -> None:
    """Write ``skipped`` to ``path`` atomically: a ``#`` header line, then ``path<TAB>reason`` lines.

    Tabs and line breaks inside a name are written as ``\\t``, ``\\n`` and ``\\r`` so that each
    file stays one line of two columns.
    """
    lines = [f"# {len(skipped)} skipped file{'' if len(skipped) == 1 else 's'}: path<TAB>reason"]
    lines += [f"{_one_field(file.path)}\t{_one_field(file.reason)}" for file in skipped]
    text = "\n".join(lines) + "\n"
    # Undecodable bytes in a file name (kept by Python as surrogates) would make a UTF-8 write
    # fail; written as escapes instead.
    atomic_write_text(path, text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _one_field(text: str) -> str:
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
