"""``cnnkit train``: every recipe field is settable, familiar ones by their own flag, all by ``--set``.

The recipe comes from ``--recipe`` (a name or a YAML file) or ``--config`` (a run's config.yaml,
to run it again as it was); the flags below and ``--set FIELD=VALUE`` change its fields, and the
``Recipe`` validates them. A new familiar flag is one line in ``RECIPE_FLAGS``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from cnnkit.cli.common import add_runtime_arguments

# flag -> (recipe field, type, help). Any other field: --set FIELD=VALUE.
RECIPE_FLAGS: dict[str, tuple[str, type, str]] = {
    "--model": ("model", str, "model name (see `cnnkit models`)"),
    "--epochs": ("epochs", float, "epochs; may be fractional (0.5: half an epoch)"),
    "--batch-size": ("batch_size", int, "images per step"),
    "--lr": ("learning_rate", float, "learning rate (the recipe's learning_rate)"),
    "--val-split": ("validation_split", float, "validation share, stratified (0 trains on everything)"),
    "--img-size": ("image_size", int, "resize images to this square size"),
    "--seed": ("seed", int, "seeds the initial weights, the split, the data order and augmentation"),
    "--patience": (
        "patience",
        int,
        "stop after N epochs without a better --monitor value (restores the best)",
    ),
    "--monitor": (
        "monitor",
        str,
        "what picks best.pt and early stopping: val_accuracy, val_loss, val_balanced_accuracy, val_macro_f1",
    ),
    "--optimizer": ("optimizer", str, "adam, sgd or muon"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing in [0, 1)"),
    "--cutout": ("cutout", int, "zero a random square of this side in each training image (0: off)"),
    "--tta": ("tta", int, "test-time augmentation: 0 none, 1 mirror, 2 mirror and shifts"),
    "--freeze-epochs": ("freeze_epochs", int, "fine-tuning: epochs that train the head alone first"),
}
_DEST_PREFIX = "recipe_"
# Flags that describe a new run: --resume continues one as it was configured, so takes none.
_NEW_RUN_FLAGS = ("data", "recipe", "config", "name", "init", "pretrained")


def add_parser(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="train a model into runs/<name>/",
        description="Train a model into a new run folder. Every recipe field can be set: the flags "
        "below, or --set FIELD=VALUE for any field (`cnnkit models --recipe NAME` lists them).",
    )
    train.add_argument(
        "--data",
        help="cifar10 (the default, downloaded), its .tar.gz or cifar-10-batches-py folder, "
        "or an image folder or .zip",
    )
    train.add_argument(
        "--labels",
        metavar="CSV",
        help="multi-label: a table of image,labels rows (labels separated by spaces, ; or |), paths "
        "below the data's root; a labels.csv inside the data is found without this flag",
    )
    train.add_argument(
        "--exclude",
        metavar="TXT",
        help="leave out the images this file lists, one path a line (cnnkit audit writes exclude.txt)",
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument("--recipe", help="a named recipe (see `cnnkit models`) or a YAML recipe file")
    source.add_argument(
        "--config", metavar="CONFIG_YAML", help="a run's config.yaml: train again with its data and recipe"
    )
    for flag, (field, kind, text) in RECIPE_FLAGS.items():
        train.add_argument(flag, dest=_DEST_PREFIX + field, type=kind, help=text)
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set any recipe field, e.g. --set label_smoothing=0.1 "
        "--set model_arguments.widths=[128,384,384]",
    )
    train.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from another run's weights (the head is replaced for new classes)",
    )
    train.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        metavar="FILE",
        help="start --model resnet18|resnet50 from ImageNet weights (downloaded once, or this local file)",
    )
    train.add_argument(
        "--resume", metavar="RUN_FOLDER", help="continue a stopped run from its last.pt, as configured"
    )
    train.add_argument(
        "--strict", action="store_true", help="stop on the first unusable file instead of skipping it"
    )
    train.add_argument(
        "--no-cache",
        action="store_true",
        help="decode the data again into a new store (a folder's store is keyed by file names, sizes "
        "and times: a file rewritten with the same ones is not noticed); see `cnnkit cache`",
    )
    add_runtime_arguments(train)
    train.add_argument("--out", default="runs", help="folder holding run folders (default: runs)")
    train.add_argument("--name", help="run folder name (default: train, train2, ...)")
    train.add_argument("--quiet", action="store_true", help="no progress or epoch lines")
    train.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cnnkit.engine.distributed import shutdown

    finished = False
    try:
        code = _train_or_resume(arguments)
        finished = True
        return code
    finally:
        # Leave a torchrun job cleanly (a no-op for one process). After a normal finish every rank
        # gets here, so they meet first; after a failure a peer may never come, so no meeting.
        shutdown(synchronize=finished)


def recipe_overrides(arguments: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields the command line sets: its flags, then each ``--set`` (one field once)."""
    from cnnkit.recipes import parse_assignment

    overrides = {
        field: getattr(arguments, _DEST_PREFIX + field)
        for field, _, _ in RECIPE_FLAGS.values()
        if getattr(arguments, _DEST_PREFIX + field) is not None
    }
    for text in arguments.set:
        key, value = parse_assignment(text)
        if key in overrides:
            raise ValueError(f"{key} is given twice. Received: --set {text}")
        overrides[key] = value
    return overrides


