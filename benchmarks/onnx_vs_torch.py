"""Inference speed of an exported ONNX model on ONNX Runtime against the same model in PyTorch (issue 5).

For each model (the ``fast`` default network, with its recipe's test-time augmentation, and
``tutorial``; 10 classes, 32x32) the checkpoint is exported with ``cnnkit export``'s code and
both are timed on the CPU through their public ``predict`` (uint8 images in, probabilities out):
ONNX Runtime (float32), PyTorch float32 and PyTorch bf16 autocast (``--precision bf16``), at
batch sizes 1 and 256. Weights are freshly initialised: speed does not depend on training.

    python benchmarks/onnx_vs_torch.py [--models fast tutorial] [--batch-sizes 1 256] [--seconds 3]
        [--threads N]

On a CPU shared with other work, N threads that wait on each other at every operator lose far
more than one thread does (a busy core stalls them all): compare runs at the same load, and
``--threads 1`` is the steadier measurement there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from cnnkit.api import Classifier
from cnnkit.export.onnx import export_onnx
from cnnkit.inference.onnx_runtime import OnnxClassifier
from cnnkit.recipes import get_recipe
from cnnkit.runtime.device import configure_threads
from cnnkit.runtime.normalization import InputTransform, Normalization
from machine import cpu_description

IMAGE_SIZE = 32
CLASSES = [f"class{index}" for index in range(10)]
HEADER = "| model | batch | ONNX Runtime img/s | torch fp32 img/s | torch bf16 img/s | ORT/fp32 | ORT/bf16 |"


def make_checkpoint(model: str, folder: Path, images: np.ndarray) -> Path:
    """A checkpoint of ``model`` as its recipe would train it, with untrained weights."""
    recipe = get_recipe(model)
    normalization = Normalization.for_recipe(recipe.normalization, torch.from_numpy(images))
    classifier = Classifier(
        model, class_names=CLASSES, image_size=IMAGE_SIZE, normalization=normalization, device="cpu"
    )
    if hasattr(classifier.network, "initialize_from_data"):  # the whitening layer, as fit does
        to_input = InputTransform(normalization, torch.device("cpu"))
        classifier.network.initialize_from_data(to_input(torch.from_numpy(images)))
    classifier.recipe, classifier.tta = recipe, recipe.tta
    path = folder / f"{model}.pt"
    classifier.save(path)
    return path


def images_per_second(predict: Callable[[np.ndarray], object], images: np.ndarray, seconds: float) -> float:
    """Median throughput over calls repeated for at least ``seconds`` (after two warm-up calls)."""
    for _ in range(2):
        predict(images)
    durations = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(durations) < 3:
        started = time.perf_counter()
        predict(images)
        durations.append(time.perf_counter() - started)
    return len(images) / statistics.median(durations)


def benchmark_model(
    model: str, batch_sizes: list[int], seconds: float, threads: int, folder: Path
) -> list[dict]:
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(max(batch_sizes), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    checkpoint = make_checkpoint(model, folder, images)
    export = export_onnx(
        checkpoint, folder / f"{model}.onnx", tta=True
    )  # the recipe's views, like PyTorch's predict
    runners = {
        "onnxruntime": OnnxClassifier(export.path, threads=threads),
        "torch_fp32": Classifier.load(checkpoint, device="cpu", precision="fp32"),
        "torch_bf16": Classifier.load(checkpoint, device="cpu", precision="bf16"),
    }
    rows = []
    for batch_size in batch_sizes:
        batch = images[:batch_size]
        row = {"model": model, "tta": export.tta, "batch": batch_size}
        for name, runner in runners.items():
            row[name] = images_per_second(lambda x, runner=runner: runner.predict(x), batch, seconds)
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def _format_row(row: dict) -> str:
    onnx, fp32, bf16 = row["onnxruntime"], row["torch_fp32"], row["torch_bf16"]
    return (
        f"| {row['model']} (TTA {row['tta']}) | {row['batch']} | {onnx:,.0f} | {fp32:,.0f} | {bf16:,.0f} "
        f"| {onnx / fp32:.2f}x | {onnx / bf16:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fast", "tutorial"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument(
        "--threads", type=int, help="threads for both runtimes (default: one per core, as cnnkit uses)"
    )
    arguments = parser.parse_args()
    threads = configure_threads(arguments.threads)
    print(
        f"{cpu_description()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({threads} threads), onnxruntime {onnxruntime.__version__}; load average before: "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(HEADER)
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for model in arguments.models:
            benchmark_model(model, arguments.batch_sizes, arguments.seconds, threads, Path(folder))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
