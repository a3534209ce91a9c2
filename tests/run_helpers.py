"""Helpers shared by the tests that train real runs and compare them."""

from __future__ import annotations

from pathlib import Path

from cnnkit.reports.training_curves import read_metrics_csv

# Columns that measure time, not learning: they may differ between two identical runs.
TIMING = {"seconds", "ms_per_sample"}


def learning_metrics(folder: Path) -> list[dict]:
    return [
        {key: value for key, value in row.items() if key not in TIMING}
        for row in read_metrics_csv(folder / "metrics.csv")
    ]


def train_command(data: Path, out: Path, name: str) -> list[str]:
    # Batch 4: 32 steps an epoch, slow enough to be stopped mid-run.
    return [
        "train",
        "--data",
        str(data),
        "--recipe",
        "tutorial",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--name",
        name,
    ]
