"""The source's live progress figures kept as files change (agent.core.progress_tally) against the plain sums
over every file (what agent/source.py computed at each progress message before), after every event of random
sequences: sends (whole rounds and short ones, by chunks and in bundles), acks (in order, stale, rewinding,
early), file results (done and failed), unreadable sources, recoveries with a new negotiation, and the end."""

from __future__ import annotations

import random
from types import SimpleNamespace as NS
from typing import Any

import pytest

from agent.core.statuses import FileStatus
from tests.unit.test_source_session import ack, answer, holding, negotiated, reply, result, sends


def plain(s: Any) -> tuple[int, int, int, Any]:
    files = s.files.values()
    return (sum(f.size for f in files), sum(map(s.sending.acked, files)),
            sum(1 for f in files if f.status != FileStatus.READY),
            next((f for f in files if f.status == FileStatus.READY), None))


def kept(s: Any) -> tuple[int, int, int, Any]:
    t = s.tally
    t.refresh()
    return t.bytes_total, t.bytes_done, t.files_done, t.current()


def step(s: Any, rng: random.Random, now: float) -> None:
    ready = [i for i, f in s.files.items() if f.status == FileStatus.READY]
    windows = [i for i in ready if i in s.sending.windows]
    r = rng.random()
    if r < 0.3:
        sends(s, None if rng.random() < 0.7 else rng.randrange(0, 12))
    elif r < 0.6 and windows:
        i = rng.choice(windows)
        w = s.sending.windows[i]
        offset = rng.randint(0, max(w.next_offset, 1) + (4 if rng.random() < 0.2 else 0))
        s.receive(ack(s, i, offset, rewind=rng.random() < 0.15), now)
    elif r < 0.8 and ready:
        s.receive(result(rng.choice(ready), 0 if rng.random() < 0.8 else 1), now)
    elif r < 0.85 and ready:
        s.source_failed(rng.choice(ready), "FTEIO0002E: unreadable", now)
    elif r < 0.9:
        s.receive(NS(kind="request_recovery", cancel=False, reason="lost"), now)
        s.resync_done(now)
        holdings = []
        for i in ready:
            k = rng.random()
            f = s.files[i]
            if k < 0.2:
                holdings.append(holding(i, f.size, status="done"))
            elif k < 0.3:
                holdings.append(holding(i, status="failed", code=1))
            else:
                holdings.append(holding(i, rng.randint(0, f.size)))
        answer(s, reply(s, *holdings, features=("bundle",) if rng.random() < 0.5 else ()), now)
    elif r < 0.92:
        s.sending.take_early_acks()
    else:
        s.sent(now)


@pytest.mark.parametrize("seed", range(40))
def test_the_kept_figures_are_the_plain_sums_after_every_event(seed: int) -> None:
    rng = random.Random(seed)
    sizes = tuple(rng.choice((0, 1, 3, 4, 7, 12, 30)) for _ in range(rng.randint(1, 25)))
    s = negotiated(sizes, features=("bundle",) if seed % 2 else (), chunk=8, window=rng.randint(1, 4))
    assert kept(s) == plain(s)
    now = 0.0
    for _ in range(120):
        now += rng.random()
        step(s, rng, now)
        assert kept(s) == plain(s)
        if s.state.is_terminal:
            break
    s.cancel(now + 1, "cancelled")
    s.finish(now + 1)  # the files without a result fail
    assert kept(s) == plain(s)


def plain_window_left(o: Any) -> tuple[int, int]:
    """SendOrder.window_left as it walked the files in flight (budget, where the round starts), changing nothing."""
    order, first = o._order, o._first
    while first < len(order) and order[first] not in o.windows:
        first += 1
    budget = o.window_bytes
    for pos in range(first, len(order)):
        w = o.windows.get(order[pos])
        if w is None:
            continue
        budget -= w.in_flight_bytes
        if o._needs_sending(order[pos]):
            return budget, pos
    return budget, len(order)


@pytest.mark.parametrize("seed", range(40))
def test_the_window_left_kept_is_the_walk_over_the_files_in_flight_after_every_event(seed: int) -> None:
    rng = random.Random(1000 + seed)
    sizes = tuple(rng.choice((0, 1, 3, 4, 7, 12, 30)) for _ in range(rng.randint(1, 25)))
    s = negotiated(sizes, features=("bundle",) if seed % 2 else (), chunk=8, window=rng.randint(1, 6))
    now = 0.0
    for _ in range(150):
        now += rng.random()
        step(s, rng, now)
        if s.state.is_terminal:
            break
        want = plain_window_left(s.sending)
        assert (s.sending.window_left(), s.sending._pos) == want
