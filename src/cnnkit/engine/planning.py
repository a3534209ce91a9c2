"""How a recipe becomes steps on given data: batch size, steps, epochs, and micro-batches.

Pure arithmetic (with one probe of the model's activation sizes), so that a run's plan can be
written into its config before training starts, and read back exactly on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.data.stored_images import resident_bytes
from cnnkit.recipes import Recipe

MIN_STEPS_PER_EPOCH = 10
# Besides the batch's activations, a training process holds the interpreter, torch and its
# thread pools, the model, its gradients and optimizer state: measured ~0.5 GiB for the fast
# network on CPU before the first batch.
BASE_PROCESS_BYTES = 512 * 2**20
# A leaf module's output is kept for backward (by it or the next layer), and backward holds a
# gradient of about the same size while it runs; the model's own parameters (x4: weights,
# gradients, two optimizer moments) come on top. Calibrated against measured peaks in
# docs/benchmarks.md.
ACTIVATION_COPIES = 3


@dataclass(frozen=True)
class StepPlan:
    """How a recipe's epochs become steps on a given number of training images."""

    batch_size: int  # the global batch actually used (smaller than the recipe's on small data)
    steps_per_epoch: int
    epochs: int  # whole epochs started (a fractional recipe ends inside the last)
    total_steps: int


def plan_steps(count: int, recipe: Recipe, world_size: int = 1) -> StepPlan:
    """Batch size, steps per epoch, epochs and total steps for ``count`` training images.

    ``recipe.min_steps`` lengthens training on small data sets: a few hundred photos at batch
    40 are 10 steps an epoch, too few for any recipe tuned on 25 a epoch over 50,000 images.
    """
    batch_size = min(recipe.batch_size, count)
    if recipe.loss_reduction == "sum":
        # Small data sets (a few hundred images a class) still get MIN_STEPS_PER_EPOCH updates
        # an epoch; with batch 2000 they would get one or none. With a summed loss the step
        # per example doesn't depend on the batch, so this only adds updates. CIFAR-10 is
        # unaffected; a mean-loss recipe (the tutorial) keeps the batch it was asked for.
        batch_size = max(1, min(batch_size, count // MIN_STEPS_PER_EPOCH))
    steps_per_epoch = count // batch_size if recipe.drop_last else math.ceil(count / batch_size)
    if world_size > 1:
        # Every process needs at least one image of every step (BatchNorm can't take none).
        if batch_size < world_size:
            raise ValueError(
                f"The global batch must hold at least one image per process. "
                f"Received: batch_size={batch_size} with {world_size} processes"
            )
        if 0 < count % batch_size < world_size and not recipe.drop_last:
            steps_per_epoch -= 1  # the epoch's last, tiny batch is dropped
    epochs = max(recipe.epochs, recipe.min_steps / steps_per_epoch)
    return StepPlan(batch_size, steps_per_epoch, math.ceil(epochs), math.ceil(steps_per_epoch * epochs))


def min_steps_note(count: int, recipe: Recipe, plan: StepPlan) -> str | None:
    """The line saying that ``recipe.min_steps`` lengthens training on ``count`` images (None
    when it does not): a run much longer than the recipe's epochs must not be a surprise."""
    epochs = recipe.min_steps / plan.steps_per_epoch
    if epochs <= recipe.epochs:
        return None
    return (
        f"min_steps={recipe.min_steps} lengthens {recipe.epochs:g} epochs to {round(epochs, 1):g} on "
        f"{count} images; --set min_steps=0 to turn it off."
    )


def activation_bytes_per_image(model: nn.Module, input_size: int, device: torch.device) -> int:
    """Bytes one image's training step holds at its peak, estimated from one probe forward pass:
    the float32 outputs of every leaf module, times ``ACTIVATION_COPIES``."""
    sizes: list[int] = []

    def record(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    leaves = [module for module in model.modules() if not list(module.children())]
    hooks = [module.register_forward_hook(record) for module in leaves]
    was_training = model.training
    try:
        model.eval()  # no BatchNorm statistics are updated by the probe
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    input_bytes = 3 * input_size * input_size * 4
    return ACTIVATION_COPIES * (4 * sum(sizes) + input_bytes)


def micro_batch_size(
    batch_size: int, bytes_per_image: int, budget_bytes: float, fixed_bytes: int, world_size: int = 1
) -> int:
    """The images a micro-batch may hold so a process's peak stays within ``budget_bytes``.

    ``fixed_bytes``: what the process holds whatever the batch (data, model, optimizer). The
    process's share of the batch is split into equal micro-batches; the whole share when it fits.
    """
    share = math.ceil(batch_size / world_size)
    room = budget_bytes - BASE_PROCESS_BYTES - fixed_bytes
    fitting = max(1, int(room // max(1, bytes_per_image)))
    if fitting >= share:
        return share
    pieces = math.ceil(share / fitting)
    return math.ceil(share / pieces)


def plan_micro_batch(
    model: nn.Module, data, recipe: Recipe, batch_size: int, input_size: int, device, world_size: int
) -> int:
    """A process's images per forward pass: its whole share of the batch, or less where that
    would pass the recipe's memory budget (then gradients add up over micro-batches)."""
    # Stored images hold only their index in memory: their pixels cost no budget.
    parts = (data.train_images, data.val_images)
    fixed = sum(resident_bytes(part) for part in parts if part is not None)
    fixed += 4 * sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    per_image = activation_bytes_per_image(model, input_size, device)
    return micro_batch_size(batch_size, per_image, recipe.memory_budget_gb * 2**30, fixed, world_size)
