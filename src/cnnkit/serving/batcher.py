"""Micro-batching: concurrent requests' items are processed together, off the event loop.

A CNN on a CPU classifies 64 images in little more time than one (per-call overhead dominates
small batches), so a service that answered each request alone would spend most of its time on
overhead. ``MicroBatcher`` queues each request's items (for the service: uploaded image files),
waits a few milliseconds for others (or until ``max_batch`` items wait), processes them as one
call in a single worker thread, and hands each request its own results back. Handing work to a
thread and back costs the event loop more than decoding a small image, so the service decodes
inside that same call: one hand-off per batch rather than two per request.

While a batch runs, new requests queue; they have already waited longer than ``max_wait_ms`` when
it ends, so the next batch starts at once with all of them. Under load, batches therefore grow by
themselves to what arrives during one forward pass, and the wait only costs latency when idle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_WAIT_MS = 2.0

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class BatchStatistics:
    """Counters since start: how many batches ran and how many items and requests they held."""

    batches: int = 0
    items: int = 0
    requests: int = 0
    largest_batch: int = 0
    failed_batches: int = 0

    def to_dict(self) -> dict[str, float]:
        mean = self.items / self.batches if self.batches else 0.0
        return {**self.__dict__, "mean_batch": round(mean, 2)}


@dataclass
class _Submission:
    items: Sequence[Any]
    future: asyncio.Future
    arrived: float


@dataclass
class _LoopState:
    """What belongs to one event loop: the queue, its wake-up event and the task draining it."""

    loop: asyncio.AbstractEventLoop
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    pending: collections.deque[_Submission] = field(default_factory=collections.deque)
    pending_items: int = 0
    runner: asyncio.Task | None = None


class MicroBatcher(Generic[Item, Result]):
    """Run ``process`` on batches formed from concurrent ``await batcher.submit(items)`` calls.

    Args:
        process: ``list of N items -> N results`` (in order). It runs in one dedicated thread, one
            batch at a time, so it need not be thread-safe.
        max_batch: items per call at most. A single submission larger than this runs alone.
        max_wait_ms: how long the first waiting submission waits for others before its batch runs.

    Errors stay with their request: if a batch fails, each of its submissions is run again alone,
    so only the one that fails on its own receives the exception.
    """

    def __init__(
        self,
        process: Callable[[list[Item]], Sequence[Result]],
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Received: max_batch={max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0. Received: max_wait_ms={max_wait_ms}")
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.statistics = BatchStatistics()
        self._process = process
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-model")
        self._state: _LoopState | None = None
        self._closed = False

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """``process``'s results for ``items``, computed in one batch with concurrent submissions."""
        if self._closed:
            raise RuntimeError("The micro-batcher is closed.")
        if not items:
            return []
        state = self._loop_state()
        future = state.loop.create_future()
        state.pending.append(_Submission(items, future, state.loop.time()))
        state.pending_items += len(items)
        state.wakeup.set()
        return await future

    async def aclose(self) -> None:
        """Stop taking work and fail what waits; a batch running in the worker thread finishes."""
        self._closed = True
        state, self._state = self._state, None
        if state is not None and state.runner is not None:
            state.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.runner
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        # A new event loop (a test client started again) gets a fresh queue: futures and events
        # belong to the loop that made them.
        if self._state is None or self._state.loop is not loop:
            self._state = _LoopState(loop)
            self._state.runner = loop.create_task(self._drain(self._state), name="cnnkit-micro-batcher")
        return self._state

    async def _drain(self, state: _LoopState) -> None:
        batch: list[_Submission] = []
        try:
            while True:
                await state.wakeup.wait()
                state.wakeup.clear()
                while state.pending:
                    await self._wait_for_more(state)
                    batch = self._take_batch(state)
                    if batch:
                        await self._run_batch(batch)
                    batch = []
        finally:  # cancelled (shutdown): nobody must wait forever
            for submission in [*batch, *state.pending]:
                _settle(submission.future, error=RuntimeError("The service is shutting down."))

    async def _wait_for_more(self, state: _LoopState) -> None:
        """Wait until ``max_batch`` items wait or the oldest has waited ``max_wait``."""
        deadline = state.pending[0].arrived + self.max_wait
        while state.pending_items < self.max_batch:
            remaining = deadline - state.loop.time()
            if remaining <= 0:
                return
            state.wakeup.clear()
            try:
                await asyncio.wait_for(state.wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self, state: _LoopState) -> list[_Submission]:
        batch: list[_Submission] = []
        size = 0
        while state.pending:
            submission = state.pending[0]
            if batch and size + len(submission.items) > self.max_batch:
                break
            state.pending.popleft()
            state.pending_items -= len(submission.items)
            if submission.future.done():  # its client went away: don't compute for it
                continue
            batch.append(submission)
            size += len(submission.items)
        return batch

    async def _run_batch(self, batch: list[_Submission]) -> None:
        items = [item for submission in batch for item in submission.items]
        try:
            outputs = await self._run_in_worker(items)
        except Exception as error:
            self.statistics.failed_batches += 1
            if len(batch) == 1:
                _settle(batch[0].future, error=error)
                return
            for submission in batch:  # find the culprit: each alone, so only it fails
                await self._run_batch([submission])
            return
        self._count(batch, len(items))
        start = 0
        for submission in batch:
            end = start + len(submission.items)
            _settle(submission.future, result=outputs[start:end])
            start = end

    async def _run_in_worker(self, items: list[Item]) -> list[Result]:
        outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._process, items)
        if len(outputs) != len(items):
            raise RuntimeError(f"The batch function returned {len(outputs)} results for {len(items)} items.")
        return list(outputs)

    def _count(self, batch: list[_Submission], items: int) -> None:
        self.statistics.batches += 1
        self.statistics.items += items
        self.statistics.requests += len(batch)
        self.statistics.largest_batch = max(self.statistics.largest_batch, items)


def _settle(future: asyncio.Future, result: list | None = None, error: Exception | None = None) -> None:
    if future.done():  # cancelled while its batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
