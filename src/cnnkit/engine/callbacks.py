"""What training reports, and to whom: the per-epoch history and the callback protocol, as Keras.

A callback is any object with some of the hooks of ``Callback``; the trainer calls those it has,
in order, through a ``CallbackList``. Console output (``engine.console``), the best epoch and early
stopping (``engine.monitoring``), the run folder's files (``runs.recorder``), tuning's pruning and
users' own code all listen the same way. A callback sees a ``TrainingView`` (the model, the plan,
the history; ``request_stop``), never the trainer. One with a ``state_key`` and
``state_dict`` / ``load_state_dict`` has its state saved in ``last.pt`` and given back on
``--resume``. Callbacks hear in list order; a job's run-folder recorder listens last, so that
``last.pt`` holds every other callback's state and stop request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from cnnkit.engine.divergence import Retry
    from cnnkit.engine.trainer import Trainer
    from cnnkit.recipes import Recipe


@dataclass
class History:
    """One row of metrics per epoch; ``history.history["val_accuracy"]`` reads like Keras."""

    rows: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None  # by the recipe's monitored metric (engine.monitoring.BestEpoch)

    @property
    def history(self) -> dict[str, list[float]]:
        keys = self.rows[0].keys() if self.rows else []
        return {key: [row[key] for row in self.rows] for key in keys}


class TrainingView:
    """What a callback may see of a run, and the one thing it may ask: to stop after this epoch."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def model(self) -> nn.Module:
        return self._trainer.model

    @property
    def recipe(self) -> Recipe:
        return self._trainer.recipe

    @property
    def history(self) -> History:
        return self._trainer.history

    @property
    def has_validation(self) -> bool:
        return self._trainer.has_validation

    @property
    def epochs(self) -> int:
        return self._trainer.epochs

    @property
    def completed_epochs(self) -> int:
        return self._trainer.completed_epochs

    @property
    def plan(self) -> dict[str, int]:
        """The batch as planned: size, steps, micro-batch size and ranks."""
        trainer = self._trainer
        return {
            "batch_size": trainer.batch_size,
            "steps_per_epoch": trainer.steps_per_epoch,
            "total_steps": trainer.total_steps,
            "micro_batch_size": trainer.micro_batch_size,
            "world_size": trainer.distributed.world_size,
        }

    @property
    def stop_reason(self) -> str | None:
        return self._trainer.stop_reason

    def request_stop(self, reason: str) -> None:
        """End the run after the current epoch (the first reason asked is the one kept)."""
        if self._trainer.stop_reason is None:
            self._trainer.stop_reason = reason

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (for a callback that saves the run)."""
        return self._trainer.state_dict()


@dataclass
class EpochBegin:
    """An epoch starts (or resumes at ``step``, when a stopped run continues mid-epoch)."""

    epoch: int  # 1-based
    epochs: int
    steps: int  # steps this epoch will have in all
    step: int  # steps already taken


@dataclass
class Progress:
    """Every few steps: the epoch's running training metrics (reading them syncs the device)."""

    epoch: int
    step: int  # steps of this epoch taken so far
    metrics: dict[str, float]


@dataclass
class EpochEnd:
    """What a callback hears after each epoch: its metrics (Keras's ``logs``) and the run's view."""

    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]
    view: TrainingView

    @property
    def logs(self) -> dict[str, float]:
        return self.metrics

    @property
    def history(self) -> History:
        return self.view.history

    @property
    def model(self) -> Any:
        return self.view.model


class Callback:
    """The hooks a training callback may have; each is optional, and these do nothing."""

    def on_train_begin(self, view: TrainingView) -> None: ...

    def on_epoch_begin(self, state: EpochBegin) -> None: ...

    def on_progress(self, state: Progress) -> None: ...

    def on_epoch_end(self, state: EpochEnd) -> None: ...

    def on_train_end(self, view: TrainingView) -> None: ...

    def on_report(self, report: dict[str, Any]) -> None:
        """The run's final report (``report.json``), once a job has evaluated its ``best.pt``."""

    def on_retry(self, retry: Retry) -> None:
        """The run diverged and trains again from its last good state at a lower learning rate."""

    def on_interrupt(self, view: TrainingView) -> Path | None:
        """A stop was requested (Ctrl-C, SIGTERM): save what must survive; return where, if anywhere."""


class CallbackList:
    """Calls a hook on every callback that has it, in order; keeps the callbacks' states."""

    def __init__(self, callbacks: Iterable[object] = ()) -> None:
        self.callbacks = list(callbacks)

    def wants(self, hook: str) -> bool:
        """Whether any callback has ``hook`` (the trainer skips device syncs nobody reads)."""
        return any(callable(getattr(callback, hook, None)) for callback in self.callbacks)

    def call(self, hook: str, argument: Any) -> list[Any]:
        results = []
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if callable(method):
                results.append(method(argument))
        return results

    def state_dict(self) -> dict[str, Any]:
        """``{state_key: state}`` of the callbacks that keep state across ``--resume``."""
        return {
            callback.state_key: callback.state_dict()
            for callback in self.callbacks
            if getattr(callback, "state_key", None) and callable(getattr(callback, "state_dict", None))
        }

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for callback in self.callbacks:
            key = getattr(callback, "state_key", None)
            if key in states and callable(getattr(callback, "load_state_dict", None)):
                callback.load_state_dict(states[key])
