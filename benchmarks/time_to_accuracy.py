"""Time and validation accuracy of a recipe, over seeds (issue 3).

Trains on a stratified split of the training data and scores the held-out part with the recipe's
test-time augmentation. The fit time includes the first layer's whitening and per-epoch
validation; data loading (cached) is reported separately.

    python benchmarks/time_to_accuracy.py --recipe fast --seeds 0 1 2
        [--data ../shared/data/cifar10-jpeg-train.zip] [--val-split 0.2] [--device auto]
        [--set epochs=8 model_arguments.widths=[64,192,192]]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from cnnkit.api import Classifier
from cnnkit.data import load_dataset, split_train_val
from cnnkit.recipes import Recipe, load_recipe, parse_assignment
from cnnkit.runtime.device import configure_process
from cnnkit.runtime.normalization import Normalization

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"


def run_once(data, recipe: Recipe, seed: int, device: str) -> dict[str, float]:
    recipe = recipe.replace(seed=seed)
    train, val = split_train_val(data.train, recipe.validation_split, seed)
    classifier = Classifier(
        recipe.model,
        class_names=train.class_names,
        image_size=int(train.images.shape[1]),
        normalization=Normalization.for_recipe(recipe.normalization, train.images),
        device=device,
        seed=seed,
        **recipe.model_arguments,
    )
    started = time.perf_counter()
    classifier.fit_job(classifier.training_job(train, val, recipe))
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = classifier.evaluate(val.images, val.labels)  # with the recipe's TTA
    return {
        "fit_seconds": fit_seconds,
        "eval_seconds": time.perf_counter() - started,
        "val_accuracy": result["accuracy"],
        "last_epoch_accuracy": classifier.history.rows[-1]["val_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--val-split", type=float, default=0.2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="*", default=[], help="FIELD=VALUE recipe overrides")
    arguments = parser.parse_args()
    threads = configure_process()
    overrides = dict(parse_assignment(text) for text in arguments.set)
    recipe = load_recipe(arguments.recipe, {"validation_split": arguments.val_split, **overrides})
    started = time.perf_counter()
    data = load_dataset(arguments.data, image_size=recipe.image_size, progress=False)
    print(
        f"data: {data.source}, {len(data.train)} images, loaded in {time.perf_counter() - started:.2f}s; "
        f"torch {torch.__version__}, {threads} threads"
    )
    print(
        f"recipe {recipe.name}: {recipe.model} {recipe.model_arguments or ''}, {recipe.epochs} epochs, "
        f"batch {recipe.batch_size}, validation split {recipe.validation_split}"
    )
    results = []
    for seed in arguments.seeds:
        result = run_once(data, recipe, seed, arguments.device)
        results.append(result)
        print(
            f"seed {seed}: fit {result['fit_seconds']:.1f}s, TTA eval {result['eval_seconds']:.1f}s, "
            f"val_accuracy {result['val_accuracy']:.4f} (no TTA {result['last_epoch_accuracy']:.4f})",
            flush=True,
        )
    accuracies = [r["val_accuracy"] for r in results]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(
        f"mean: fit {statistics.mean(r['fit_seconds'] for r in results):.1f}s, "
        f"val_accuracy {statistics.mean(accuracies):.4f} +- {spread:.4f} over {len(results)} seed(s)"
    )


if __name__ == "__main__":
    main()
