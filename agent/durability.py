"""Making many small files durable at once: each written, fsynced and closed in a few worker threads, the
files of one bundle overlapping, off the event loop.

One fsync of a small file waits for a journal commit (ext4, xfs: a few milliseconds on a virtual disk).
Made one after the other, 1,000 files wait for 1,000 commits; made concurrently, the file system folds the
fsyncs that arrive while a commit is under way into the next one (group commit), so a bundle of files
costs a few commits. The creation of a part file (openat with O_CREAT) waits on the same journal when the
disk is busy: done by the workers too, one file's creation overlaps the others' fsyncs instead of all the
creations being made, one after the other in the event loop, before the first fsync starts. os.open,
os.write and os.fsync release the GIL, so threads are enough. Each file's guarantee is unchanged: its data
is durable when its fsync returns, and the caller renames it only after every worker is done
(docs/performance.md, "Durability (fsync)").
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

# Concurrent workers. Measured on the 2-core test machine (ext4 on a virtual disk), 1000 x 4 KiB files in
# groups of 60: 4 threads took 0.36 s, 8 0.32 s, 16 0.31 s, one after the other 0.61 s; more threads only
# wait on the same commit. Each worker holds one part file open at a time: a bundle holds at most THREADS
# descriptors, whatever its number of files.
THREADS = 8

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="fte-fsync")
        return _pool


def _drain(jobs: "collections.deque[tuple[int, T]]", work: Callable[[T], R], results: list[R | None]) -> None:
    """Take the next item until none is left (deque.popleft is atomic): a slow file holds up one worker,
    not a fixed share of the bundle."""
    while True:
        try:
            i, item = jobs.popleft()
        except IndexError:
            return
        results[i] = work(item)


async def each_in_workers(items: Sequence[T], work: Callable[[T], R]) -> list[R]:
    """work(item) for every item, from up to THREADS worker threads at once; the results in order. `work`
    must close whatever it opens. Cancelled, it still waits for the workers to finish what they took (they
    stop taking more), so that nothing is created or written after the caller has moved on."""
    results: list[R | None] = [None] * len(items)
    if not items:
        return []
    if len(items) == 1:
        results[0] = work(items[0])  # nothing to overlap with: not worth a thread hop
        return results  # type: ignore[return-value]
    jobs: collections.deque[tuple[int, T]] = collections.deque(enumerate(items))
    loop = asyncio.get_running_loop()
    pool = _executor()
    workers = [loop.run_in_executor(pool, _drain, jobs, work, results) for _ in range(min(THREADS, len(items)))]
    try:
        await asyncio.wait(workers)
    except asyncio.CancelledError:
        jobs.clear()
        await asyncio.wait(workers)
        raise
    for w in workers:
        w.result()  # an unexpected error of `work` (an OSError is work's to turn into a result)
    return results  # type: ignore[return-value]