def _train_or_resume(arguments: argparse.Namespace) -> int:
    from cnnkit.runs.folders import read_run_config
    from cnnkit.runs.training import resume, train

    overrides = recipe_overrides(arguments)
    if arguments.resume:
        flag_of = {field: flag for flag, (field, _, _) in RECIPE_FLAGS.items()}
        given = ["--" + name for name in _NEW_RUN_FLAGS if getattr(arguments, name)]
        given += [flag_of.get(field, f"--set {field}") for field in overrides]
        given += ["--no-cache"] if arguments.no_cache else []
        if given:
            raise ValueError(f"--resume continues the run as it was configured. Received: {', '.join(given)}")
        result = resume(
            arguments.resume,
            device=arguments.device,
            precision=arguments.precision or "auto",
            verbose=not arguments.quiet,
        )
        return _print_result(result)
    data, precision, strict, init = arguments.data, arguments.precision, arguments.strict, arguments.init
    labels = arguments.labels
    recipe = arguments.recipe  # None: cnnkit chooses for the data (fast, photo, finetune)
    if arguments.config:
        config = read_run_config(arguments.config)
        recipe, data, precision = config.recipe, data or config.data, precision or config.precision
        strict, init = strict or config.strict, init or config.values.get("init")
        labels = labels or config.values.get("labels")
    result = train(
        data or "cifar10",
        recipe,
        device=arguments.device,
        precision=precision or "auto",
        out=arguments.out,
        name=arguments.name,
        verbose=not arguments.quiet,
        strict=strict,
        refresh_cache=arguments.no_cache,
        overrides=overrides,
        init=init,
        pretrained=arguments.pretrained,
        labels=labels,
        exclude=arguments.exclude,
    )
    return _print_result(result)


_RESULT_FIGURES = {
    "loss": "loss",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "map": "mAP",
    "micro_f1": "micro-F1",
    "macro_f1": "macro-F1",
}


def _print_result(result: Any) -> int:
    report = result.report
    if not report:  # a torchrun rank other than 0: rank 0 prints the job's result
        return 0
    evaluation = report.get("evaluation")
    if evaluation:
        scored = f"{evaluation['count']} images, {evaluation['checkpoint']} of epoch {evaluation['epoch']}"
        figures = " - ".join(
            f"{label} {evaluation[name]:.4f}"
            for name, label in _RESULT_FIGURES.items()
            if name in evaluation  # the last two when the classes are imbalanced
        )
        print(f"{evaluation['split'].capitalize()} ({scored}): {figures}")
    print(f"Trained in {report['train_seconds']:.1f}s; best epoch {report['best_epoch']}.")
    print(f"Run folder: {result.run_folder}")
    if report.get("learned") is False:
        from cnnkit.reports.chance import describe_failure

        print(describe_failure(report["chance"]))
        return 0
    best = shlex.quote(str(result.run_folder / "best.pt"))
    kind = "label" if "map" in (evaluation or {}) else "class"
    print(f"Where it fails, {kind} by {kind}: {_cnnkit_command()} evaluate {best}")
    return 0


def _cnnkit_command() -> str:
    """How to run cnnkit again from this shell: ``cnnkit`` when that is on the PATH, else the way
    it was started (``make train`` runs ``.venv/bin/cnnkit``, which is not on the PATH)."""
    on_path = shutil.which("cnnkit")
    started = Path(sys.argv[0])
    if started.name == "cnnkit":
        if on_path and Path(on_path).resolve() == started.resolve():
            return "cnnkit"
        return shlex.quote(sys.argv[0])
    return "cnnkit" if on_path else f"{shlex.quote(sys.executable)} -m cnnkit"
