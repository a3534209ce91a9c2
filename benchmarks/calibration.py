"""Calibrated confidence (issue 22): the default recipe's expected calibration error on held-out
images, as trained and after temperature scaling fitted on the validation split.

Builds, from ``../shared/data/cifar10-jpeg-train.zip``, ``train/`` (40,000 images, 4,000 a class)
and ``test/`` (the other 10,000, 1,000 a class) folders of the zip's own JPEG bytes; trains
``cnnkit train --data DIR`` with no other flag (a validation split of 20 % carved from train/,
the temperature fitted on it), then ``cnnkit evaluate best.pt`` on test/ and prints its ECE (15
bins), NLL and Brier score as trained and calibrated, with the CPU.

    python benchmarks/calibration.py [--out /tmp/cifar10-calibration] [--variants default ...]
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from cnnkit_runs import train_and_evaluate
from machine import cpu_description

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
TEST_PER_CLASS = 1000
VARIANTS = {
    "default": [],  # no flag but --data: the fast recipe, temperature fitted on validation
    "tutorial": ["--recipe", "tutorial"],  # the Keras tutorial's CNN: over-confident as trained
}


def build(source: Path, out: Path, seed: int = 0) -> Path:
    """``out/train/<class>/`` and ``out/test/<class>/``, disjoint, from the zip's images."""
    if (out / "test").exists():
        return out
    generator = np.random.default_rng(seed)
    with zipfile.ZipFile(source) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
        for name in sorted({member.split("/")[-2] for member in names}):
            members = generator.permutation([member for member in names if member.split("/")[-2] == name])
            for split, chosen in (("test", members[:TEST_PER_CLASS]), ("train", members[TEST_PER_CLASS:])):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for member in chosen:
                    (folder / Path(member).name).write_bytes(archive.read(member))
    return out


def run_variant(data: Path, runs: Path, variant: str) -> dict:
    """Train one variant, evaluate its best.pt on test/; the calibration figures."""
    trained = train_and_evaluate(data, data, runs, variant, VARIANTS[variant])
    if trained.error:
        return {"variant": variant, "error": trained.error}
    return {
        "variant": variant,
        "accuracy": trained.evaluation["accuracy"],
        "calibration": trained.evaluation["calibration"],
        "validation": trained.report.get("calibration", {}),
        "seconds": trained.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cifar10-calibration"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["default"])
    options = parser.parse_args()
    data = build(options.source, options.out / "data")
    print(f"CPU: {cpu_description()}; train/ 40,000 images (20 % of them validation), test/ 10,000")
    print(
        "| variant | test accuracy | temperature | test ECE as trained | test ECE calibrated | "
        "test NLL | test Brier | validation ECE | run (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in options.variants:
        row = run_variant(data, options.out / "runs", variant)
        if "error" in row:
            print(f"| {variant} | {row['error']} | | | | | | | |", flush=True)
            continue
        section, validation = row["calibration"], row["validation"]
        trained, calibrated = section["as_trained"], section.get("calibrated", section["as_trained"])
        before = validation.get("validation_before", {}).get("ece")
        after = validation.get("validation_after", {}).get("ece")
        cells = [
            f"{row['accuracy']:.4f}",
            f"{section['temperature']:.3f}" if section["temperature"] else "-",
            f"{trained['ece']:.4f}",
            f"{calibrated['ece']:.4f}",
            f"{trained['nll']:.4f} -> {calibrated['nll']:.4f}",
            f"{trained['brier']:.4f} -> {calibrated['brier']:.4f}",
            f"{before:.4f} -> {after:.4f}" if before is not None else "-",
            f"{row['seconds']:.0f}",
        ]
        print(f"| {variant} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
