"""The tutorial protocol, timed: tutorial model, Adam, batch 32, 5 epochs, validation split 0.2.

Target (issue 2): fit time (training + per-epoch validation) <= 1/3 of Keras 3 + TensorFlow 2.21
on the same machine (85.6 s, 0.43 ms a sample), with validation accuracy on par (Keras: 0.687).

    python benchmarks/tutorial_protocol.py [--data ../shared/data/cifar10-jpeg-train.zip]
        [--seeds 0 1 2] [--precision auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from cnnkit.api import Classifier
from cnnkit.data import load_dataset, split_train_val
from cnnkit.recipes import get_recipe
from cnnkit.runtime.device import configure_process

KERAS_SECONDS = 85.6
KERAS_VAL_ACCURACY = 0.687
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"


def run_once(data, seed: int, precision: str, epochs: int) -> dict[str, float]:
    recipe = get_recipe("tutorial")
    train, val = split_train_val(data.train, recipe.validation_split, seed)
    classifier = Classifier("tutorial", class_names=train.class_names, image_size=32, precision=precision)
    torch.manual_seed(seed)
    started = time.perf_counter()
    history = classifier.fit(
        train.images,
        train.labels,
        batch_size=recipe.batch_size,
        epochs=epochs,
        validation_data=(val.images, val.labels),
        seed=seed,
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "val_accuracy": history.history["val_accuracy"][-1],
        "ms_per_sample": 1000 * seconds / (epochs * len(train)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--epochs", type=int, default=5)
    arguments = parser.parse_args()
    threads = configure_process()
    started = time.perf_counter()
    data = load_dataset(arguments.data, image_size=32, progress=False)
    print(f"data: {data.source}, {len(data.train)} images, loaded in {time.perf_counter() - started:.2f}s")
    print(
        f"machine: {platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}"
    )
    results = [run_once(data, seed, arguments.precision, arguments.epochs) for seed in arguments.seeds]
    seconds = [r["seconds"] for r in results]
    accuracies = [r["val_accuracy"] for r in results]
    for seed, result in zip(arguments.seeds, results, strict=True):
        print(
            f"seed {seed}: fit {result['seconds']:.1f}s ({result['ms_per_sample']:.3f} ms/sample incl. "
            f"validation), val_accuracy {result['val_accuracy']:.4f}"
        )
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(
        f"mean fit time {statistics.mean(seconds):.1f}s = {KERAS_SECONDS / statistics.mean(seconds):.2f}x "
        f"faster than Keras's {KERAS_SECONDS}s (target >= 3x); val_accuracy "
        f"{statistics.mean(accuracies):.4f} +- {spread:.4f} (Keras {KERAS_VAL_ACCURACY})"
    )


if __name__ == "__main__":
    main()
