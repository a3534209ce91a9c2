"""How fast a model answers: batch latency (p50, p99) and images a second, whatever runs it.

``time_batches`` times any callable on one batch (a PyTorch module, an ONNX Runtime session):
warm-up runs first (not timed: first calls allocate, pick kernels, fuse), then runs for a time
budget, at least ``MIN_RUNS``. Images a second come from the median latency, which one slow run
(another process taking the core) does not move. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BATCH_SIZES = (1, 64)
DEFAULT_SECONDS = 2.0  # measured time a batch size, after the warm-up
DEFAULT_WARMUP = 3
MIN_RUNS = 5


@dataclass(frozen=True)
class Throughput:
    """One model at one batch size: images a second and the latency of a batch, in ms."""

    batch_size: int
    images_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    runs: int

    def to_dict(self) -> dict[str, float]:
        """Rounded, JSON-ready."""
        return {
            "images_per_second": round(self.images_per_second, 1),
            "latency_p50_ms": round(self.latency_p50_ms, 3),
            "latency_p99_ms": round(self.latency_p99_ms, 3),
            "runs": self.runs,
        }


def check_timing(seconds: Any, warmup: Any, max_runs: Any) -> None:
    """One-line ``ValueError`` for a time budget, warm-up count or run cap that cannot be."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < float("inf"):
        raise ValueError(f"seconds must be a positive number. Received: seconds={seconds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0. Received: warmup={warmup!r}")
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < MIN_RUNS:
        raise ValueError(f"max_runs must be an integer >= {MIN_RUNS}. Received: max_runs={max_runs!r}")


def check_batch_sizes(batch_sizes: Any) -> tuple[int, ...]:
    """The batch sizes, each once in the order given, or a one-line ``ValueError``."""
    if isinstance(batch_sizes, int) or not batch_sizes:
        raise ValueError(f"batch_sizes must be a non-empty list. Received: batch_sizes={batch_sizes!r}")
    for size in batch_sizes:
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(
                f"batch sizes must be integers >= 1. Received: batch_sizes={list(batch_sizes)!r}"
            )
    return tuple(dict.fromkeys(int(size) for size in batch_sizes))


def batch_of(images: np.ndarray, batch_size: int) -> np.ndarray:
    """``batch_size`` images, ``images`` repeated as needed (contiguous)."""
    if len(images) == 0:
        raise ValueError("images must hold at least one image. Received: 0 images")
    return np.ascontiguousarray(np.take(images, np.arange(batch_size) % len(images), axis=0))


def time_batches(
    run: Callable[[], Any],
    batch_size: int,
    seconds: float = DEFAULT_SECONDS,
    warmup: int = DEFAULT_WARMUP,
    max_runs: int = 10_000,
) -> Throughput:
    """Time ``run`` (one call = one batch of ``batch_size`` images): ``warmup`` untimed calls,
    then calls for ``seconds``, at least ``MIN_RUNS`` and at most ``max_runs``."""
    check_timing(seconds, warmup, max_runs)
    for _ in range(warmup):
        run()
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < max_runs and (
        len(latencies) < MIN_RUNS or time.perf_counter() - started < seconds
    ):
        begin = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - begin)
    p50, p99 = (float(value) * 1000 for value in np.percentile(np.asarray(latencies), [50, 99]))
    return Throughput(
        batch_size=batch_size,
        images_per_second=batch_size / (p50 / 1000),
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        runs=len(latencies),
    )
