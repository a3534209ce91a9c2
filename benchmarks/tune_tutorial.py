"""What tuning the tutorial recipe buys over its defaults, for a fixed search budget (issue 13).

The shared zip holds CIFAR-10's 50,000 training images and, on purpose, no test split: tune on a
validation split, judge on held-out images. So this script first copies the zip's JPEGs (bytes
unchanged) into a folder with ``train/`` (80 %, stratified, seed 0) and ``test/`` (20 %, never
seen by the search). Then, on that folder:

1. the tutorial recipe as it is, over ``--seeds`` (its own 20 % validation split of ``train/``);
2. ``cnnkit tune --recipe tutorial --budget BUDGET``: TPE and median pruning over the tutorial's
   default search space, each trial scored on validation accuracy only;
3. the study's ``best.yaml`` over the same seeds;

and prints a Markdown table (validation and held-out test accuracy, time) for
docs/benchmarks.md, and writes ``comparison.png`` of the six runs (``cnnkit compare``).

    python benchmarks/tune_tutorial.py [--data ../shared/data/cifar10-jpeg-train.zip]
        [--budget 2h] [--seeds 0 1 2] [--work /tmp/cnnkit-tune-tutorial] [--device auto]

The same by hand: ``cnnkit tune --data WORK/data --recipe tutorial --budget 2h``, then
``cnnkit train --data WORK/data --recipe runs/tune/best.yaml --seed N`` against
``cnnkit train --data WORK/data --recipe tutorial --seed N``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import zipfile
from pathlib import Path

from cnnkit.experiments.compare import compare_runs
from cnnkit.experiments.study import parse_duration
from cnnkit.experiments.tune import tune
from cnnkit.runs.training import train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def held_out_folder(archive: Path, folder: Path, test_share: float = 0.2, seed: int = 0) -> Path:
    """``folder/train/<class>/`` and ``folder/test/<class>/`` from the zip's ``<class>/`` images,
    each class split ``1 - test_share : test_share`` by a seeded shuffle (made once, then reused)."""
    done = folder / ".complete"
    if done.is_file():
        return folder
    with zipfile.ZipFile(archive) as images:
        by_class: dict[str, list[str]] = {}
        for name in sorted(images.namelist()):
            parts = Path(name).parts
            if len(parts) >= 2 and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                by_class.setdefault(parts[-2], []).append(name)
        generator = random.Random(seed)
        for class_name, names in by_class.items():
            generator.shuffle(names)
            held = round(len(names) * test_share)
            for index, name in enumerate(names):
                split = "test" if index < held else "train"
                target = folder / split / class_name / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(images.read(name))
    done.write_text("train/ and test/ written\n")
    return folder


def scored(result) -> dict[str, float]:
    """A finished run's figures: best validation accuracy, held-out test accuracy, time."""
    rows = result.history.rows
    return {
        "val_accuracy": max(row["val_accuracy"] for row in rows),
        "test_accuracy": result.report["evaluation"]["accuracy"],
        "seconds": result.report["train_seconds"],
        "epochs": len(rows),
    }


def train_over_seeds(data: Path, recipe, seeds, runs: Path, label: str, device: str) -> list[dict]:
    results = []
    for seed in seeds:
        result = train(
            data,
            recipe,
            device=device,
            out=runs,
            name=f"{label}-seed{seed}",
            verbose=False,
            overrides={"seed": seed},
        )
        results.append({"folder": result.run_folder, **scored(result)})
        print(f"{label} seed {seed}: {results[-1]}", flush=True)
    return results


def summary_line(label: str, results: list[dict]) -> str:
    def spread(key: str) -> str:
        values = [result[key] for result in results]
        deviation = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {deviation:.4f}"

    seconds = statistics.mean(result["seconds"] for result in results)
    epochs = statistics.mean(result["epochs"] for result in results)
    return (
        f"| {label} | {epochs:g} | {seconds:.0f} s | {spread('val_accuracy')} | {spread('test_accuracy')} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--budget", default="2h", help="the search's budget (default: 2h)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="/tmp/cnnkit-tune-tutorial")
    parser.add_argument("--device", default="auto")
    arguments = parser.parse_args()
    work = Path(arguments.work)
    data = held_out_folder(Path(arguments.data), work / "data")
    runs = work / "runs"
    defaults = train_over_seeds(data, "tutorial", arguments.seeds, runs, "default", arguments.device)
    study = tune(
        data,
        "tutorial",
        budget_seconds=parse_duration(arguments.budget),
        out=runs,
        name="tune",
        device=arguments.device,
    )
    print(study.table, flush=True)
    tuned = train_over_seeds(
        data, study.files["best_recipe"], arguments.seeds, runs, "tuned", arguments.device
    )
    comparison = compare_runs([result["folder"] for result in defaults + tuned], runs_folder=work)
    print(comparison.table)
    states = [row.state for row in study.rows]
    counts = ", ".join(f"{states.count(state)} {state}" for state in ("complete", "pruned", "failed"))
    print(f"\nSearch: budget {arguments.budget}, {len(states)} trials ({counts})")
    print(f"Best: trial {study.best.number}, {study.best.params}")
    print("\n| recipe | epochs | train time | best val_accuracy | held-out test accuracy |")
    print("|---|---|---|---|---|")
    print(summary_line("tutorial (defaults)", defaults))
    print(summary_line(f"tutorial tuned ({arguments.budget} search)", tuned))
    print(f"\nCurves: {comparison.files['plot']}")


if __name__ == "__main__":
    main()
