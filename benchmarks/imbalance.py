"""Long-tailed CIFAR-10 (issue 20): plain training against class weights and logit adjustment.

Builds CIFAR-10-LT, the standard long-tailed benchmark (Cao et al., NeurIPS 2019), from
``../shared/data/cifar10-jpeg-train.zip``: imbalance ratio 100, class c (in label order) keeps
``int(5000 * 100 ** (-c / 9))`` of its images (12,406 in all); and a balanced test folder of 1,000
images a class that the long-tailed set did not use. Files are the zip's own JPEG bytes. Then
trains ``cnnkit train --data DIR`` with no flag, and with each imbalance setting, and prints the
test accuracy (on a balanced set this is the balanced accuracy), the worst class's and the time.

    python benchmarks/imbalance.py [--out /tmp/cifar10-lt] [--variants default "plain (handling off)" ...]

"tau" is the post-hoc logit adjustment ``best.pt`` got (``imbalance_handling=auto``, the
default), chosen on the validation split; "-" where it was off.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from cnnkit.reports.classification import read_per_class_csv
from cnnkit_runs import train_and_evaluate
from machine import cpu_description

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
RATIO, TEST_PER_CLASS = 100, 1000
OFF = ["--set", "imbalance_handling=none"]
VARIANTS = {
    # The default: no flag but --data. Imbalanced classes train with the logit-adjusted loss at
    # tau 0.5, then best.pt gets a post-hoc logit adjustment, its strength chosen on validation.
    "default": [],
    "plain (handling off)": OFF,
    "post-hoc adjustment only": ["--set", "logit_adjustment=0"],
    "balanced class weights": ["--set", "class_weights=balanced", *OFF],
    "balanced sampler": ["--set", "sampler=balanced", *OFF],
    "logit-adjusted loss": ["--set", "logit_adjustment=1", *OFF],
    "logit-adjusted loss 0.5": ["--set", "logit_adjustment=0.5", *OFF],
    # Three times the default recipe's epochs (about the 10 minutes on 2 cores).
    "default, 24 epochs": ["--set", "epochs=24"],
    "plain, 24 epochs": ["--set", "epochs=24", *OFF],
    # A second seed (the split, the initial weights and the order), for the spread.
    "default, seed 1": ["--set", "seed=1"],
    "plain (handling off), seed 1": ["--set", "seed=1", *OFF],
}


def long_tail_counts(classes: int = 10, largest: int = 5000, ratio: float = RATIO) -> list[int]:
    """Images kept per class: 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 (12,406)."""
    return [int(largest * ratio ** (-c / (classes - 1))) for c in range(classes)]


def build(source: Path, out: Path, seed: int = 0) -> Path:
    """``out/train/<class>/`` long-tailed and ``out/test/<class>/`` balanced, disjoint."""
    if (out / "test").exists():
        return out
    generator = np.random.default_rng(seed)
    with zipfile.ZipFile(source) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
        classes = sorted({name.split("/")[-2] for name in names})
        for label, (name, keep) in enumerate(zip(classes, long_tail_counts(len(classes)), strict=True)):
            members = generator.permutation([member for member in names if member.split("/")[-2] == name])
            for split, chosen in (
                ("test", members[:TEST_PER_CLASS]),
                ("train", members[TEST_PER_CLASS:][:keep]),
            ):
                folder = out / split / f"{label}-{name}"
                folder.mkdir(parents=True, exist_ok=True)
                for member in chosen:
                    (folder / Path(member).name).write_bytes(archive.read(member))
    return out


def train_variant(data: Path, runs: Path, variant: str) -> dict:
    trained = train_and_evaluate(data, data / "test", runs, variant, VARIANTS[variant])
    if trained.error:
        return {"variant": variant, "error": trained.error, "seconds": trained.seconds}
    report = trained.report
    rows = read_per_class_csv(trained.evaluation_folder / "per_class.csv")
    worst = min(row["recall"] for row in rows if not str(row["class"]).endswith(" avg"))
    return {
        "variant": variant,
        "test_accuracy": report["evaluation"]["accuracy"],
        "worst_class_recall": worst,
        "seconds": trained.seconds,
        "train_seconds": report["train_seconds"],
        "tau": (report.get("decision_adjustment") or {}).get("tau"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cifar10-lt"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS)[:6])
    options = parser.parse_args()
    data = build(options.source, options.out / "data")
    counts = long_tail_counts()
    print(f"CPU: {cpu_description()}; CIFAR-10-LT: {sum(counts):,} images {counts}")
    print(f"test: {TEST_PER_CLASS} images a class, none of them in the long-tailed set")
    print("| variant | test accuracy (balanced) | worst class recall | tau | whole run (s) | training (s) |")
    print("|---|---|---|---|---|---|")
    for variant in options.variants:
        row = train_variant(data, options.out / "runs", variant)
        if "error" in row:
            print(f"| {variant} | {row['error']} | | | {row['seconds']:.0f} | |", flush=True)
            continue
        tau = "-" if row["tau"] is None else f"{row['tau']:g}"
        figures = f"{row['test_accuracy']:.4f} | {row['worst_class_recall']:.3f} | {tau}"
        print(f"| {variant} | {figures} | {row['seconds']:.0f} | {row['train_seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
