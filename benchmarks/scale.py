"""Cost curves of data set size (issue 12): decode time, store size, training speed and peak memory
as the number of images and their size grow.

    python benchmarks/scale.py [--counts 50000 100000 200000 400000] [--count-size 64]
                               [--sizes 32 64 96 128] [--size-count 50000] [--steps 200]
                               [--work /tmp/cnnkit-scale] [--plot docs/scale.png]
    python benchmarks/scale.py --replot /tmp/cnnkit-scale/results.json --plot docs/scale.png

Larger sets are the shared CIFAR-10 zip repeated: copy k of ``train/cat/0001.jpg`` is
``train/cat/0001-k.jpg`` (50,000 -> 400,000 images). Each configuration runs ``cnnkit train``
in fresh processes with its own empty ``CNNKIT_HOME``:
1. cold: decodes the zip into the store, then trains ``--steps`` steps of the tutorial recipe
   (Adam, batch 32, no validation) reading batches from the store;
2. warm, store: the same training, the store read back (in under a second), batches read from
   disk (``CNNKIT_IN_MEMORY_MB=0``: also the sets that cnnkit would read whole into memory);
3. warm, in memory: the same, every image read into memory first (``CNNKIT_IN_MEMORY_MB``),
   i.e. what cnnkit did before stores; skipped above ``--memory-limit-gb``.
Peak resident memory is each process's (``wait4``: the largest of it and its decoding workers);
seconds a 1,000 steps come from the run's ``ms_per_sample`` (training steps only), an epoch's
seconds are that times the images. Zips and stores are deleted afterwards (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"
BATCH = 32  # the tutorial recipe's


def build_zip(source: Path, target: Path, count: int) -> Path:
    """``count`` images: the members of ``source`` repeated under new names, stored uncompressed."""
    if target.is_file():
        return target
    with zipfile.ZipFile(source) as reader:
        members = [(info.filename, reader.read(info)) for info in reader.infolist() if not info.is_dir()]
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as writer:
        for index in range(count):
            name, content = members[index % len(members)]
            copy = index // len(members)
            stem, _, extension = name.rpartition(".")
            writer.writestr(f"{stem}-{copy}.{extension}" if copy else name, content)
    partial.rename(target)
    return target


def run_cnnkit(arguments: list[str], home: Path, in_memory: bool) -> tuple[str, float, float]:
    """One ``cnnkit`` process: its output, wall seconds and peak resident MiB."""
    # Every size is read from disk, or every size from memory: below 256 MiB cnnkit picks memory.
    limit = "1e7" if in_memory else "0"
    environment = {**os.environ, "CNNKIT_HOME": str(home), "CNNKIT_IN_MEMORY_MB": limit}
    command = [sys.executable, "-m", "cnnkit", *arguments]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return output, time.perf_counter() - started, usage.ru_maxrss / 1024  # KiB on Linux


def run_training(
    data: Path, size: int, steps: int, count: int, home: Path, name: str, in_memory: bool
) -> dict:
    """``cnnkit train``: wall time, peak memory, and the speed and times its output gives."""
    epochs = f"{steps * BATCH / count:.8f}"
    arguments = ["train", "--data", str(data), "--img-size", str(size), "--recipe", "tutorial"]
    arguments += ["--epochs", epochs, "--val-split", "0", "--out", str(home / "runs"), "--name", name]
    output, wall, peak = run_cnnkit(arguments, home, in_memory)
    with open(home / "runs" / name / "metrics.csv") as file:
        row = list(csv.DictReader(file))[-1]
    decoded = re.search(r"Decoded [\d,]+ images .* in ([\d.]+)s \(", output)
    loaded = re.search(r"(?:Mapped|Loaded) [\d,]+ decoded images .* in ([\d.]+)s", output)
    return {
        "wall_seconds": wall,
        "peak_mib": peak,
        "ms_per_sample": float(row["ms_per_sample"]),
        "decode_seconds": float(decoded.group(1)) if decoded else None,
        "load_seconds": float(loaded.group(1)) if loaded else None,
    }


def run_evaluation(data: Path, home: Path, name: str, in_memory: bool) -> dict:
    """``cnnkit evaluate`` of run ``name``'s best.pt on every image of ``data``."""
    checkpoint = home / "runs" / name / "best.pt"
    arguments = ["evaluate", str(checkpoint), "--data", str(data), "--out", str(home / f"evaluate-{name}")]
    _, wall, peak = run_cnnkit(arguments, home, in_memory)
    return {"wall_seconds": wall, "peak_mib": peak}


def measure(
    source: Path, work: Path, count: int, size: int, steps: int, memory_limit_gb: float, keep: bool
) -> dict:
    """The three runs of one configuration (see the module docstring)."""
    data = build_zip(source, work / f"cifar-{count}.zip", count)
    home = work / f"home-{count}-{size}"
    shutil.rmtree(home, ignore_errors=True)
    result = {"count": count, "size": size, "pixel_bytes": count * size * size * 3}
    result["cold"] = run_training(data, size, steps, count, home, "cold", in_memory=False)
    stores = [path for path in (home / "cache").glob("zip-*") if path.is_dir()]
    result["store_bytes"] = sum(file.stat().st_size for store in stores for file in store.iterdir())
    result["store"] = run_training(data, size, steps, count, home, "store", in_memory=False)
    result["evaluate_store"] = run_evaluation(data, home, "store", in_memory=False)
    if result["pixel_bytes"] <= memory_limit_gb * 2**30:
        result["memory"] = run_training(data, size, steps, count, home, "memory", in_memory=True)
        result["evaluate_memory"] = run_evaluation(data, home, "memory", in_memory=True)
    if not keep:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return result


