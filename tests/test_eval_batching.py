"""RequestBatcher: concurrent submits share one run_batch call; keys never mix; errors reach all."""

import threading

import anyio
import pytest

from cookbook.eval.batching import RequestBatcher


def _recording_runner(calls):
    def run_batch(key, items):
        calls.append((key, list(items), threading.current_thread().name))
        return [f"{key}:{item}" for item in items]

    return run_batch


def test_concurrent_requests_are_batched_and_answered_in_order():
    calls = []
    batcher = RequestBatcher(_recording_runner(calls), max_batch_size=4, max_wait_s=0.05)
    results = {}

    async def one(i):
        results[i] = await batcher.submit("g", i)

    async def main():
        async with anyio.create_task_group() as group:
            for i in range(10):
                group.start_soon(one, i)

    anyio.run(main)
    assert results == {i: f"g:{i}" for i in range(10)}
    # 10 requests with room for 4 per batch: 3 batches (4, 4, 2), never one per request.
    assert sorted(batcher.batch_sizes, reverse=True) == [4, 4, 2]
    assert all(name != threading.main_thread().name for _, _, name in calls), "run_batch must run off the loop"


def test_different_keys_never_share_a_batch():
    calls = []
    batcher = RequestBatcher(_recording_runner(calls), max_batch_size=8, max_wait_s=0.02)

    async def main():
        async with anyio.create_task_group() as group:
            for i in range(6):
                group.start_soon(batcher.submit, "a" if i % 2 else "b", i)

    anyio.run(main)
    assert {key: items for key, items, _ in calls} == {"a": [1, 3, 5], "b": [0, 2, 4]}


def test_a_failing_batch_raises_in_every_request():
    def run_batch(key, items):
        raise RuntimeError("model exploded")

    batcher = RequestBatcher(run_batch, max_batch_size=3, max_wait_s=0.02)
    errors = []

    async def one(i):
        try:
            await batcher.submit("k", i)
        except RuntimeError as error:
            errors.append(str(error))

    async def main():
        async with anyio.create_task_group() as group:
            for i in range(3):
                group.start_soon(one, i)

    anyio.run(main)
    assert errors == ["model exploded"] * 3


def test_batcher_survives_a_new_event_loop():
    batcher = RequestBatcher(lambda key, items: items, max_batch_size=2, max_wait_s=0.0)
    assert anyio.run(batcher.submit, "k", 1) == 1
    assert anyio.run(batcher.submit, "k", 2) == 2  # a second eval() runs a fresh loop


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RequestBatcher(lambda key, items: items, max_batch_size=0)
