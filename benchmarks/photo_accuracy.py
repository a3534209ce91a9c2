"""Accuracy and time of training variants on a photo folder, over seeds (issue 11).

Each variant is a recipe (name or YAML) plus ``--set``-style overrides, trained with
``cnnkit.runs.training.train`` as `cnnkit train` would, on the same folder and seeds:

    python benchmarks/photo_accuracy.py --data /tmp/standins --seeds 0 1 \\
        --variant "today's network=photo:model_arguments.stem_stride=1" \\
        --variant "patchify stem=photo" --set image_size=64 epochs=16 min_steps=0

``--init`` (per variant: ``name=recipe:init=path/to/best.pt``) starts from trained weights. It
prints, per variant and seed, the validation accuracy of the last epoch (no TTA) and of best.pt
on the test folder (the recipe's TTA), and the training time; then means and spreads. Make the
folder with ``benchmarks/photo_standins.py``; accuracy on those stand-ins says nothing final
about real photos, only how variants compare on one kind of data.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from cnnkit.recipes import parse_assignment
from cnnkit.runs.training import train
from cnnkit.runtime.device import configure_process
from machine import cpu_description


def parse_variant(text: str) -> tuple[str, str, dict[str, Any], str | None]:
    """``"label=recipe:field=value,field=value,init=path"`` -> (label, recipe, overrides, init)."""
    label, _, rest = text.partition("=")
    recipe, _, settings = rest.partition(":")
    overrides, init = {}, None
    for assignment in filter(None, settings.split(",")):
        if assignment.startswith("init="):
            init = assignment.removeprefix("init=")
            continue
        key, value = parse_assignment(assignment)
        overrides[key] = value
    return label, recipe, overrides, init


def run_variant(data: str, recipe: str, overrides: dict, init: str | None, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train(data, recipe, out=out, verbose=False, overrides={**overrides, "seed": seed}, init=init)
        seconds = time.perf_counter() - started
    evaluation = result.report["evaluation"]
    return {
        "validation": result.history.rows[-1].get("val_accuracy", float("nan")),
        "test": evaluation["accuracy"],
        "seconds": seconds,
        "size": result.classifier.image_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variant", action="append", required=True, help="label=recipe:field=value,...")
    parser.add_argument("--set", nargs="*", default=[], help="FIELD=VALUE overrides for every variant")
    arguments = parser.parse_args()
    threads = configure_process()
    shared = dict(parse_assignment(text) for text in arguments.set)
    print(f"{cpu_description()}, {threads} threads; data {arguments.data}; shared {shared}")
    print("| variant | seed | size | last-epoch val. acc. | best.pt test acc. (TTA) | seconds |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for text in arguments.variant:
        label, recipe, overrides, init = parse_variant(text)
        results = [
            run_variant(arguments.data, recipe, {**shared, **overrides}, init, seed)
            for seed in arguments.seeds
        ]
        for seed, result in zip(arguments.seeds, results, strict=True):
            print(
                f"| {label} | {seed} | {result['size']} | {result['validation']:.4f} | "
                f"{result['test']:.4f} | "
                f"{result['seconds']:.0f} |",
                flush=True,
            )
        summary[label] = results
    print("| variant | mean val. acc. | mean test acc. | mean seconds |")
    print("|---|---|---|---|")
    for label, results in summary.items():
        values = {key: [result[key] for result in results] for key in ("validation", "test", "seconds")}
        spread = statistics.stdev(values["test"]) if len(results) > 1 else 0.0
        print(
            f"| {label} | {statistics.mean(values['validation']):.4f} | "
            f"{statistics.mean(values['test']):.4f} +- {spread:.4f} | "
            f"{statistics.mean(values['seconds']):.0f} |"
        )


if __name__ == "__main__":
    main()
