"""What blows up in the first steps on non-photo images, and what each fix does (issue 19).

Trains the default recipe on an image folder for a few steps under four settings of the fast
network's two suspects, and prints the largest gradient norm of any bias at step 1 (airbench's
biases and head learn by plain SGD: a huge gradient is a huge step) and the loss after the last
step (or the step where it stopped being finite):

- ``airbench``: the whitening's absolute eigenvalue floor (5e-4) and BatchNorm eps 1e-12, as before;
- ``whitening``: only the relative floor with dead directions replaced (``whitening_filters``);
- ``eps``: only BatchNorm's eps at 1e-3;
- ``both``: cnnkit's network now.

    python benchmarks/first_steps.py FOLDER [FOLDER ...] [--steps 30]

(Folders from ``benchmarks/image_kinds.py``, e.g. /tmp/image-kinds/digits-on-black/data.)
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch

import cnnkit.models.airbench as airbench
from cnnkit.engine import trainer as trainer_module
from cnnkit.runs.training import train

SETTINGS = ("airbench", "whitening", "eps", "both")


def airbench_whitening(covariance: torch.Tensor, count: int) -> torch.Tensor:
    """airbench's filters: eigenvectors scaled by 1/sqrt(eigenvalue + 5e-4), dead directions kept."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
    return eigenvectors[:count] / torch.sqrt(eigenvalues[:count].clamp_min(0) + 5e-4)[:, None]


def first_steps(folder: str, setting: str, steps: int) -> dict:
    """Step-1 bias gradient and the loss where training stopped, under ``setting``."""
    original_filters = airbench.whitening_filters
    if setting in ("airbench", "eps"):
        airbench.whitening_filters = airbench_whitening
    overrides = {"seed": 0}
    if setting in ("airbench", "whitening"):
        overrides["model_arguments.batchnorm_eps"] = 1e-12
    seen: dict = {}
    original_step = trainer_module.Trainer.train_step

    def train_step(self, *arguments, **keywords):
        loss = original_step(self, *arguments, **keywords)
        if self.step == 1:
            gradients = [
                p.grad.norm().item() for p in self.model.parameters() if p.grad is not None and p.ndim == 1
            ]
            seen["step1_bias_gradient"] = max(gradients)
        seen["loss"], seen["step"] = float(loss), self.step
        if not math.isfinite(float(loss)) or self.step >= steps:
            raise StopIteration
        return loss

    trainer_module.Trainer.train_step = train_step
    try:
        with tempfile.TemporaryDirectory() as out:
            train(folder, out=out, verbose=False, overrides=overrides)
    except (StopIteration, RuntimeError, FloatingPointError):
        pass  # StopIteration raised inside the loop may surface as RuntimeError
    finally:
        trainer_module.Trainer.train_step = original_step
        airbench.whitening_filters = original_filters
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--steps", type=int, default=30)
    options = parser.parse_args()
    print("| folder | setting | bias gradient at step 1 | loss at the last step (step) |")
    print("|---|---|---|---|")
    for folder in options.folders:
        for setting in SETTINGS:
            seen = first_steps(folder, setting, options.steps)
            print(
                f"| {folder} | {setting} | {seen.get('step1_bias_gradient', float('nan')):.3g} "
                f"| {seen.get('loss', float('nan')):.3g} ({seen.get('step')}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
