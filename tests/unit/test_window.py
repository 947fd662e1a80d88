"""SendWindow: chunking, window limit, monotonic acks, resync rewind; AckRequests: which chunks ask for an ack."""

from __future__ import annotations

import pytest

from agent.core.window import AckRequests, SendWindow


def drain(w: SendWindow) -> list[tuple[int, int]]:
    out = []
    while w.can_send():
        out.append(w.take())
    return out


@pytest.mark.parametrize(
    ("size", "chunk", "window", "start", "expected"),
    [
        (10, 4, 8, 0, [(0, 4), (4, 4), (8, 2)]),
        (8, 4, 8, 0, [(0, 4), (4, 4)]),
        (3, 4, 8, 0, [(0, 3)]),
        (10, 4, 2, 0, [(0, 4), (4, 4)]),  # window of 2 chunks stops the third
        (10, 4, 8, 6, [(6, 4)]),  # resumed from a checkpoint
        (10, 4, 8, 10, []),  # checkpoint at the end: nothing left
        (0, 4, 8, 0, []),  # empty file
    ],
)
def test_chunks_taken(
    size: int, chunk: int, window: int, start: int, expected: list[tuple[int, int]]
) -> None:
    w = SendWindow(size, chunk, window, start)
    assert drain(w) == expected
    assert w.next_offset == (expected[-1][0] + expected[-1][1] if expected else start)
    assert w.in_flight_bytes == sum(n for _, n in expected)


@pytest.mark.parametrize(
    ("size", "start", "done"),
    [(0, 0, True), (10, 10, True), (10, 0, False), (10, 9, False)],
)
def test_done(size: int, start: int, done: bool) -> None:
    w = SendWindow(size, 4, 2, start)
    assert w.done is done
    if done:
        assert not w.can_send()


def test_take_when_full_raises() -> None:
    w = SendWindow(100, 10, 1)
    w.take()
    with pytest.raises(RuntimeError, match="cannot send"):
        w.take()


def test_take_when_all_sent_raises() -> None:
    w = SendWindow(0, 10, 1)
    with pytest.raises(RuntimeError):
        w.take()


@pytest.mark.parametrize(
    ("ack", "progress", "acked"),
    [
        (0, False, 0),  # nothing new
        (-1, False, 0),
        (4, True, 4),  # one chunk
        (6, True, 6),  # mid-chunk (destination flushed part of a chunk)
        (12, True, 12),  # everything sent
        (13, False, 0),  # beyond what was sent: a confused or hostile peer
    ],
)
def test_on_ack(ack: int, progress: bool, acked: int) -> None:
    w = SendWindow(100, 4, 3)
    drain(w)  # 0..12 in flight
    assert w.on_ack(ack) is progress
    assert w.acked == acked
    assert w.in_flight_bytes == 12 - acked


def test_acks_are_monotonic() -> None:
    w = SendWindow(100, 4, 3)
    drain(w)
    assert w.on_ack(8)
    assert not w.on_ack(4)  # reordered stale ack
    assert not w.on_ack(8)  # duplicate
    assert w.acked == 8


@pytest.mark.parametrize(
    ("ack", "freed"),
    [(3, 0), (4, 1), (7, 1), (8, 2), (12, 3)],
)
def test_only_wholly_acked_chunks_free_the_window(ack: int, freed: int) -> None:
    w = SendWindow(100, 4, 3)
    drain(w)
    w.on_ack(ack)
    assert w.in_flight_chunks == 3 - freed
    assert len(drain(w)) == freed


def test_full_transfer_with_window() -> None:
    w = SendWindow(1000, 64, 4)
    while not w.done:
        sent = drain(w)
        assert 0 < len(sent) <= 4
        assert w.on_ack(sent[-1][0] + sent[-1][1])
    assert w.acked == w.next_offset == 1000
    assert not w.can_send()


@pytest.mark.parametrize("offset", [0, 5, 8, 20])
def test_rewind(offset: int) -> None:
    w = SendWindow(20, 4, 3)
    drain(w)
    w.on_ack(8)
    w.rewind(offset)  # may go back past acked: the destination lost unflushed data
    assert w.acked == w.next_offset == offset
    assert w.in_flight_bytes == 0
    assert w.in_flight_chunks == 0
    assert w.done is (offset == 20)
    if offset < 20:
        assert w.take() == (offset, min(4, 20 - offset))


@pytest.mark.parametrize("offset", [-1, 21])
def test_rewind_outside_the_file(offset: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        SendWindow(20, 4, 3).rewind(offset)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 4, 2, 0), "size"),
        ((10, 0, 2, 0), "chunk_size"),
        ((10, 4, 0, 0), "window_chunks"),
        ((10, 4, 2, 11), "start_offset"),
        ((10, 4, 2, -1), "start_offset"),
    ],
)
def test_invalid_construction(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SendWindow(*args)


# ------------------------------------------------------------------ AckRequests: which chunks ask for an ack

CHUNK = 256 * 1024


def _asks(window: int, sparse: bool, chunks: list[tuple[bool, int]]) -> list[bool]:
    a = AckRequests(window, sparse)
    return [a.ask(last, room) for last, room in chunks]


@pytest.mark.parametrize("window, sparse, chunks, expected", [
    # a destination without "sparse_ack": every chunk asks
    (16, False, [(False, 10 * CHUNK)] * 5, [True] * 5),
    # window 16: every 4th chunk asks, while there is room left
    (16, True, [(False, 10 * CHUNK)] * 9, [False, False, False, True, False, False, False, True, False]),
    # the last chunk of a file asks, and the count starts again after it
    (16, True, [(False, CHUNK), (True, CHUNK), (False, CHUNK), (False, CHUNK), (False, CHUNK), (False, CHUNK)],
     [False, True, False, False, False, True]),
    # the chunk that uses the last of the room asks (the source then waits for an ack)
    (16, True, [(False, 2 * CHUNK), (False, CHUNK), (False, 0)], [False, False, True]),
    (16, True, [(False, -100)], [True]),
    # small windows: every chunk (1..7) or every other (8..11) asks
    (1, True, [(False, CHUNK)] * 3, [True] * 3),
    (7, True, [(False, CHUNK)] * 3, [True] * 3),
    (8, True, [(False, CHUNK)] * 4, [False, True, False, True]),
    (64, True, [(False, CHUNK)] * 16, [False] * 15 + [True]),
])
def test_ack_requests(window: int, sparse: bool, chunks: list[tuple[bool, int]], expected: list[bool]) -> None:
    assert _asks(window, sparse, chunks) == expected


def test_ack_requests_never_leave_a_window_unasked() -> None:
    # whatever the pattern, no run of chunks without an ask is longer than a quarter window
    for window in (1, 2, 4, 5, 16, 17, 64):
        a = AckRequests(window, sparse=True)
        run = 0
        for i in range(500):
            run = 0 if a.ask(i % 37 == 36, CHUNK * (i % 5)) else run + 1
            assert run < max(1, window // 4)


def test_ack_requests_refuses_an_empty_window() -> None:
    with pytest.raises(ValueError, match="window_chunks 0"):
        AckRequests(0)
