"""``cnnkit audit DATA``: what a data set holds (duplicates, leaks, suspected label errors,
outliers, class counts) written as a report folder; the data is never changed."""

from __future__ import annotations

import argparse
from typing import Any

from cnnkit.cli.common import add_runtime_arguments


def add_parser(commands: Any) -> None:
    audit = commands.add_parser(
        "audit",
        help="find duplicates, leaks between splits, suspected label errors and outliers in a data set",
        description="Read DATA as `cnnkit train` does and report what it holds, into a folder with "
        "audit.html, audit.json, a CSV a finding and exclude.txt (for cnnkit train --exclude). The "
        "data is never changed.",
    )
    audit.add_argument("data", help="an image folder or .zip (the train/val/test layout too), or cifar10")
    audit.add_argument(
        "--model",
        metavar="CHECKPOINT",
        help="judge labels by this model's probabilities on the images it did not train on "
        "(default: k-fold cross-validation with a quick recipe)",
    )
    audit.add_argument("--folds", type=int, default=4, help="cross-validation folds (default: 4)")
    audit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change the cross-validation recipe, e.g. --set epochs=4",
    )
    audit.add_argument(
        "--near-distance",
        type=int,
        default=10,
        help="perceptual-hash bits near duplicates may differ by, 0 to 11 (default: 10); -1: exact only",
    )
    audit.add_argument(
        "--label-filter",
        metavar="FILTER",
        help="which images confident learning flags: low_self_confidence (default: as many as it "
        "estimates wrong, lowest self-confidence first), prune_by_noise_rate (cleanlab's default) or both",
    )
    audit.add_argument("--labels", metavar="CSV", help="a multi-label table kept apart from the data")
    audit.add_argument("--out", metavar="DIR", help="report folder, new or empty (default: runs/audit)")
    audit.add_argument("--strict", action="store_true", help="stop at the first unusable file")
    add_runtime_arguments(audit)
    audit.set_defaults(handler=_audit)


def _audit(arguments: argparse.Namespace) -> int:
    from cnnkit.recipes import parse_assignment
    from cnnkit.runs.audit import audit, describe_audit

    overrides = dict(parse_assignment(text) for text in arguments.set)
    result = audit(
        arguments.data,
        model=arguments.model,
        out=arguments.out,
        folds=arguments.folds,
        overrides=overrides,
        near_distance=None if arguments.near_distance < 0 else arguments.near_distance,
        labels=arguments.labels,
        strict=arguments.strict,
        device=arguments.device,
        precision=arguments.precision or "auto",
        **({"label_filter": arguments.label_filter} if arguments.label_filter else {}),
    )
    print(describe_audit(result))
    return 0
