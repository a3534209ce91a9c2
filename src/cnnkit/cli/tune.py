"""``cnnkit tune``: a hyperparameter search on Optuna, each trial a run folder."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from cnnkit.cli.common import add_runtime_arguments


def add_parser(commands: Any) -> None:
    tune = commands.add_parser(
        "tune",
        help="search a recipe's settings (Optuna: TPE, median pruning) into runs/<name>/",
        description="Search a recipe's settings: each trial trains a run folder (runs/<name>/trial-<n>), "
        "trials doing worse than the median at the same epoch are stopped early, and the study is kept in "
        "runs/<name>/study.db (--resume continues it). Writes trials.csv, best.yaml (a recipe file for "
        "`cnnkit train --recipe`), optimization_history.png and param_importances.png. "
        "Needs the tune extra: pip install 'cnnkit[tune]'.",
    )
    tune.add_argument("--data", help="as for cnnkit train (default: cifar10)")
    tune.add_argument(
        "--recipe", help="the recipe to tune: a name or a YAML recipe file (default: as cnnkit train picks)"
    )
    tune.add_argument(
        "--space",
        metavar="SPACE_YAML",
        help="search space: recipe fields mapped to distributions (default: the recipe's; see --print-space)",
    )
    tune.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="fix a field of the recipe every trial starts from, e.g. --set epochs=3",
    )
    tune.add_argument("--trials", type=int, help="trials to run in this call")
    tune.add_argument(
        "--budget",
        metavar="DURATION",
        help="start no trial after this long: 30m, 2h, 90s or 600 (seconds); the running one finishes",
    )
    tune.add_argument(
        "--resume", metavar="STUDY_FOLDER", help="continue the study in this folder (runs/tune)"
    )
    tune.add_argument(
        "--seed",
        type=int,
        help="seeds the sampler (default 0; trials train with the recipe's seed); "
        "processes searching one study at once need different seeds",
    )
    tune.add_argument(
        "--print-space", action="store_true", help="print the search space as a --space file, and stop"
    )
    add_runtime_arguments(tune)
    tune.add_argument("--out", default="runs", help="folder holding the study folder (default: runs)")
    tune.add_argument("--name", help="study folder name (default: tune, tune2, ...)")
    tune.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cnnkit.experiments.space import space_to_yaml
    from cnnkit.experiments.study import new_study_settings, parse_duration
    from cnnkit.experiments.tune import tune
    from cnnkit.recipes import parse_assignment

    overrides: dict[str, Any] = {}
    for text in arguments.set:
        key, value = parse_assignment(text)
        if key in overrides:
            raise ValueError(f"{key} is given twice. Received: --set {text}")
        overrides[key] = value
    if arguments.print_space:
        settings = new_study_settings(
            arguments.data or "cifar10", arguments.recipe, arguments.space, overrides
        )
        if settings.fixed_note:
            print(settings.fixed_note, file=sys.stderr)
        comments = (f"Search space for the {settings.recipe.name} recipe: save, edit, pass with --space.",)
        print(space_to_yaml(settings.space, comments), end="")
        return 0
    if arguments.resume and arguments.name:
        raise ValueError(f"--resume continues the study in its own folder. Received: --name {arguments.name}")
    result = tune(
        arguments.data,
        arguments.recipe,
        space=arguments.space,
        trials=arguments.trials,
        budget_seconds=parse_duration(arguments.budget) if arguments.budget else None,
        out=arguments.out,
        name=arguments.name,
        resume=arguments.resume,
        overrides=overrides,
        seed=arguments.seed,
        device=arguments.device,
        precision=arguments.precision or "auto",
    )
    print()
    print(result.table)
    if result.best is not None:
        monitor = result.settings.recipe.monitor
        print(
            f"Best: trial {result.best.number}, {monitor} {result.best.value:.4f} ({result.best.run_folder})"
        )
        best = shlex.quote(str(result.files["best_recipe"]))
        print(f"Its recipe: {best} (cnnkit train --recipe {best})")
    files = ", ".join(path.name for kind, path in result.files.items() if kind != "best_recipe")
    print(f"Study folder: {result.folder} ({files})")
    again = f"cnnkit tune --resume {shlex.quote(str(result.folder))} --trials N"
    if result.interruption:
        print(f"cnnkit: {result.interruption}", file=sys.stderr)
        print(f"The study is kept. Continue it with: {again}", file=sys.stderr)
        return result.exit_code
    print(f"Search more: {again}")
    return 0
