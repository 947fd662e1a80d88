"""The broker probe's decisions (agent/broker_probe.py), by tables: the sizes it tries, what it concludes
from what happened to each probe message, what it tells the user. The IO around them is tested against real
brokers in tests/integration/test_broker_limits.py."""

from __future__ import annotations

import pytest

from agent.broker_probe import (FLOOR, Outcome, ProbeReport, TopicStatus, data_message_bytes, effective_chunk_size,
                                longest_data_topic, next_probe_size, probe_payload_bytes, publish_packet_bytes,
                                size_ladder, size_wait, topic_finding)
from agent.wire.protocol import Topics, encode_chunk, new_transfer_id

KiB = 1024
P, R, L, U, X = Outcome.PASSED, Outcome.REFUSED, Outcome.LOST, Outcome.UNKNOWN, Outcome.UNREACHABLE


# --------------------------------------------------------------------------- the ladder of sizes


@pytest.mark.parametrize("configured, floor, ladder", [
    (256 * KiB, FLOOR, [256 * KiB, 128 * KiB, 64 * KiB, 32 * KiB, 16 * KiB]),
    (16 * 1024 * KiB, FLOOR, [16384 * KiB, 8192 * KiB, 4096 * KiB, 2048 * KiB, 1024 * KiB, 512 * KiB, 256 * KiB,
                              128 * KiB, 64 * KiB, 32 * KiB, 16 * KiB]),
    (100_000, FLOOR, [100_000, 50_000, 25_000, 16 * KiB]),  # the floor itself when halving steps over it
    (33 * KiB, FLOOR, [33 * KiB, 33 * KiB // 2, 16 * KiB]),
    (32 * KiB + 2, FLOOR, [32 * KiB + 2, 16 * KiB + 1, 16 * KiB]),
    (16 * KiB, FLOOR, [16 * KiB]),  # at the floor: nothing to go down to
    (4 * KiB, FLOOR, [4 * KiB]),  # below it: the configured size only
    (1024, FLOOR, [1024]),
    (64 * KiB, 64 * KiB, [64 * KiB]),
])
def test_size_ladder(configured: int, floor: int, ladder: list[int]) -> None:
    assert size_ladder(configured, floor) == ladder


def test_every_ladder_is_strictly_decreasing_and_ends_at_or_below_the_floor() -> None:
    for configured in (1024, 5000, FLOOR - 1, FLOOR, FLOOR + 1, 65537, 262144, 1_000_003, 16 * 1024 * KiB):
        ladder = size_ladder(configured)
        assert ladder[0] == configured
        assert all(a > b for a, b in zip(ladder, ladder[1:])), ladder
        assert ladder[-1] == min(configured, FLOOR)


# --------------------------------------------------------------------------- the next size to try

LADDER = [256 * KiB, 128 * KiB, 64 * KiB, 32 * KiB, 16 * KiB]


@pytest.mark.parametrize("outcomes, expected", [
    ([], 256 * KiB),  # the full size first
    ([(256 * KiB, P)], None),  # it passes: done
    ([(256 * KiB, R)], 256 * KiB),  # closed on: once more on a fresh connection (a drop for another reason?)
    ([(256 * KiB, R), (256 * KiB, R)], 128 * KiB),  # closed on twice: halve
    ([(256 * KiB, R), (256 * KiB, P)], None),  # the first drop was not the size's fault
    ([(256 * KiB, L)], 128 * KiB),  # not delivered in time: halve at once (a second wait costs seconds)
    ([(256 * KiB, R), (256 * KiB, R), (128 * KiB, L), (64 * KiB, P)], None),
    ([(256 * KiB, L), (128 * KiB, L), (64 * KiB, L), (32 * KiB, L), (16 * KiB, L)], None),  # floor failed: stop
    ([(256 * KiB, L), (128 * KiB, L), (64 * KiB, L), (32 * KiB, L), (16 * KiB, R)], 16 * KiB),
    ([(256 * KiB, L), (128 * KiB, L), (64 * KiB, L), (32 * KiB, L), (16 * KiB, R), (16 * KiB, R)], None),
    ([(256 * KiB, U)], None),  # no time left: stop
    ([(256 * KiB, X)], None),  # lost the broker: stop
    ([(256 * KiB, L), (128 * KiB, U)], None),
    ([(256 * KiB, R), (256 * KiB, X)], None),
])
def test_next_probe_size(outcomes: list[tuple[int, Outcome]], expected: int | None) -> None:
    assert next_probe_size(LADDER, outcomes) == expected


def test_next_probe_size_of_an_empty_ladder() -> None:
    assert next_probe_size([], []) is None


# --------------------------------------------------------------------------- the chunk size to use


@pytest.mark.parametrize("outcomes, expected", [
    ([], None),  # nothing tried: nothing proven, the agent keeps the chunk size it has
    ([(256 * KiB, P)], 256 * KiB),
    ([(256 * KiB, R), (256 * KiB, R), (128 * KiB, R), (128 * KiB, R), (64 * KiB, P)], 64 * KiB),  # Mosquitto 100000
    ([(256 * KiB, L), (128 * KiB, L), (64 * KiB, L), (32 * KiB, P)], 32 * KiB),  # RabbitMQ max_message_size 65536
    ([(256 * KiB, R), (256 * KiB, P)], 256 * KiB),  # a drop that was not the size's fault
    ([(256 * KiB, U)], None),  # no time to try: nothing proven
    ([(256 * KiB, L), (128 * KiB, U)], 128 * KiB),  # out of time: the best guess, the largest below every failure
    ([(256 * KiB, L), (128 * KiB, L), (64 * KiB, L), (32 * KiB, L), (16 * KiB, L)], 16 * KiB),  # none: the floor
    # the broker lost on the way: an outage looks like a refusal, so nothing is proven
    ([(256 * KiB, R), (256 * KiB, X)], None),
    ([(256 * KiB, L), (128 * KiB, X)], None),
    ([(256 * KiB, R), (256 * KiB, R), (128 * KiB, X)], None),
    ([(256 * KiB, R), (256 * KiB, U)], None),  # closed on once only: not shown to fail
    ([(256 * KiB, R), (256 * KiB, R), (128 * KiB, U)], 128 * KiB),
])
def test_effective_chunk_size(outcomes: list[tuple[int, Outcome]], expected: int | None) -> None:
    assert effective_chunk_size(LADDER, outcomes) == expected


def test_the_probe_never_chooses_a_size_that_failed_or_one_above_it() -> None:
    """Walk every combination of outcomes the way the probe does: the result passed, or is below all failures."""
    import itertools

    for pattern in itertools.product([P, R, L, U, X], repeat=4):
        outcomes: list[tuple[int, Outcome]] = []
        moves = iter(pattern)
        while (size := next_probe_size(LADDER, outcomes)) is not None:
            try:
                outcomes.append((size, next(moves)))
            except StopIteration:
                break
        chosen = effective_chunk_size(LADDER, outcomes)
        failed = [s for s, o in outcomes if o is L] + [s for s, o in outcomes if o is R and (s, R) in outcomes[
            outcomes.index((s, R)) + 1:]]
        passed = [s for s, o in outcomes if o is P]
        if chosen is None:
            assert not passed or outcomes[-1][1] is X, outcomes
            continue
        assert chosen in LADDER and outcomes[-1][1] is not X
        if passed:
            assert chosen == max(passed) and all(chosen < f for f in failed if f not in passed), outcomes
        elif failed:
            assert chosen < min(failed) or chosen == LADDER[-1], outcomes


# --------------------------------------------------------------------------- message sizes


def test_data_message_bytes_is_a_real_chunk_with_its_mac() -> None:
    for size in (1024, 65536, 262144):
        frame = encode_chunk(7, 3, 1 << 40, b"x" * size, last=True)
        assert data_message_bytes(size) == len(frame) + 28  # + the longest trailer, binding.GMAC_BYTES


@pytest.mark.parametrize("topic_bytes, payload_bytes, qos, packet", [
    (10, 0, 1, 1 + 1 + 2 + 10 + 2),  # remaining length 14: one byte
    (10, 100, 0, 1 + 1 + 2 + 10 + 100),
    (43, 65685 - 43 - 2 - 2 - 1 - 3, 1, 65685),  # remaining length >= 16384: three bytes
    (10, 127 - 14, 1, 1 + 1 + 127),  # 127: still one byte
    (10, 128 - 14, 1, 1 + 2 + 128),  # 128: two bytes
    (10, 2097152 - 14, 1, 1 + 4 + 2097152),  # 2 MiB: four bytes
])
def test_publish_packet_bytes(topic_bytes: int, payload_bytes: int, qos: int, packet: int) -> None:
    assert publish_packet_bytes(topic_bytes, payload_bytes, qos) == packet


@pytest.mark.parametrize("prefix, agent", [("SYSTEM.FTE", "A1"), ("SYSTEM_FTE", "A" * 28), ("site1/fte/x", "B")])
def test_a_size_probe_is_at_least_as_big_as_any_data_message(prefix: str, agent: str) -> None:
    topics = Topics(prefix)
    probe_topic = topics.probe(agent, "0123456789abcdef")
    longest = longest_data_topic(topics)
    assert longest >= len(topics.data("Z" * 28, new_transfer_id()))
    for size in (1024, 16 * KiB, 256 * KiB, 16 * 1024 * KiB):
        probe = publish_packet_bytes(len(probe_topic), probe_payload_bytes(size, len(probe_topic), longest))
        data = publish_packet_bytes(longest, data_message_bytes(size))
        assert probe >= data


@pytest.mark.parametrize("payload, wait", [(0, 3.0), (1024 * 1024, 3.25), (16 * 1024 * 1024, 7.0)])
def test_size_wait_grows_with_the_message(payload: int, wait: float) -> None:
    assert size_wait(payload) == pytest.approx(wait)


# --------------------------------------------------------------------------- topics

TOPIC = "SYSTEM.FTE/Agents/A1/probe/0123456789abcdef"


@pytest.mark.parametrize("published, delivered, closed, refused, status, words", [
    (TOPIC, TOPIC, False, False, TopicStatus.OK, None),
    # RabbitMQ: '.' swapped for a level separator on the way back
    (TOPIC, TOPIC.replace(".", "/"), False, False, TopicStatus.CHANGED,
     ["SYSTEM/FTE/Agents/A1", "RabbitMQ", "topicPrefix=SYSTEM_FTE", "without '.'"]),
    ("x/Agents/A1/probe/t", "y/Agents/A1/probe/t", False, False, TopicStatus.CHANGED,
     ["on another topic, y/Agents/A1/probe/t", "as published"]),
    # NATS 2.9: the subscription refused (SUBACK failure), the connection closed on the publish
    (TOPIC, None, True, True, TopicStatus.REFUSED,
     ["refused the subscription", "closed the connection", "NATS before 2.10", "topicPrefix=SYSTEM_FTE"]),
    (TOPIC, None, True, False, TopicStatus.REFUSED, ["closed the connection", "NATS"]),
    ("SYSTEM_FTE/Agents/A1/probe/t", None, True, False, TopicStatus.REFUSED, ["closed the connection", "ACL"]),
    # an ACL that does not grant the probe topic: nothing is concluded about the broker
    (TOPIC, None, False, False, TopicStatus.NOT_DELIVERED, ["did not deliver within 3 s", "probe/+", "brokerProbe"]),
    (TOPIC, None, False, True, TopicStatus.NOT_DELIVERED, ["refused the subscription", "brokerProbe=false"]),
])
def test_topic_finding(published: str, delivered: str | None, closed: bool, refused: bool, status: TopicStatus,
                       words: list[str] | None) -> None:
    got, message = topic_finding(published, delivered, closed, 3.0, refused)
    assert got is status
    if words is None:
        assert message is None
    else:
        assert message is not None and "\n" not in message
        for w in words:
            assert w in message, (w, message)


def test_which_topic_findings_are_errors() -> None:
    assert {s for s in TopicStatus if s.is_error} == {TopicStatus.CHANGED, TopicStatus.REFUSED}


# --------------------------------------------------------------------------- what the user sees


def _report(outcomes: list[tuple[int, Outcome]], topic: TopicStatus = TopicStatus.OK,
            message: str | None = None) -> ProbeReport:
    packets = {s: s + 149 for s, _ in outcomes}  # as measured: chunk + frame, MAC, topic and MQTT header
    return ProbeReport(256 * KiB, TOPIC, topic, message, list(outcomes), packets, list(LADDER))


@pytest.mark.parametrize("outcomes, topic, chunk, verdict, words", [
    ([(256 * KiB, P)], TopicStatus.OK, 256 * KiB, "ok",
     ["topics come back as published", "a 262293-byte message (chunk size 262144) passes"]),
    ([(256 * KiB, R), (256 * KiB, R), (128 * KiB, R), (128 * KiB, R), (64 * KiB, P)], TopicStatus.OK, 64 * KiB,
     "warning", ["broker refused a 131221-byte message; agentChunkSize lowered from 262144 to 65536 for this "
                 "broker connection; raise the broker's max_packet_size/max_payload or set agentChunkSize=65536"]),
    ([(256 * KiB, L), (128 * KiB, U)], TopicStatus.OK, 128 * KiB, "warning",
     ["lowered from 262144 to 131072", "itself is not checked"]),
    ([(256 * KiB, R), (256 * KiB, X)], TopicStatus.OK, 256 * KiB, "ok",
     ["topics come back as published; the message size is not checked"]),
    ([(s, L) for s in LADDER], TopicStatus.OK, 16 * KiB, "error",
     ["refused every probe message down to a 16533-byte one", "cannot pass"]),
    ([(256 * KiB, P)], TopicStatus.CHANGED, 256 * KiB, "error", ["RabbitMQ", "passes"]),
    ([(256 * KiB, R), (256 * KiB, R), (128 * KiB, P)], TopicStatus.CHANGED, 128 * KiB, "error",
     ["RabbitMQ", "lowered from 262144 to 131072"]),
    ([], TopicStatus.NOT_DELIVERED, 256 * KiB, "not checked", ["did not deliver"]),
    ([], TopicStatus.REFUSED, 256 * KiB, "error", ["NATS"]),
    ([(256 * KiB, U)], TopicStatus.OK, 256 * KiB, "ok", ["topics come back as published; the message size is not"]),
])
def test_report(outcomes: list[tuple[int, Outcome]], topic: TopicStatus, chunk: int, verdict: str,
                words: list[str]) -> None:
    message = None if topic is TopicStatus.OK else topic_finding(
        TOPIC, TOPIC.replace(".", "/") if topic is TopicStatus.CHANGED else None, topic is TopicStatus.REFUSED)[1]
    report = _report(outcomes, topic, message)
    assert report.chunk_size == chunk
    summary = report.summary()
    assert summary.startswith(verdict + ": "), summary
    for w in words:
        assert w in summary, (w, summary)
    finding = report.size_finding()
    if chunk == 256 * KiB:
        assert finding is None
    else:
        assert finding is not None and finding[0] in ("warning", "error") and finding[1] in summary


def test_a_configured_size_at_the_floor_that_fails_is_an_error() -> None:
    report = ProbeReport(8 * KiB, TOPIC, TopicStatus.OK, None, [(8 * KiB, R), (8 * KiB, R)], {8 * KiB: 8341},
                         size_ladder(8 * KiB))
    assert report.chunk_size == 8 * KiB
    finding = report.size_finding()
    assert finding is not None and finding[0] == "error" and "8341-byte" in finding[1]
    assert report.summary().startswith("error: ")
