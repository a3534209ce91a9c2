"""The training loop: read it top to bottom.

Data is one uint8 tensor in memory, or a store on disk read as batches need it; each step gathers
a batch by index (a stored batch is read by a background thread while the step before it trains),
converts it to normalised float in channels_last layout, augments it, runs forward/backward under
autocast, and steps the optimizer. There is no per-sample Python and no DataLoader in the hot loop.
Everything given to it comes in one ``TrainingJob`` (``engine.job``). What the run reports
(console, run folder) listens through callbacks (``engine.callbacks``), as do the best epoch and
early stopping (``engine.monitoring``); the loss and the metrics are the job's task's.
"""

from __future__ import annotations

import contextlib
import time

import torch

from cnnkit.data.stored_images import select_rows
from cnnkit.engine import distributed
from cnnkit.engine.augment import Augmenter, crops_for
from cnnkit.engine.callbacks import CallbackList, EpochBegin, EpochEnd, History, Progress, TrainingView
from cnnkit.engine.divergence import (
    TrainingDiverged,
    check_finite,
    non_finite_metric,
    retry_or_stop,
    snapshot,
)
from cnnkit.engine.fine_tuning import HeadFirst
from cnnkit.engine.interrupt import StopRequest, TrainingInterrupted
from cnnkit.engine.job import TrainingJob
from cnnkit.engine.lookahead import Lookahead, advance_lookahead
from cnnkit.engine.metrics import MetricSet
from cnnkit.engine.monitoring import BestEpoch, EarlyStopping
from cnnkit.engine.optimization import build_optimizer, lr_multiplier, set_learning_rate
from cnnkit.engine.planning import plan_micro_batch, plan_steps
from cnnkit.engine.training_state import EpochPosition, load_training_state, training_state
from cnnkit.runtime.batched import predict_logits
from cnnkit.runtime.normalization import InputChunks, InputTransform, center_crop_images
from cnnkit.runtime.prefetch import prefetched

# Images the data-initialised first layer (the fast network's whitening) is computed from.
INITIALIZATION_SAMPLE = 5000
# Progress (running loss and accuracy) is read every this many steps: each read syncs a GPU.
PROGRESS_EVERY = 10


