"""A small progress bar: redrawn in place on a terminal, plain occasional lines otherwise.

Plain lines matter for logs and CI, where carriage returns turn into one giant line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Progress over ``total`` units (``total=None`` when unknown, e.g. a download without size).

    Use ``update(n, **values)`` to advance and show extra values (``loss=0.52``), ``close()``
    (or a ``with`` block) to finish the line.
    """

    def __init__(
        self,
        total: int | None,
        description: str = "",
        unit: str = "it",
        stream: TextIO | None = None,
        enabled: bool = True,
        plain_interval_seconds: float = 10.0,
        show_rate: bool = False,
    ) -> None:
        self.total = total
        self.show_rate = show_rate  # units a second, e.g. "2,400 images/s"
        self.description = description
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.count = 0
        self.values: dict[str, float] = {}
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        # A terminal can take ~10 redraws a second; a log wants a line every few seconds.
        self.interval = 0.1 if self.interactive else plain_interval_seconds
        self.start_time = time.perf_counter()
        self.last_draw = -float("inf")
        self.drawn_count = -1

    def update(self, count: int = 1, **values: float) -> None:
        self.count += count
        self.values.update(values)
        now = time.perf_counter()
        if self.enabled and now - self.last_draw >= self.interval:
            self.last_draw = now
            self._draw(final=False)

    def close(self) -> None:
        # Off a terminal, a final line repeating the last one drawn would only be noise.
        if self.enabled and (self.interactive or self.drawn_count != self.count):
            self._draw(final=True)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _draw(self, final: bool) -> None:
        self.drawn_count = self.count
        elapsed = time.perf_counter() - self.start_time
        text = f"{self.description} {self._counter()} {_format_seconds(elapsed)}"
        if self.show_rate and self.count and elapsed > 0:
            text += f" {self.count / elapsed:,.0f} {self.unit}/s"
        if self.total and self.count and not final:
            remaining = elapsed / self.count * (self.total - self.count)
            text += f" eta {_format_seconds(remaining)}"
        for name, value in self.values.items():
            text += f" - {name}: {value:.4f}"
        if self.interactive:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final or self.count:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _counter(self) -> str:
        if not self.total:
            return _format_amount(self.count, self.unit)
        width = 30
        filled = min(width, int(width * self.count / self.total))
        bar = "=" * filled + (">" if filled < width else "") + "." * max(0, width - filled - 1)
        return f"{_format_amount(self.count, self.unit)}/{_format_amount(self.total, self.unit)} [{bar}]"


def _format_amount(count: int, unit: str) -> str:
    if unit == "B":
        for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if count >= scale:
                return f"{count / scale:.1f} {suffix}"
        return f"{count} B"
    return str(count)


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"
