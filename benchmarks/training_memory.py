"""Peak memory of training steps against the memory budget, at several input sizes (issue 11).

Each configuration runs in a fresh process: 10 batches' worth of random uint8 images stored as
the photo recipe stores them (1.15x the input size), a Trainer of the photo recipe (patchify
stem, random-resized crops, batch 2000) with the given ``memory_budget_gb``, two training steps;
the process's peak resident memory (``ru_maxrss``) is printed beside the planner's micro-batch.

    python benchmarks/training_memory.py [--sizes 64 128] [--budgets 4 1000] [--batch 2000]

A budget of 1000 GB never splits the batch: its line is what the batch costs whole.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = """
import json, resource, sys, time, torch
from cnnkit.runtime.device import configure_process
from cnnkit.engine.job import TrainingData, TrainingJob
from cnnkit.runtime.normalization import Normalization
from cnnkit.engine.trainer import Trainer
from cnnkit.models import create_model
from cnnkit.recipes import get_recipe
size, budget, batch = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
configure_process()
recipe = get_recipe("photo").replace(batch_size=batch, memory_budget_gb=budget, epochs=1)
stored = recipe.stored_size(size)
count = 10 * batch  # the small-data rule keeps the batch whole
generator = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (count, stored, stored, 3), dtype=torch.uint8, generator=generator)
labels = torch.arange(count) % 10
model = create_model("fast", num_classes=10, image_size=size, stem_stride="auto")
data = TrainingData(images, labels)
trainer = Trainer(TrainingJob(model, data, recipe, Normalization(), torch.device("cpu"), input_size=size))
order, flips = torch.randperm(count)[:batch], torch.zeros(batch, dtype=torch.bool)
started = time.perf_counter()
for _ in range(2):
    trainer.train_step(order, flips, trainer.metric_set())
seconds = (time.perf_counter() - started) / 2
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = {"peak": peak, "micro": trainer.micro_batch_size, "data": images.numel(), "seconds": seconds}
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--budgets", type=float, nargs="+", default=[4.0, 1000.0])
    parser.add_argument("--batch", type=int, default=2000)
    arguments = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}; photo recipe, batch {arguments.batch}, fp32")
    print("| input size | memory_budget_gb | micro-batch | data held | peak RSS | s/step |")
    print("|---|---|---|---|---|---|")
    gib = 2**30
    for size in arguments.sizes:
        for budget in arguments.budgets:
            command = [sys.executable, "-c", CHILD, str(size), str(budget), str(arguments.batch)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(
                f"| {size} | {budget:g} | {result['micro']} | {result['data'] / gib:.2f} GiB | "
                f"{result['peak'] / gib:.2f} GiB | {result['seconds']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