class Trainer:
    """The state of one training run: model, optimizer, augmentation, lookahead, step count."""

    def __init__(self, job: TrainingJob) -> None:
        data, recipe, device = job.data, job.recipe, job.device
        self.model = job.model.to(device, memory_format=torch.channels_last)
        # Under torchrun: this rank's place. The forward/backward runs through the DDP wrapper.
        self.distributed = distributed.current()
        self.training_model = self.model
        self._wrapped_trainable: tuple[bool, ...] | None = None
        self.data, self.recipe, self.normalization, self.task = data, recipe, job.normalization, job.task
        self.device, self.precision, self.stop_request = device, job.precision, job.stop_request
        self.has_validation = data.has_validation
        stored_side = min(data.train_images.shape[1:3])  # (N, H, W, C) pixels
        self.input_size = job.input_size or stored_side
        if recipe.cutout > self.input_size:
            size = self.input_size
            raise ValueError(
                f"cutout must be at most the image size ({size} px). Received: cutout={recipe.cutout}"
            )
        self.num_classes = job.classes
        # What the epoch lines show: the task's metrics for this data (balanced accuracy and
        # macro-F1 beside accuracy when the classes are imbalanced) and whatever is monitored.
        imbalanced = self.task.is_imbalanced(data.train_labels, self.num_classes)
        self.metric_names = self.task.metric_names(imbalanced, recipe.monitor)
        # The recipe's listeners come first, so that the job's (the run folder's) hear their verdict.
        monitors: list[object] = [BestEpoch(recipe.monitor)]
        if recipe.patience:
            monitors.append(EarlyStopping(recipe.monitor, recipe.patience))
        self.callbacks = CallbackList([*monitors, *job.callbacks])
        self.view = TrainingView(self)
        self.stop_reason: str | None = None  # set by a callback's request_stop
        # One CPU generator drives shuffling and augmentation: the same seed, the same run, anywhere.
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.to_input = InputTransform(job.normalization, device)
        plan = plan_steps(len(data.train_images), recipe, self.distributed.world_size)
        self.batch_size, self.steps_per_epoch = plan.batch_size, plan.steps_per_epoch
        self.epochs, self.total_steps = plan.epochs, plan.total_steps
        self.micro_batch_size = plan_micro_batch(
            self.model, data, recipe, self.batch_size, self.input_size, device, self.distributed.world_size
        )
        self.step = 0
        # Lowered once when a diverged run is retried (engine.divergence); kept across --resume.
        self.learning_rate_scale = 1.0
        # The recipe's imbalance settings: (class weights, logit shift), None where off.
        self.class_balance = self.task.class_balance(data.train_labels, self.num_classes, recipe, device)
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
        if job.initialize_from_data:
            self._initialize_from_data()
        # Weight decay per step scales with the batch actually used (smaller on small data).
        self.optimizer = build_optimizer(self.model, recipe.replace(batch_size=self.batch_size), device)
        # fp16 gradients underflow without loss scaling (bf16 has fp32's range and needs none).
        self.scaler = torch.amp.GradScaler(device.type, enabled=job.precision == torch.float16)

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
        return self.completed_epochs >= self.epochs or self.stop_reason is not None

    def fit(self) -> History:
        listeners, stop_request = self.callbacks, self.stop_request
        listeners.call("on_train_begin", self.view)
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
            listeners.call("on_epoch_end", EpochEnd(epoch, self.epochs, metrics, self.view))
        if self.distributed.enabled:
            distributed.check_ranks_agree(self.model, self.device)
        listeners.call("on_train_end", self.view)  # early stopping puts the best weights back here
        return self.history

    def metric_set(self, states: dict | None = None, count: int = 0) -> MetricSet:
        """The run's metrics on its device (from saved ``states``: a resumed epoch's sums)."""
        return MetricSet(
            self.metric_names, self.num_classes, self.device, states, count, self.task.multi_label
        )

    def _sum_over_ranks(self, position: EpochPosition) -> None:
        """Turn this rank's running sums of an epoch into the whole job's."""
        position.sums, position.seen = distributed.sum_states(position.sums, position.seen, self.device)

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
        """The epoch's order (a shuffle, or the class-balanced sampler's draw) and flips."""
        count = len(self.data.train_images)
        if self.recipe.sampler == "balanced":  # every class as likely, images drawn with replacement
            weights = self.task.sampling_weights(self.data.train_labels, self.num_classes)
            order = torch.multinomial(weights, count, replacement=True, generator=self.generator)
        else:
            order = torch.randperm(count, generator=self.generator)
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
        training = self.metric_set(position.sums, position.seen).values()
        broken = non_finite_metric(validation) or non_finite_metric(training)
        if broken is not None:
            raise TrainingDiverged(
                f"{broken} became non-finite at the end of epoch {position.epoch}/{self.epochs}."
            )
        metrics = {
            "epoch": position.epoch,
            "seconds": position.train_seconds + time.perf_counter() - started,
            "ms_per_sample": 1000 * position.train_seconds / max(1, position.seen),
            **training,
            **validation,
        }
        self.history.rows.append(metrics)
        return metrics

    def validate(self) -> dict[str, float]:
        """Validation metrics, ``val_``-prefixed (no test-time augmentation: that is for the final score)."""
        if not self.has_validation:
            return {}
        # Each rank scores its share of the validation set; the states are added up across ranks.
        share = self.distributed.shard(len(self.data.val_images))
        # Stored larger than the input (random-crop recipes): scored on centre crops, as predicted.
        # (Views: stored images are read batch by batch as they are scored.)
        images = center_crop_images(select_rows(self.data.val_images, share), self.input_size)
        labels = self.data.val_labels[share]
        metrics = MetricSet(self.metric_names, self.num_classes, "cpu", multi_label=self.task.multi_label)
        if len(images):
            logits = predict_logits(
                self.model,
                images,
                self.normalization,
                self.device,
                self.precision,
                self.recipe.eval_batch_size,
            )
            metrics.update(self.task.evaluation_loss_sum(logits, labels), logits, labels)
        states, count = metrics.states(), metrics.count
        if self.distributed.enabled:
            states, count = distributed.sum_states(states, count, self.device)
        values = MetricSet(
            self.metric_names, self.num_classes, "cpu", states, count, self.task.multi_label
        ).values()
        return {f"val_{name}": value for name, value in values.items()}

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
        running = self.metric_set(position.sums, position.seen)
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
    def _keep_sums(position: EpochPosition, running: MetricSet, started: float) -> None:
        position.sums, position.seen = running.states(), running.count
        position.train_seconds += time.perf_counter() - started

    def _interrupt(self, listeners: CallbackList, stop_request: StopRequest) -> None:
        """Let callbacks save the mid-epoch state, then stop with ``TrainingInterrupted``."""
        if self.distributed.enabled and self.position is not None:
            self._sum_over_ranks(self.position)  # rank 0 saves the whole job's running sums
        saved = next((path for path in listeners.call("on_interrupt", self.view) if path), None)
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
        running: MetricSet,
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
        loss, objective = self.task.loss(
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
        running.update(loss * (1 if is_sum else len(targets)), member_mean, targets)
        return loss

    def _set_first_layer_bias_trainable(self, epoch: int) -> None:
        """The fast network's whitening bias learns for the first few epochs, then freezes."""
        freeze = getattr(self.model, "set_first_layer_bias_trainable", None)
        if freeze is not None and self.recipe.first_layer_bias_epochs:
            freeze(epoch <= self.recipe.first_layer_bias_epochs)

    def state_dict(self) -> dict:
        """``{"model", "optimizer", "training"}``: everything needed to continue exactly (the
        callbacks' states included)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "training": training_state(self),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` output: model, optimizer, RNGs, data position, history."""
        load_training_state(self, state)
