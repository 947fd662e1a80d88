"""agent/durability.each_in_workers: the files of a bundle done by a few worker threads at once, each result
in its place, and nothing still running when the caller goes on (an error, a cancellation)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agent import durability
from agent.durability import THREADS, each_in_workers


def test_every_item_once_results_in_order_and_at_most_threads_at_once() -> None:
    lock = threading.Lock()
    running, peak = [0], [0]
    both = threading.Barrier(2, timeout=5)

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        if i < 2:
            both.wait()  # items 0 and 1 are in their workers at the same time: overlapped, not one by one
        with lock:
            running[0] -= 1
        return i * i

    items = list(range(100))
    assert asyncio.run(each_in_workers(items, work)) == [i * i for i in items]
    assert 2 <= peak[0] <= THREADS


def test_one_item_and_none() -> None:
    main = threading.get_ident()
    assert asyncio.run(each_in_workers([5], lambda i: (i, threading.get_ident() == main))) == [(5, True)]
    assert asyncio.run(each_in_workers([], lambda i: i)) == []


def test_an_unexpected_error_is_raised_after_every_worker_stopped() -> None:
    done: list[int] = []

    def work(i: int) -> int:
        if i == 3:
            raise ValueError("boom")
        time.sleep(0.001)
        done.append(i)
        return i

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(each_in_workers(list(range(40)), work))
    settled = len(done)
    time.sleep(0.05)
    assert len(done) == settled  # nothing ran on after the caller got the error
    assert settled == 39  # the other workers finished what was queued


def test_cancelled_it_waits_for_the_work_taken_and_takes_no_more() -> None:
    started = threading.Event()
    release = threading.Event()
    finished: list[int] = []

    def work(i: int) -> int:
        started.set()
        release.wait(5)
        finished.append(i)
        return i

    async def main() -> None:
        task = asyncio.ensure_future(each_in_workers(list(range(100)), work))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        task.cancel()
        await asyncio.sleep(0)
        assert not task.done()  # still waiting for the workers' current items
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        taken = len(finished)
        assert 1 <= taken <= THREADS  # only what the workers held when it was cancelled
        await asyncio.sleep(0.05)
        assert len(finished) == taken

    asyncio.run(main())
    durability._executor()  # the pool survives a cancelled call
