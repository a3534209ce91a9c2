"""``cnnkit cache list|clear|remove``: the stores of decoded images in ``CNNKIT_HOME/cache``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cnnkit.fileio import json_text


def add_parser(commands: Any) -> None:
    cache = commands.add_parser(
        "cache",
        help="list or remove the stores of decoded images",
        description="Decoded images are kept in stores under CNNKIT_HOME/cache (default "
        "~/.cache/cnnkit/cache), one per source and image size, and never removed by training. "
        "A folder's store is keyed by its files' names, sizes and modification times: a file "
        "rewritten with the same ones is not noticed (`cnnkit train --no-cache` rebuilds it).",
    )
    actions = cache.add_subparsers(dest="cache_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="each store: name, state, images, size, last use, source")
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    listing.set_defaults(handler=_list)

    clear = actions.add_parser(
        "clear",
        help="remove unfinished, damaged and old-format stores; with a flag, unused ones too",
        description="Remove what no run will read again: unfinished builds, damaged stores and stores "
        "of an older format; with --older-than also the stores not used for DAYS days, with --all "
        "every store. Stores another process is building are left.",
    )
    which = clear.add_mutually_exclusive_group()
    which.add_argument("--older-than", type=float, metavar="DAYS", help="also stores unused for DAYS days")
    which.add_argument("--all", action="store_true", help="every store, and the remembered zip digests")
    clear.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    clear.set_defaults(handler=_clear)

    remove = actions.add_parser("remove", help="remove the stores named (as `cnnkit cache list` names them)")
    remove.add_argument("names", nargs="+", metavar="NAME", help="a store's name, or its start")
    remove.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    remove.set_defaults(handler=_remove)


def _list(arguments: argparse.Namespace) -> int:
    from cnnkit.data.cache_admin import list_stores, stores_folder
    from cnnkit.data.store_format import format_bytes

    entries = list_stores()
    folder = stores_folder()
    if arguments.json:
        print(json_text({"folder": str(folder), "stores": [entry.to_json() for entry in entries]}, indent=2))
        return 0
    if not entries:
        print(f"No stores in {folder}.")
        return 0
    rows = [("NAME", "STATE", "IMAGES", "SIZE", "LAST USED", "SOURCE")]
    for entry in entries:
        size = f" at {entry.image_size} px" if entry.image_size else ""
        rows.append(
            (
                entry.name,
                entry.state,
                f"{entry.images:,}" if entry.images is not None else "-",
                format_bytes(entry.bytes),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used)),
                f"{entry.source}{size}" if entry.source else (entry.problem or "-"),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        cells = [
            cell.rjust(width) if column in (2, 3) else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join([*cells, row[5]]))
    total = format_bytes(sum(entry.bytes for entry in entries))
    print(f"{len(entries)} store{'s' if len(entries) != 1 else ''}, {total}, in {folder}")
    return 0


def _clear(arguments: argparse.Namespace) -> int:
    from cnnkit.data.cache_admin import clear_stores

    removal = clear_stores(
        older_than_days=arguments.older_than, everything=arguments.all, dry_run=arguments.dry_run
    )
    _report(removal, arguments.dry_run)
    if removal.memo_files:
        verb = "Would remove" if arguments.dry_run else "Removed"
        print(f"{verb} {removal.memo_files} remembered zip digest and survey files.")
    if removal.kept and not arguments.all:
        print(
            f"Kept {len(removal.kept)} store{'s' if len(removal.kept) != 1 else ''} in use "
            "(--older-than DAYS or --all removes those too; `cnnkit cache list` shows them)."
        )
    return 0


def _remove(arguments: argparse.Namespace) -> int:
    from cnnkit.data.cache_admin import remove_stores

    removal = remove_stores(arguments.names, dry_run=arguments.dry_run)
    _report(removal, arguments.dry_run)
    return 1 if removal.busy else 0


def _report(removal: Any, dry_run: bool) -> None:
    from cnnkit.data.store_format import format_bytes

    verb = "Would remove" if dry_run else "Removed"
    for entry in removal.removed:
        print(f"{verb} {entry.path} ({format_bytes(entry.bytes)}, {entry.state})")
    for entry in removal.busy:
        print(f"Left {entry.path}: another process is building it")
    if removal.removed:
        print(f"{'Would free' if dry_run else 'Freed'} {format_bytes(removal.freed)}.")
    elif not removal.busy:
        print("Nothing to remove.")
