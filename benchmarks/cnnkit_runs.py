"""What the training benchmarks share: a no-flag (or variant) ``cnnkit train`` in a subprocess,
timed, then ``cnnkit evaluate`` of its ``best.pt`` on held-out data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainedVariant:
    """A variant's run: its folder, ``report.json``, the evaluation's folder and ``report.json``,
    and the seconds the whole training command took; ``error`` (its last line) when it failed."""

    run: Path
    seconds: float
    report: dict | None = None
    evaluation_folder: Path | None = None
    evaluation: dict | None = None
    error: str | None = None


def train_and_evaluate(
    data: Path, held_out: Path, runs: Path, variant: str, flags: list[str]
) -> TrainedVariant:
    """``cnnkit train --data data [flags]`` into ``runs/<variant as a name>``, then ``cnnkit
    evaluate best.pt --data held_out`` into ``<name>-evaluation``."""
    name = re.sub(r"[^\w.\-]+", "-", variant).strip("-")
    command = [sys.executable, "-m", "cnnkit", "train", "--data", str(data), "--out", str(runs)]
    started = time.perf_counter()
    finished = subprocess.run([*command, "--name", name, "--quiet", *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode:
        return TrainedVariant(runs / name, seconds, error=finished.stderr.strip().splitlines()[-1])
    evaluation = runs / f"{name}-evaluation"
    evaluate = [sys.executable, "-m", "cnnkit", "evaluate", str(runs / name / "best.pt")]
    subprocess.run(
        [*evaluate, "--data", str(held_out), "--out", str(evaluation)], capture_output=True, check=True
    )
    return TrainedVariant(
        runs / name,
        seconds,
        json.loads((runs / name / "report.json").read_text()),
        evaluation,
        json.loads((evaluation / "report.json").read_text()),
    )
