"""What training reports, and to whom: the per-epoch history and the callback protocol.

A callback is any object with some of the hooks of ``Callback``; the trainer calls those it has,
in order, through a ``CallbackList``. Console output (``engine.console``), the run folder's files
(``runs.recorder``) and users' own code all listen the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnkit.engine.divergence import Retry
    from cnnkit.engine.trainer import Trainer


@dataclass
class History:
    """One row of metrics per epoch; ``history.history["val_accuracy"]`` reads like Keras."""

    rows: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None  # by the recipe's monitored metric

    @property
    def history(self) -> dict[str, list[float]]:
        keys = self.rows[0].keys() if self.rows else []
        return {key: [row[key] for row in self.rows] for key in keys}


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
    """What a callback sees after each epoch (``trainer`` gives the full state to save)."""

    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]
    history: History
    trainer: Trainer
    improved: bool  # the monitored metric is the best so far (best.pt material)
    stopping_early: bool = False  # early stopping ends the run after this epoch

    @property
    def model(self) -> Any:
        return self.trainer.model

    @property
    def optimizer(self) -> Any:
        return self.trainer.optimizer


class Callback:
    """The hooks a training callback may have; each is optional, and these do nothing."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_begin(self, state: EpochBegin) -> None: ...

    def on_progress(self, state: Progress) -> None: ...

    def on_epoch_end(self, state: EpochEnd) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def on_retry(self, retry: Retry) -> None:
        """The run diverged and trains again from its last good state at a lower learning rate."""

    def on_interrupt(self, trainer: Trainer) -> Path | None:
        """A stop was requested (Ctrl-C, SIGTERM): save what must survive; return where, if anywhere."""


class CallbackList:
    """Calls a hook on every callback that has it, in order."""

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
