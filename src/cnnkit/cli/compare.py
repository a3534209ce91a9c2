"""``cnnkit compare``: runs side by side, as a table and as overlaid curves."""

from __future__ import annotations

import argparse
from typing import Any

from cnnkit.fileio import json_text


def add_parser(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="compare runs: a table of their settings and figures, and their curves in one plot",
        description="One row a run: model, recipe, the fields where the runs differ, parameters, epochs, "
        "time, best and final validation accuracy and loss, the epoch of the lowest validation loss "
        "(where overfitting starts) and test accuracy. Writes comparison.png and comparison.json.",
    )
    compare.add_argument(
        "runs", nargs="+", metavar="RUN", help="a run folder, or a checkpoint in one (runs/x/best.pt)"
    )
    compare.add_argument(
        "--out",
        help="folder for comparison.png and comparison.json, new or empty "
        "(default: a new runs/compare, runs/compare2, ...)",
    )
    compare.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    compare.set_defaults(handler=_compare)


def _compare(arguments: argparse.Namespace) -> int:
    from cnnkit.experiments.compare import compare_runs

    comparison = compare_runs(arguments.runs, out=arguments.out)
    if arguments.json:
        print(json_text(comparison.to_dict()))
        return 0
    print(comparison.table)
    differing = ", ".join(comparison.differing_fields) or "none: the same settings"
    print(f"Fields that differ: {differing}")
    print(f"Curves (train dashed, validation solid): {comparison.files['plot']}")
    return 0
