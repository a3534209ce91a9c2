"""How fast `cnnkit predict` classifies a large set of files, end to end, and how accurately.

    python benchmarks/predict_throughput.py CHECKPOINT DATA [--levels 0 own] [--repeats 2] [--as-zip]

DATA is a folder or a .zip laid out ``<class>/<image>`` (the class folders are the true classes;
``--as-zip`` first stores a folder in an uncompressed zip, as the issue's measurement reads it).
For each test-time augmentation level (``own``: the checkpoint's, no ``--tta``) the command
``python -m cnnkit predict CHECKPOINT DATA --tta N --format csv --output FILE`` runs in a fresh
process, ``--repeats`` times: images a second from process start to the results written (imports,
model load, reading, decoding, the model and the CSV all included), and the top-1 accuracy of the
CSV against the class folders. The load average before and after each run is printed: on a shared
machine other processes take cores, so repeat, and compare runs at the same load.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from machine import cpu_description

REPOSITORY = Path(__file__).resolve().parents[1]
HEADER = (
    "| TTA | images/s end to end (each run) | seconds | accuracy | images | failed | load before -> after |"
)


def store_as_zip(folder: Path, target: Path) -> Path:
    """Every file below ``folder`` in an uncompressed zip, by its path relative to ``folder``."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return target


def run_predict(checkpoint: str, data: str, level: str, output: Path) -> float:
    """Seconds of one `cnnkit predict` process, from its start to its exit."""
    command = [sys.executable, "-m", "cnnkit", "predict", checkpoint, data, "--format", "csv"]
    command += ["--output", str(output), "--force"] + ([] if level == "own" else ["--tta", level])
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY / "src")}
    started = time.perf_counter()
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode not in (0, 1):  # 1: some inputs failed, the results are all written
        raise SystemExit(f"cnnkit predict failed:\n{completed.stderr}")
    return seconds


def accuracy(results: Path, data: str) -> tuple[float, int, int]:
    """(top-1 accuracy, images classified, failed) of a predict CSV, the true class being the
    first folder below ``data`` (a folder or a zip) in each result's path."""
    correct = classified = failed = 0
    prefix = data.rstrip("/") + "/"
    with open(results, newline="") as file:
        for row in csv.DictReader(file):
            if row["error"]:
                failed += 1
            elif row["rank"] == "1":
                classified += 1
                truth = row["path"].removeprefix(prefix).split("/")[0]
                correct += row["class"] == truth
    return correct / max(classified, 1), classified, failed


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("data", help="a folder or .zip of <class>/<image> files")
    parser.add_argument("--levels", nargs="+", default=["0", "own"], help="TTA levels; own: the checkpoint's")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--as-zip", action="store_true", help="store a DATA folder in a zip first")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        data = arguments.data
        if arguments.as_zip and Path(data).is_dir():
            data = str(store_as_zip(Path(data), folder / "images.zip"))
        print(f"{cpu_description()}, {os.cpu_count()} cores; python {sys.version.split()[0]}")
        print(f"cnnkit predict {arguments.checkpoint} {data}")
        print(HEADER)
        print("|---|---|---|---|---|---|---|")
        for level in arguments.levels:
            output = folder / f"tta-{level}.csv"
            seconds, loads = [], []
            for _ in range(arguments.repeats):
                before = load_average()
                seconds.append(run_predict(arguments.checkpoint, data, level, output))
                loads.append(f"{before} -> {load_average()}")
            correct, classified, failed = accuracy(output, data)
            rates = ", ".join(f"{(classified + failed) / value:,.0f}" for value in seconds)
            print(
                f"| {level} | {rates} | {statistics.median(seconds):.1f} | {correct:.2%} | {classified:,} | "
                f"{failed} | {'; '.join(loads)} |"
            )


if __name__ == "__main__":
    main()