def table(results: list[dict]) -> str:
    """The Markdown table docs/benchmarks.md shows."""
    lines = [
        "| images | px | pixels | decode | store | load (warm) | s / 1,000 steps: disk / memory | "
        "s / epoch (disk) | train peak RSS: cold / disk / memory | evaluate all: s, peak RSS disk / memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        cold, store, memory = result["cold"], result["store"], result.get("memory")
        evaluated, evaluated_memory = result.get("evaluate_store"), result.get("evaluate_memory")
        per_steps = f"{store['ms_per_sample'] * BATCH:.1f} / " + (
            f"{memory['ms_per_sample'] * BATCH:.1f}" if memory else "-"
        )
        peaks = f"{cold['peak_mib']:,.0f} / {store['peak_mib']:,.0f} / " + (
            f"{memory['peak_mib']:,.0f} MiB" if memory else "- MiB"
        )
        evaluation = "-"
        if evaluated:
            evaluation = f"{evaluated['wall_seconds']:.0f} s, {evaluated['peak_mib']:,.0f} / " + (
                f"{evaluated_memory['peak_mib']:,.0f} MiB" if evaluated_memory else "- MiB"
            )
        lines.append(
            f"| {result['count']:,} | {result['size']} | {result['pixel_bytes'] / 2**30:.2f} GiB | "
            f"{cold['decode_seconds']:.0f} s | {result['store_bytes'] / 2**30:.2f} GiB | "
            f"{store['load_seconds']:.2f} s | {per_steps} | "
            f"{store['ms_per_sample'] * result['count'] / 1000:,.0f} | {peaks} | {evaluation} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], count_size: int, size_count: int, path: Path) -> None:
    """Decode time, seconds an epoch and peak memory against images (at ``count_size`` px) and
    against the image side (``size_count`` images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_count = sorted((r for r in results if r["size"] == count_size), key=lambda r: r["count"])
    by_size = sorted((r for r in results if r["count"] == size_count), key=lambda r: r["size"])
    figure, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    rows = [
        (by_count, "count", f"images (at {count_size} px)"),
        (by_size, "size", f"image side, px ({size_count:,} images)"),
    ]
    for row, (series, key, label) in enumerate(rows):
        x = [result[key] for result in series]
        axes[row, 0].plot(x, [r["cold"]["decode_seconds"] for r in series], "o-", label="decode")
        axes[row, 0].set_ylabel("decode time (s)")
        epoch = [r["store"]["ms_per_sample"] * r["count"] / 1000 for r in series]
        axes[row, 1].plot(x, epoch, "o-", label="store (disk)")
        memory = [(r[key], r["memory"]["ms_per_sample"] * r["count"] / 1000) for r in series if "memory" in r]
        if memory:
            axes[row, 1].plot(*zip(*memory, strict=True), "s--", label="in memory")
        axes[row, 1].set_ylabel("training s / epoch (tutorial, batch 32)")
        axes[row, 2].plot(x, [r["store"]["peak_mib"] for r in series], "o-", label="train, store (warm)")
        axes[row, 2].plot(
            x, [r["cold"]["peak_mib"] for r in series], "^:", label="train, store (cold: decode + train)"
        )
        memory = [(r[key], r["memory"]["peak_mib"]) for r in series if "memory" in r]
        if memory:
            axes[row, 2].plot(*zip(*memory, strict=True), "s--", label="train, in memory")
        evaluated = [(r[key], r["evaluate_store"]["peak_mib"]) for r in series if "evaluate_store" in r]
        if evaluated:  # (results merged from older runs may lack it)
            axes[row, 2].plot(*zip(*evaluated, strict=True), "v-.", label="evaluate every image, store")
        axes[row, 2].set_ylabel("peak resident memory (MiB)")
        for axis in axes[row]:
            axis.set_xlabel(label)
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle(
        "cnnkit on growing data (issue 12): CIFAR-10 JPEGs repeated, AMD EPYC Zen 3, 2 cores, fp32"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--counts", type=int, nargs="*", default=[50_000, 100_000, 200_000, 400_000])
    parser.add_argument("--count-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 96, 128])
    parser.add_argument("--size-count", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--memory-limit-gb", type=float, default=6.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cnnkit-scale"))
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--replot", type=Path, help="a results.json of an earlier run: table and plot only")
    parser.add_argument("--keep", action="store_true", help="keep the zips and stores")
    arguments = parser.parse_args()
    if arguments.replot:
        saved = json.loads(arguments.replot.read_text())
        results, arguments.count_size, arguments.size_count = (
            saved["results"],
            saved["count_size"],
            saved["size_count"],
        )
    else:
        arguments.work.mkdir(parents=True, exist_ok=True)
        print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
        configurations = [(count, arguments.count_size) for count in arguments.counts]
        configurations += [(arguments.size_count, size) for size in arguments.sizes]
        results = []
        for count, size in dict.fromkeys(configurations):
            results.append(
                measure(
                    arguments.data,
                    arguments.work,
                    count,
                    size,
                    arguments.steps,
                    arguments.memory_limit_gb,
                    arguments.keep,
                )
            )
            saved = {
                "count_size": arguments.count_size,
                "size_count": arguments.size_count,
                "results": results,
            }
            (arguments.work / "results.json").write_text(json.dumps(saved, indent=1))
        if not arguments.keep:
            for archive in arguments.work.glob("cifar-*.zip"):
                archive.unlink()
    print(table(results))
    if arguments.plot:
        plot(results, arguments.count_size, arguments.size_count, arguments.plot)
        print(f"Plot: {arguments.plot}")


if __name__ == "__main__":
    main()
