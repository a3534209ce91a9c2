"""What a training step costs per image as the input grows: today's full-resolution fast network
against its patchify stem (``stem_stride="auto"``), issue 11.

    python benchmarks/resolution_cost.py [--sizes 32 64 96 128 160 224] [--steps 3] [--precision auto]

Each line times whole training steps (uint8 batch -> normalise -> augment -> forward, backward,
Muon + SGD update) of the `fast` recipe on random images, after one warm-up step, at one batch
size for every input size (``--batch``), so that the optimizer's per-step cost weighs the same;
where a batch would pass the default 4 GB memory budget the trainer runs it as micro-batches, as
training would. It prints milliseconds per image and the ratio to the same network's 32-px cost,
plus parameters and the first layer's output size. Same process, same machine: compare ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from cnnkit.engine.job import TrainingData, TrainingJob
from cnnkit.engine.trainer import Trainer
from cnnkit.models import create_model
from cnnkit.recipes import get_recipe
from cnnkit.runtime.device import configure_process, precision_name, resolve_precision
from cnnkit.runtime.normalization import Normalization
from machine import cpu_description

NETWORKS = {"full resolution (stem_stride=1)": 1, "patchify stem (stem_stride=auto)": "auto"}


def milliseconds_per_image(
    stem_stride: int | str, size: int, count: int, steps: int, precision: torch.dtype
) -> tuple:
    generator = torch.Generator().manual_seed(0)
    # Ten batches of images: the recipe's small-data rule (10 steps an epoch) keeps the batch.
    images = torch.randint(0, 256, (10 * count, size, size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.arange(10 * count) % 10
    recipe = get_recipe("fast").replace(batch_size=count, epochs=1)
    model = create_model("fast", num_classes=10, image_size=size, stem_stride=stem_stride)
    device = torch.device("cpu")
    job = TrainingJob(model, TrainingData(images, labels), recipe, Normalization(), device, precision)
    trainer = Trainer(job)
    order, flips = torch.arange(count), torch.zeros(count, dtype=torch.bool)
    running = trainer.metric_set()
    trainer.model.train()
    trainer.train_step(order, flips, running)  # warm-up: oneDNN picks its kernels
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(order, flips, running)
    seconds = (time.perf_counter() - started) / steps
    first = model.whiten(torch.zeros(1, 3, size, size)).shape[-1]
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return 1000 * seconds / count, trainer.micro_batch_size, first, parameters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128, 160, 224])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    arguments = parser.parse_args()
    threads = configure_process()
    precision = resolve_precision(arguments.precision, torch.device("cpu"))
    print(
        f"{cpu_description()}, {threads} threads, torch {torch.__version__}, "
        f"{precision_name(precision)}; ms per image of a whole training step"
    )
    print(f"batch {arguments.batch}")
    print("| network | size | micro-batch | first maps | parameters | ms/image | vs its 32 px |")
    print("|---|---|---|---|---|---|---|")
    for name, stride in NETWORKS.items():
        base = None
        for size in arguments.sizes:
            cost, batch, first, parameters = milliseconds_per_image(
                stride, size, arguments.batch, arguments.steps, precision
            )
            base = base or cost
            print(
                f"| {name} | {size} | {batch} | {first}x{first} | {parameters:,} | {cost:.2f} | "
                f"{cost / base:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
