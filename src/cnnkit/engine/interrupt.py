"""Stopping training cleanly on Ctrl-C (SIGINT) or SIGTERM.

The first signal only raises a flag: the trainer finishes the step it is in, saves everything
needed to continue, and raises ``TrainingInterrupted``. A second signal stops at once (the last
end-of-epoch checkpoint is still there, written atomically).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


class StopRequest:
    """A flag the trainer checks between steps; ``signal_number`` says what set it."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __bool__(self) -> bool:
        return self.signal_number is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else "request"


class TrainingInterrupted(Exception):
    """Training stopped on request after saving its state; ``exit_code`` follows the shell's 128+N."""

    def __init__(self, message: str, signal_number: int | None, checkpoint: str | None) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal_number or signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[StopRequest]:
    """Within the block, the first of ``signals`` sets the yielded ``StopRequest``.

    Outside the main thread Python cannot install handlers: the request then never fires and
    signals keep their default behaviour.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(number: int, _frame) -> None:
        if request:  # the second signal: stop now
            raise KeyboardInterrupt
        request.signal_number = number
        print(
            f"\n{signal.Signals(number).name} received: stopping after this step to save the run "
            "(send it again to stop at once).",
            file=sys.stderr,
            flush=True,
        )

    previous = {number: signal.signal(number, handle) for number in signals}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
