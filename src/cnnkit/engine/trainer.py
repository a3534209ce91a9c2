"""The training loop: read it top to bottom.

Data is one uint8 tensor in memory, or a store on disk read as batches need it; each step gathers
a batch by index (a stored batch is read by a background thread while the step before it trains),
converts it to normalised float in channels_last layout, augments it, runs forward/backward under
autocast, and steps the optimizer. There is no per-sample Python and no DataLoader in the hot loop.
What the run reports (console, run folder) listens through callbacks (``engine.callbacks``);
the best epoch and early stopping are ``engine.best``'s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.data.stored_images import StoredImages, select_rows
from cnnkit.engine import distributed
from cnnkit.engine.augment import Augmenter, crops_for
from cnnkit.engine.best import BestModel
from cnnkit.engine.callbacks import CallbackList, EpochBegin, EpochEnd, History, Progress
from cnnkit.engine.divergence import (
    TrainingDiverged,
    check_finite,
    non_finite_metric,
    retry_or_stop,
    snapshot,
)
from cnnkit.engine.evaluation import evaluate_tensors
from cnnkit.engine.fine_tuning import HeadFirst
from cnnkit.engine.interrupt import StopRequest, TrainingInterrupted
from cnnkit.engine.lookahead import Lookahead, advance_lookahead
from cnnkit.engine.losses import class_balance, training_loss
from cnnkit.engine.metrics import BATCH_SUMS, VALIDATION_PREFIX, RunningMetrics, mean_values
from cnnkit.engine.optimization import build_optimizer, lr_multiplier, set_learning_rate
from cnnkit.engine.planning import plan_micro_batch, plan_steps
from cnnkit.engine.prefetch import prefetched
from cnnkit.engine.preprocess import InputChunks, InputTransform, Normalization, center_crop_images
from cnnkit.engine.training_state import EpochPosition, load_training_state, training_state
from cnnkit.recipes import Recipe

# Images the data-initialised first layer (the fast network's whitening) is computed from.
INITIALIZATION_SAMPLE = 5000
# Progress (running loss and accuracy) is read every this many steps: each read syncs a GPU.
PROGRESS_EVERY = 10


@dataclass
class TrainingData:
    """Images (tensors, or ``StoredImages`` read from disk) and labels to train on, already split;
    ``val_*`` may be None."""

    train_images: torch.Tensor | StoredImages
    train_labels: torch.Tensor
    val_images: torch.Tensor | StoredImages | None = None
    val_labels: torch.Tensor | None = None


def fit(
    model: nn.Module,
    data: TrainingData,
    recipe: Recipe,
    normalization: Normalization,
    device: torch.device,
    precision: torch.dtype,
    callbacks: Sequence[object] = (),
    resume_state: dict | None = None,
    stop_request: StopRequest | None = None,
    input_size: int | None = None,
    initialize_from_data: bool = True,
) -> History:
    """Train ``model`` in place as ``recipe`` says; return the per-epoch history.

    ``callbacks`` hear about the run (see ``engine.callbacks``; ``engine.console.ConsoleLogger``
    prints it). ``resume_state`` (from ``Trainer.state_dict``) continues a run exactly where it
    stopped; ``stop_request`` (see ``engine.interrupt``) makes it save and stop between two steps.
    ``input_size``: the model's input side, when the stored training images are larger (they are
    then cropped to it; default: their size). ``initialize_from_data`` False keeps a data-
    initialised first layer as it is (weights loaded from a trained model).
    """
    trainer = Trainer(model, data, recipe, normalization, device, precision, input_size, initialize_from_data)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
    return trainer.fit(callbacks, stop_request)


class Trainer:
    """The state of one training run: model, optimizer, augmentation, lookahead, step count."""

    def __init__(
        self,
        model,
        data,
        recipe,
        normalization,
        device,
        precision,
        input_size=None,
        initialize_from_data=True,
    ) -> None:
        self.model = model.to(device, memory_format=torch.channels_last)
        # Under torchrun: this rank's place. The forward/backward runs through the DDP wrapper.
        self.distributed = distributed.current()
        self.training_model = self.model
        self._wrapped_trainable: tuple[bool, ...] | None = None
        self.data, self.recipe, self.normalization = data, recipe, normalization
        self.device, self.precision = device, precision
        has_validation = data.val_images is not None and len(data.val_images) > 0
        if recipe.patience and not has_validation:
            raise ValueError(
                f"Early stopping watches validation metrics: use a validation split. "
                f"Received: patience={recipe.patience} with no validation images"
            )
        stored_side = min(data.train_images.shape[1:3])  # (N, H, W, C) pixels
        self.input_size = input_size or stored_side
        if recipe.cutout > self.input_size:
            size = self.input_size
            raise ValueError(
                f"cutout must be at most the image size ({size} px). Received: cutout={recipe.cutout}"
            )
        # Without validation data, "best" falls back to the training metric of the same kind.
        monitor = recipe.monitor if has_validation else recipe.monitor.removeprefix(VALIDATION_PREFIX)
        self.best = BestModel(monitor, recipe.patience)
        # One CPU generator drives shuffling and augmentation: the same seed, the same run, anywhere.
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.to_input = InputTransform(normalization, device)
        plan = plan_steps(len(data.train_images), recipe, self.distributed.world_size)
        self.batch_size, self.steps_per_epoch = plan.batch_size, plan.steps_per_epoch
        self.epochs, self.total_steps = plan.epochs, plan.total_steps
        self.micro_batch_size = plan_micro_batch(
            model, data, recipe, self.batch_size, self.input_size, device, self.distributed.world_size
        )
        self.step = 0
        # Lowered once when a diverged run is retried (engine.divergence); kept across --resume.
        self.learning_rate_scale = 1.0
        # (class weights, logit shift) of the recipe's imbalance settings, set at the first step.
        self.class_balance: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
        self.history = History()
        self.position: EpochPosition | None = None  # None between epochs
        self.augmenter = Augmenter(
            len(data.train_images),
            recipe.flip,
            recipe.translate,
            self.generator,
            recipe.cutout,
            crops_for(recipe, data.train_images.shape[1], self.input_size),
        )
        self.lookahead: Lookahead | None = None
        self.head_first = HeadFirst(self.model, recipe.freeze_epochs, recipe.fine_tune_lr_scale)
        if initialize_from_data:
            self._initialize_from_data()
        # Weight decay per step scales with the batch actually used (smaller on small data).
        self.optimizer = build_optimizer(self.model, recipe.replace(batch_size=self.batch_size), device)
        # fp16 gradients underflow without loss scaling (bf16 has fp32's range and needs none).
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)

    def _initialize_from_data(self) -> None:
        """Models with a data-dependent first layer (``initialize_from_data``) get a sample, seen
        as evaluation sees images (centre crops of the input size)."""
        initialize = getattr(self.model, "initialize_from_data", None)
        if initialize is None:
            return
        images = self.data.train_images
        sample = torch.randperm(len(images), generator=self.generator)[:INITIALIZATION_SAMPLE]
        initialize(InputChunks(center_crop_images(images[sample], self.input_size), self.to_input))

    @property
    def completed_epochs(self) -> int:
        return len(self.history.rows)

    @property
    def finished(self) -> bool:
        return self.completed_epochs >= self.epochs or self.best.should_stop

    def fit(self, callbacks: Sequence[object] = (), stop_request: StopRequest | None = None) -> History:
        listeners = CallbackList(callbacks)
        listeners.call("on_train_begin", self)
        while not self.finished:
            if self._stop_requested(stop_request):  # arrived in an epoch's last step or validation
                self._interrupt(listeners, stop_request)
            epoch = self.completed_epochs + 1
            if self.position is None:
                self.position = self._begin_epoch(epoch)
            good = snapshot(self.state_dict())  # where a diverged epoch is trained again from
            try:
                self.train_steps(listeners, stop_request)
                metrics = self._end_epoch()
            except TrainingDiverged as diverged:
                retry_or_stop(self, good, diverged, listeners)
                continue
            improved = self.best.update(epoch, metrics, self.model)
            self.history.best_epoch = self.best.epoch
            state = EpochEnd(epoch, self.epochs, metrics, self.history, self, improved, self.best.should_stop)
            listeners.call("on_epoch_end", state)
        # Keras's restore_best_weights: with early stopping, the run hands back its best model.
        self.best.restore(self.model)
        if self.distributed.enabled:
            distributed.check_ranks_agree(self.model, self.device)
        listeners.call("on_train_end", self)
        return self.history

    def _sum_over_ranks(self, position: EpochPosition) -> None:
        """Turn this rank's running sums of an epoch into the whole job's."""
        names = list(position.sums)
        totals = distributed.all_reduce_sum([*position.sums.values(), position.seen], self.device)
        position.sums = dict(zip(names, totals[:-1], strict=True))
        position.seen = int(totals[-1])

    def _stop_requested(self, stop_request: StopRequest | None) -> bool:
        """Whether to stop now; under torchrun every rank must agree to stop at the same step."""
        if self.distributed.enabled:
            return distributed.any_rank(bool(stop_request), self.device)
        return bool(stop_request)

    def _wrap_for_distributed(self) -> None:
        """(Re)build the DDP wrapper when the set of trainable parameters changes.

        DDP expects a gradient for every parameter it was built with; the fast network freezes
        its first layer's bias after a few epochs, so the wrapper is rebuilt then.
        """
        if not self.distributed.enabled:
            return
        trainable = tuple(parameter.requires_grad for parameter in self.model.parameters())
        if trainable != self._wrapped_trainable:
            self.training_model = distributed.wrap(self.model, self.device)
            self._wrapped_trainable = trainable

    def _begin_epoch(self, epoch: int) -> EpochPosition:
        order = torch.randperm(len(self.data.train_images), generator=self.generator)
        return EpochPosition(epoch, order, self.augmenter.flips_for_epoch(epoch - 1))

    def _end_epoch(self) -> dict[str, float]:
        """Close the epoch: lookahead average, validation, one history row."""
        position, self.position = self.position, None
        if self.lookahead is not None:
            self.lookahead.update(self.model, decay=1.0)  # end each epoch on the averaged weights
        if self.distributed.enabled:
            distributed.average_buffers(self.model)
            self._sum_over_ranks(position)
        started = time.perf_counter()
        validation = self.validate()
        broken = non_finite_metric(validation) or non_finite_metric(mean_values(position.sums, position.seen))
        if broken is not None:
            raise TrainingDiverged(
                f"{broken} became non-finite at the end of epoch {position.epoch}/{self.epochs}."
            )
        metrics = {
            "epoch": position.epoch,
            "seconds": position.train_seconds + time.perf_counter() - started,
            "ms_per_sample": 1000 * position.train_seconds / max(1, position.seen),
            **mean_values(position.sums, position.seen),
            **validation,
        }
        self.history.rows.append(metrics)
        return metrics

    def validate(self) -> dict[str, float]:
        """Validation metrics, ``val_``-prefixed (no test-time augmentation: that is for the final score)."""
        if self.data.val_images is None or not len(self.data.val_images):
            return {}
        # Each rank scores its share of the validation set; the sums are added up across ranks.
        share = self.distributed.shard(len(self.data.val_images))
        # Stored larger than the input (random-crop recipes): scored on centre crops, as predicted.
        # (Views: stored images are read batch by batch as they are scored.)
        images = center_crop_images(select_rows(self.data.val_images, share), self.input_size)
        labels = self.data.val_labels[share]
        sums = [0.0] * len(BATCH_SUMS) + [float(len(images))]
        if len(images):
            result = evaluate_tensors(
                self.model,
                images,
                labels,
                self.normalization,
                self.device,
                self.precision,
                self.recipe.eval_batch_size,
            )
            sums = [result[name] * len(images) for name in BATCH_SUMS] + [float(len(images))]
        if self.distributed.enabled:
            sums = distributed.all_reduce_sum(sums, self.device)
        totals, count = dict(zip(BATCH_SUMS, sums[:-1], strict=True)), int(sums[-1])
        return {VALIDATION_PREFIX + name: value for name, value in mean_values(totals, count).items()}

    def train_steps(self, listeners: CallbackList, stop_request: StopRequest | None = None) -> None:
        """Run the current epoch's remaining steps (all of them, unless resumed mid-epoch)."""
        position = self.position
        self.model.train()
        self.head_first.apply(self.model, position.epoch)
        if not self.head_first.is_frozen(position.epoch):
            self._set_first_layer_bias_trainable(position.epoch)
        self._wrap_for_distributed()
        # Every epoch but the last is whole; the last may be cut short by fractional epochs.
        steps = min(self.steps_per_epoch, self.total_steps - (position.epoch - 1) * self.steps_per_epoch)
        listeners.call("on_epoch_begin", EpochBegin(position.epoch, self.epochs, steps, position.step))
        reports_progress = listeners.wants("on_progress")
        # Sums stay on the device: reading them every step would force a CUDA sync.
        running = RunningMetrics(self.device, position.sums, position.seen)
        started = time.perf_counter()
        batches = [
            position.order[step * self.batch_size : (step + 1) * self.batch_size]
            for step in range(position.step, steps)
        ]
        # This rank's share of each batch's images; stored ones are read while the step before trains.
        shares = (batch[self.distributed.shard(len(batch))] for batch in batches)
        with contextlib.closing(prefetched(self.data.train_images, shares)) as pixels:
            for step, batch, images in zip(range(position.step, steps), batches, pixels, strict=False):
                loss = self.train_step(batch, position.flips[batch], running, images)
                # Reading the loss and weights forces a device sync: cheap on the CPU, so every step
                # there; on a GPU at the progress updates, which sync anyway, and the epoch's last step.
                sync_point = step % PROGRESS_EVERY == 0 or step == steps - 1
                if self.device.type == "cpu" or sync_point:
                    check_finite(self, loss, f"at epoch {position.epoch}/{self.epochs}, step {step + 1}")
                position.step = step + 1
                if reports_progress and sync_point:
                    listeners.call("on_progress", Progress(position.epoch, position.step, running.values()))
                # The last step ends the epoch: no stop is needed there.
                if position.step < steps and self._stop_requested(stop_request):
                    self._keep_sums(position, running, started)
                    self._interrupt(listeners, stop_request)
        self._keep_sums(position, running, started)

    @staticmethod
    def _keep_sums(position: EpochPosition, running: RunningMetrics, started: float) -> None:
        position.sums, position.seen = running.totals(), running.count
        position.train_seconds += time.perf_counter() - started

    def _interrupt(self, listeners: CallbackList, stop_request: StopRequest) -> None:
        """Let callbacks save the mid-epoch state, then stop with ``TrainingInterrupted``."""
        if self.distributed.enabled and self.position is not None:
            self._sum_over_ranks(self.position)  # rank 0 saves the whole job's running sums
        saved = next((path for path in listeners.call("on_interrupt", self) if path), None)
        position = self.position
        where = (
            f"at epoch {position.epoch}/{self.epochs}, step {position.step}/{self.steps_per_epoch}"
            if position is not None
            else f"after epoch {self.completed_epochs}/{self.epochs}"
        )
        raise TrainingInterrupted(
            f"Training stopped by {stop_request.signal_name} {where}"
            + (f"; its state is saved in {saved}" if saved else ""),
            stop_request.signal_number,
            saved,
        )

    def train_step(
        self,
        batch: torch.Tensor,
        flips: torch.Tensor,
        running: RunningMetrics,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Forward, backward and update on one global batch of indices; the batch's metrics go to
        ``running``. Returns this rank's loss (its last micro-batch's, checked for NaN per step).
        ``pixels``: this rank's share of the batch's images, already read (default: read here).

        The rank's share runs in micro-batches of ``micro_batch_size`` when the whole would pass
        the memory budget: their gradients add up to the share's, so the update is the batch's
        (BatchNorm normalises each micro-batch by its own statistics). One micro-batch is the
        plain step, unchanged.
        """
        global_count = len(batch)
        draw = self.augmenter.draw(global_count)  # drawn for the global batch on every rank
        share = self.distributed.shard(global_count)
        batch, flips, draw = batch[share], flips[share], draw[share]
        if pixels is None:
            pixels = self.data.train_images[batch]
        epoch = self.completed_epochs + 1
        multiplier = lr_multiplier(self.step, self.total_steps, self.recipe) * self.head_first.lr_scale(epoch)
        multiplier *= self.learning_rate_scale
        set_learning_rate(self.optimizer, multiplier)
        self.optimizer.zero_grad(set_to_none=True)
        starts = range(0, len(batch), self.micro_batch_size)
        for index, start in enumerate(starts):
            part = slice(start, start + self.micro_batch_size)
            last = index == len(starts) - 1
            # DDP averages gradients over ranks at the backward pass of the last micro-batch only.
            with (
                contextlib.nullcontext()
                if last or not self.distributed.enabled
                else self.training_model.no_sync()
            ):
                loss = self._forward_backward(
                    batch[part], pixels[part], flips[part], draw[part], global_count, len(batch), running
                )
        self.scaler.step(self.optimizer)  # a plain step unless fp16 (then unscaled, skipped on overflow)
        self.scaler.update()
        self.step += 1
        self.lookahead = advance_lookahead(
            self.lookahead, self.model, self.step, self.total_steps, self.steps_per_epoch, self.recipe
        )
        return loss

    def _forward_backward(
        self, indices, pixels, flips, draw, global_count: int, share_count: int, running
    ) -> torch.Tensor:
        inputs = self.augmenter(self.to_input(pixels), flips, draw)
        targets = self.data.train_labels[indices].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.precision, enabled=self.precision != torch.float32):
            logits = self.training_model(inputs)
        if self.class_balance is None:  # the number of classes is the logits' last dimension
            self.class_balance = class_balance(
                self.data.train_labels, logits.shape[-1], self.recipe, self.device
            )
        loss, objective = training_loss(
            logits, targets, self.recipe.label_smoothing, self.recipe.loss_reduction, *self.class_balance
        )
        is_sum = self.recipe.loss_reduction == "sum"
        if len(indices) != share_count and not is_sum:  # a micro-batch: its part of the share's mean
            objective = objective * (len(indices) / share_count)
        if self.distributed.enabled:
            # DDP averages gradients over ranks. Scaled so the average is the global batch's own
            # gradient: a summed loss the sum over every rank, a mean the mean over the global
            # batch (shares may differ by one image).
            world_size = self.distributed.world_size
            objective = objective * (world_size if is_sum else world_size * share_count / global_count)
        self.scaler.scale(objective).backward()
        loss = loss.detach()
        member_mean = logits.detach() if logits.ndim == 2 else logits.detach().mean(0)
        running.add(loss * (1 if is_sum else len(targets)), member_mean, targets)
        return loss

    def _set_first_layer_bias_trainable(self, epoch: int) -> None:
        """The fast network's whitening bias learns for the first few epochs, then freezes."""
        freeze = getattr(self.model, "set_first_layer_bias_trainable", None)
        if freeze is not None and self.recipe.first_layer_bias_epochs:
            freeze(epoch <= self.recipe.first_layer_bias_epochs)

    def state_dict(self) -> dict:
        """``{"model", "optimizer", "training"}``: everything needed to continue exactly."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "training": training_state(self),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` output: model, optimizer, RNGs, data position, history."""
        load_training_state(self, state)
