"""Post-hoc logit adjustment on trained runs (issue 20): does shifting the logits of a finished
model by ``-tau * log(class prior)`` (Menon et al., ICLR 2021, section 4), with tau chosen on the
run's own validation split, raise balanced accuracy on a balanced test split?

For each run folder: ``best.pt``'s logits (with the recipe's test-time augmentation) on the run's
validation split and on its data's ``test/`` folder; for each tau of a grid, the validation
split's balanced accuracy and the test split's; the tau that validation picks, and what it gives
on test. Nothing is trained.

    python benchmarks/posthoc_adjustment.py /tmp/cifar10-lt/runs/plain /tmp/cifar10-lt/runs/plain-24
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint
from cnnkit.data import load_dataset
from cnnkit.engine.metrics import score_logits
from cnnkit.runs.evaluation import match_labels
from cnnkit.runs.folders import read_run_config
from cnnkit.runs.splits import training_splits
from cnnkit.runtime.batched import predict_logits
from cnnkit.runtime.device import configure_process
from machine import cpu_description

GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]


def logits_of(classifier: Classifier, images) -> torch.Tensor:
    return predict_logits(
        classifier.network,
        classifier.model_view(images),
        classifier.normalization,
        classifier.device,
        classifier.precision,
        512,
        classifier.tta,
    )


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return score_logits(logits, labels, ("balanced_accuracy",))["balanced_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    options = parser.parse_args()
    configure_process()
    print(f"CPU: {cpu_description()}")
    print(
        "| run | tau picked on validation | its validation balanced acc | test (tau 0) | test at that tau |"
    )
    print("|---|---|---|---|---|")
    for folder in options.runs:
        config = read_run_config(folder)
        checkpoint = load_checkpoint(folder / "best.pt")
        classifier = Classifier.from_checkpoint(checkpoint, device="cpu")
        splits = load_dataset(config.data, image_size=checkpoint.resize_size, progress=False)
        train, validation = training_splits(splits, checkpoint.recipe)
        counts = torch.bincount(train.labels.long(), minlength=len(checkpoint.class_names)).double()
        log_prior = torch.log(counts.clamp_min(1) / counts.sum()).float()
        val_logits = logits_of(classifier, validation.images)
        test_logits = logits_of(classifier, splits.test.images)
        test_labels = match_labels(splits.test, checkpoint.class_names)
        on_validation = {
            tau: balanced_accuracy(val_logits - tau * log_prior, validation.labels) for tau in GRID
        }
        on_test = {tau: balanced_accuracy(test_logits - tau * log_prior, test_labels) for tau in GRID}
        picked = max(GRID, key=lambda tau: (on_validation[tau], -tau))
        row = f"| {folder.name} | {picked:g} | {on_validation[picked]:.4f} | {on_test[0.0]:.4f} | "
        print(row + f"{on_test[picked]:.4f} |", flush=True)
        grid = ", ".join(f"{tau:g}: val {on_validation[tau]:.3f} test {on_test[tau]:.3f}" for tau in GRID)
        print(f"<!-- {folder.name} grid: {grid} -->", flush=True)


if __name__ == "__main__":
    main()
