"""The broker checks (agent.broker_checks): what a probe report makes of the broker's features, and who is
told. The probe itself is a stand-in returning a report (its decisions: tests/unit/test_broker_probe.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.broker_checks import BrokerChecks, BrokerFeatures
from agent.broker_probe import Outcome, ProbeReport, TopicStatus
from agent.link import BrokerAddress
from agent.wire.protocol import Topics

KiB = 1024
CONFIGURED = 256 * KiB
LADDER = [256 * KiB, 128 * KiB, 64 * KiB, 32 * KiB, 16 * KiB]


def _report(outcomes: list[tuple[int, Outcome]], topic: TopicStatus = TopicStatus.OK) -> ProbeReport:
    return ProbeReport(CONFIGURED, "SYSTEM.FTE/Agents/A1/probe/x", topic, None if topic is TopicStatus.OK else "why",
                       list(outcomes), {s: s + 149 for s, _ in outcomes}, list(LADDER))


class _Probe:
    reports: list[ProbeReport] = []
    made: list[dict[str, Any]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _Probe.made.append(kwargs)

    async def run(self) -> ProbeReport:
        return _Probe.reports.pop(0)


def _checks(enabled: bool = True) -> tuple[BrokerChecks, list[BrokerFeatures]]:
    told: list[BrokerFeatures] = []
    _Probe.made.clear()
    checks = BrokerChecks(BrokerAddress.from_url("mqtt://127.0.0.1:1"), "A1", Topics(), CONFIGURED, enabled=enabled,
                          on_change=told.append, probe=_Probe)  # type: ignore[arg-type]
    return checks, told


def test_nothing_known_before_a_check() -> None:
    checks, told = _checks()
    assert checks.features == BrokerFeatures(CONFIGURED) and told == []
    assert (checks.features.max_packet, checks.features.topics, checks.features.check) == \
        (None, TopicStatus.NOT_CHECKED, None)


async def test_a_refused_size_lowers_the_chunk_size_and_bounds_the_packets() -> None:
    checks, told = _checks()
    _Probe.reports = [_report([(256 * KiB, Outcome.REFUSED), (256 * KiB, Outcome.REFUSED), (128 * KiB, Outcome.PASSED)])]
    await checks.before_up()
    f = checks.features
    assert told == [f] and f.chunk_size == 128 * KiB and f.max_packet == 128 * KiB + 149
    assert f.topics is TopicStatus.OK and f.check is not None and f.check.startswith("warning: ")


async def test_the_full_size_passing_again_lifts_the_bound() -> None:
    checks, told = _checks()
    _Probe.reports = [_report([(256 * KiB, Outcome.LOST), (128 * KiB, Outcome.PASSED)]),
                      _report([(256 * KiB, Outcome.PASSED)])]
    await checks.before_up()
    await checks.before_up()
    assert [(f.chunk_size, f.max_packet) for f in told] == [(128 * KiB, 128 * KiB + 149), (CONFIGURED, None)]


async def test_a_report_without_a_size_verdict_keeps_the_sizes_known() -> None:
    checks, told = _checks()
    _Probe.reports = [_report([(256 * KiB, Outcome.LOST), (128 * KiB, Outcome.PASSED)]),
                      _report([(256 * KiB, Outcome.UNREACHABLE)], TopicStatus.CHANGED)]
    await checks.before_up()
    await checks.before_up()
    assert told[-1].chunk_size == 128 * KiB and told[-1].max_packet == 128 * KiB + 149
    assert told[-1].topics is TopicStatus.CHANGED and told[-1].check is not None and told[-1].check.startswith("error")


async def test_off_says_so_and_probes_nothing() -> None:
    checks, told = _checks(enabled=False)
    await checks.before_up()
    assert checks.features.check == "off (brokerProbe=false)" and _Probe.made == [] and told == []
    checks.connection_failed(TimeoutError("timed out"))
    assert _Probe.made == []


async def test_a_timed_out_connect_runs_the_topic_check_alone() -> None:
    checks, told = _checks()
    checks.connection_failed(ConnectionRefusedError("refused"))  # the check would fail the same way
    assert _Probe.made == []
    _Probe.reports = [_report([], TopicStatus.REFUSED)]
    checks.connection_failed(TimeoutError("Operation timed out"))
    for _ in range(50):
        if told:
            break
        await asyncio.sleep(0)
    assert _Probe.made == [{"sizes": False}] and told[0].topics is TopicStatus.REFUSED
    checks.connection_failed(TimeoutError("timed out"))  # a finding is known: not again
    assert len(_Probe.made) == 1
    checks.close()


async def test_the_delayed_ack_pattern_is_measured_once_a_broker() -> None:
    checks, _ = _checks()
    measured = _report([(CONFIGURED, Outcome.PASSED)])
    measured.round_trips_plain, measured.round_trips_quick = [1.0] * 5, [1.0] * 5
    _Probe.reports[:] = [_report([(CONFIGURED, Outcome.PASSED)]), measured, _report([(CONFIGURED, Outcome.PASSED)])]
    for _ in range(3):
        await checks.before_up()
    # nothing measured the first time (a lost round trip): asked again; measured the second: not the third
    assert [m.get("round_trips", True) for m in _Probe.made] == [True, True, False]
    checks.use(BrokerAddress.from_url("mqtt://127.0.0.1:2"))  # another broker of the list: measured there too
    _Probe.reports[:] = [_report([(CONFIGURED, Outcome.PASSED)])]
    await checks.before_up()
    assert _Probe.made[-1].get("round_trips", True) is True
