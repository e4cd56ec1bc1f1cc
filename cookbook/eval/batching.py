"""Collecting concurrent requests into batches for one model.

inspect-ai runs each sample as its own coroutine and calls the provider once per sample. Running
those calls one at a time wastes a CPU (and a GPU far more), so `RequestBatcher` gathers requests
that arrive close together and runs them as one batch in a worker thread.

How it works (no background task, so it needs no lifetime management and works under any anyio
backend): the first request of a batch becomes its *leader*. The leader waits until the batch is
full or `max_wait_s` has passed, then waits for the model (one batch runs at a time); the batch
stays open to newcomers until the model is free, so while one batch runs the next one fills up.
Requests only share a batch when their keys are equal (e.g. the same sampling settings).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

RunBatch = Callable[[Hashable, list[Any]], list[Any]]


@dataclass
class _Batch:
    key: Hashable
    items: list[Any] = field(default_factory=list)
    results: list[Any] | None = None
    error: BaseException | None = None
    full: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)


class RequestBatcher:
    """`await batcher.submit(key, item)` returns `run_batch(key, items)[i]` for this item's slot.

    `run_batch` is a blocking function (it runs in a worker thread) that returns one result per item.
    The batcher must be used from one event loop at a time; `reset()` forgets state tied to a loop.
    """

    def __init__(self, run_batch: RunBatch, max_batch_size: int, max_wait_s: float = 0.02):
        if max_batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {max_batch_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.batch_sizes: list[int] = []  # every batch run, for tests and throughput reports
        self.reset()

    def reset(self) -> None:
        self._open: dict[Hashable, _Batch] = {}
        self._model_lock: anyio.Lock | None = None
        self._loop_id: int | None = None

    async def submit(self, key: Hashable, item: Any) -> Any:
        # Each inspect `eval()` call runs its own event loop; locks and events of an old loop are dead.
        if self._model_lock is None or self._loop_id != _running_loop_id():
            self.reset()
            self._model_lock = anyio.Lock()
            self._loop_id = _running_loop_id()
        batch = self._open.get(key)
        is_leader = batch is None
        if batch is None:
            batch = _Batch(key)
            self._open[key] = batch
        slot = len(batch.items)
        batch.items.append(item)
        if len(batch.items) >= self.max_batch_size:
            self._close(batch)
            batch.full.set()
        if is_leader:
            await self._lead(batch)
        else:
            await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.results is not None
        return batch.results[slot]

    def _close(self, batch: _Batch) -> None:
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]

    async def _lead(self, batch: _Batch) -> None:
        with anyio.move_on_after(self.max_wait_s):
            await batch.full.wait()
        try:
            async with self._model_lock:
                self._close(batch)
                self.batch_sizes.append(len(batch.items))
                results = await anyio.to_thread.run_sync(self.run_batch, batch.key, list(batch.items))
            if len(results) != len(batch.items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch.items)} items")
            batch.results = results
        except BaseException as error:  # every waiter must learn of the failure, then it propagates
            if isinstance(error, Exception):
                batch.error = error
            else:  # the leader was cancelled: its followers were not, so they get an ordinary error
                batch.error = RuntimeError("the request that led this batch was cancelled")
            raise
        finally:
            self._close(batch)
            batch.done.set()


def _running_loop_id() -> int | None:
    import asyncio

    try:
        return id(asyncio.get_running_loop())
    except RuntimeError:  # not asyncio (trio): one loop per run is all we can assume
        return None
