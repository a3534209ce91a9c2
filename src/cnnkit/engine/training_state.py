"""A trainer's state as plain data, so that a stopped run continues exactly where it left off.

Beside the model and optimizer, "exactly" needs the step count, the random generators, the
epoch's data order and flips, the running metric states of the epoch, the lookahead average, the
callbacks' states (the best value so far, early stopping's weights) and the history. Everything
here is tensors, numbers, lists and dicts: it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from cnnkit.engine.lookahead import Lookahead

# 3: metric states as tensors, callbacks' states under "callbacks", the stop's reason.
# 2: the epoch's running sums by metric name, the best value and weights at the top level.
# 1: loss_sum and correct.
STATE_VERSION = 3
_SAMPLES_HASHED = 64  # images per tensor in the data fingerprint: enough to tell data sets apart


@dataclass
class EpochPosition:
    """Where the current epoch stands: its data order and flips, and the running sums."""

    epoch: int  # 1-based
    order: torch.Tensor
    flips: torch.Tensor
    step: int = 0  # steps of this epoch already taken
    sums: dict[str, Any] = field(default_factory=dict)  # metric states by name (engine.metrics)
    seen: int = 0
    train_seconds: float = 0.0


def training_state(trainer: Any) -> dict[str, Any]:
    """The state of ``trainer`` (a ``Trainer``) besides its model and optimizer."""
    position = trainer.position
    return {
        "version": STATE_VERSION,
        "step": trainer.step,
        "finished": trainer.finished,
        "stop_reason": trainer.stop_reason,
        "history": [dict(row) for row in trainer.history.rows],
        "position": None
        if position is None
        else {
            "epoch": position.epoch,
            "order": position.order,
            "flips": position.flips,
            "step": position.step,
            "sums": dict(position.sums),
            "seen": position.seen,
            "train_seconds": position.train_seconds,
        },
        "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(),  # models with dropout draw from the global generator
        "cuda_rng": torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else None,
        "first_flips": trainer.augmenter.first_flips,
        "lookahead": None if trainer.lookahead is None else dict(trainer.lookahead.average),
        "callbacks": trainer.callbacks.state_dict(),
        "grad_scaler": trainer.scaler.state_dict(),
        "learning_rate_scale": trainer.learning_rate_scale,  # lowered by a divergence's retry
        "batch_size": trainer.batch_size,
        "total_steps": trainer.total_steps,
        "data_fingerprint": data_fingerprint(trainer.data),
    }


def load_training_state(trainer: Any, state: dict[str, Any]) -> None:
    """Put ``trainer`` back in ``state`` (``Trainer.state_dict()``'s output)."""
    training = state["training"]
    if training.get("version") not in (1, 2, STATE_VERSION):
        raise ValueError(f"Unsupported training state version. Received: version={training.get('version')!r}")
    if training["data_fingerprint"] != data_fingerprint(trainer.data):
        raise ValueError(
            "The training data differs from the run's: resuming needs the same images, classes "
            "and validation split the run started with."
        )
    for key in ("batch_size", "total_steps"):
        if training[key] != getattr(trainer, key):
            raise ValueError(
                f"The run was planned with {key}={training[key]}; this setup gives "
                f"{key}={getattr(trainer, key)}. Resume with the run's own recipe."
            )
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.step = training["step"]
    trainer.learning_rate_scale = training.get("learning_rate_scale", 1.0)  # none before retries
    trainer.stop_reason = training.get("stop_reason")
    trainer.history.rows = [dict(row) for row in training["history"]]
    position = training["position"]
    trainer.position = None if position is None else EpochPosition(**_current_position(position))
    if trainer.position is not None and not trainer.distributed.is_main:
        # The saved sums are the whole job's: rank 0 carries them on, the others restart at zero.
        trainer.position.sums, trainer.position.seen = {}, 0
    trainer.generator.set_state(training["generator"])
    torch.set_rng_state(training["torch_rng"])
    if training["cuda_rng"] is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(training["cuda_rng"], trainer.device)
    trainer.augmenter.first_flips = training["first_flips"]
    if training["lookahead"] is not None:
        trainer.lookahead = Lookahead(trainer.model)
        trainer.lookahead.average = {
            name: tensor.to(trainer.device) for name, tensor in training["lookahead"].items()
        }
    callbacks = _callback_states(training)
    trainer.callbacks.load_state_dict(callbacks)
    trainer.history.best_epoch = callbacks.get("best_epoch", {}).get("epoch")
    if training.get("grad_scaler"):
        trainer.scaler.load_state_dict(training["grad_scaler"])


def _current_position(position: dict[str, Any]) -> dict[str, Any]:
    """A saved epoch position in this version's form (version 1 kept two sums under their own names)."""
    position = dict(position)
    if "loss_sum" in position:
        position["sums"] = {"loss": position.pop("loss_sum"), "accuracy": float(position.pop("correct"))}
    return position


def _callback_states(training: dict[str, Any]) -> dict[str, Any]:
    """The callbacks' states; before version 3 the best value, epoch and weights were the
    trainer's own (the weights kept only with early stopping)."""
    if "callbacks" in training:
        return training["callbacks"]
    best = {"value": training["best_value"], "epoch": training["best_epoch"]}
    return {"best_epoch": best, "early_stopping": {**best, "weights": training["best_weights"]}}


def data_fingerprint(data: Any) -> str:
    """A digest of a ``TrainingData``: every label, and a spread of images of each split."""
    digest = hashlib.blake2b(digest_size=16)
    for images, labels in (
        (data.train_images, data.train_labels),
        (data.val_images, data.val_labels),
    ):
        if images is None:
            digest.update(b"none")
            continue
        digest.update(repr((tuple(images.shape), str(images.dtype))).encode())
        digest.update(labels.cpu().contiguous().numpy().tobytes())
        stride = max(1, len(images) // _SAMPLES_HASHED)
        digest.update(images[::stride].cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
