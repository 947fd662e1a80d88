"""A fan-out transfer's outcome from its legs' (agent.core.fanout_outcome): table tests, and the wire field
TransferSpec.destination_agents that asks for one."""

from __future__ import annotations

import json

import pytest

from agent.core import results
from agent.core.fanout_outcome import DESTINATION_FIELDS, LegOutcome, fanout_outcome, route
from agent.wire.protocol import TransferSpec, dump, parse_command


def leg(agent: str, state: str, rc: int | None, supplement: str | None = None) -> LegOutcome:
    done = {0: 3, 20: 2}.get(rc, 0) if rc is not None else 1
    return LegOutcome(agent, state, rc, done, 3 - done if rc is not None else 0, done * 100, 0, supplement)


OK, SOME, FAIL = ("complete", 0), ("partial", 20), ("failed", 40)
TIMED_OUT, CANCEL = ("recovery_timed_out", 69), ("cancelled", 41)


@pytest.mark.parametrize("legs,state,rc", [
    ([OK, OK], "complete", 0),
    ([OK, OK, OK, OK], "complete", 0),
    ([OK, FAIL, OK], "partial", 20),
    ([FAIL, OK], "partial", 20),
    ([OK, TIMED_OUT], "partial", 20),  # a destination that timed out did not succeed; the others did
    ([SOME, SOME], "partial", 20),  # every destination got some of the files: something arrived
    ([SOME, FAIL], "partial", 20),
    ([FAIL, FAIL], "failed", 40),
    ([TIMED_OUT, TIMED_OUT], "failed", 40),  # 0/20/40 rule: not 69 at the top, each entry keeps its 69
    ([FAIL, TIMED_OUT, FAIL], "failed", 40),
    ([OK, CANCEL], "cancelled", 41),  # a cancel is for the transfer id: 41 as an ordinary transfer
    ([CANCEL, CANCEL], "cancelled", 41),
])
def test_the_parent_result_from_its_legs(legs: list[tuple[str, int]], state: str, rc: int) -> None:
    out = fanout_outcome([leg(f"A{i + 2}", s, c) for i, (s, c) in enumerate(legs)])
    assert (out.state, out.result_code) == (state, rc)
    assert rc in (results.SUCCESS, results.PARTIAL, results.FAILED, results.CANCELLED)


def test_destinations_are_in_the_spec_order_with_exactly_the_documented_fields() -> None:
    legs = [leg("A3", "recovery_timed_out", 69, "BFGSS0081E: transfer t failed: recovery timed out after 5 s"),
            leg("A2", "complete", 0), leg("A4", "failed", 40, "FTEIO0001E: no space left on device")]
    out = fanout_outcome(legs)
    assert [d["agent"] for d in out.destinations] == ["A3", "A2", "A4"]
    assert all(tuple(d) == DESTINATION_FIELDS for d in out.destinations)
    assert out.destinations[0] == {"agent": "A3", "state": "recovery_timed_out", "result_code": 69, "files_done": 0,
                                   "files_failed": 3, "bytes_done": 0, "recoveries": 0,
                                   "supplement": "BFGSS0081E: transfer t failed: recovery timed out after 5 s"}
    assert out.destinations[1]["supplement"] is None
    json.dumps(out.destinations)  # goes into events and replies as it is


@pytest.mark.parametrize("states,state", [
    (["in_progress", "complete"], "in_progress"),
    (["recovering", "in_progress"], "in_progress"),
    (["complete", "recovering", "negotiating"], "recovering"),
    (["queued", "queued"], "queued"),
])
def test_a_live_leg_keeps_the_parent_live(states: list[str], state: str) -> None:
    out = fanout_outcome([leg(f"A{i + 2}", s, 0 if s == "complete" else None) for i, s in enumerate(states)])
    assert (out.state, out.result_code) == (state, None)


def test_a_callers_bug_is_not_guessed_at() -> None:
    with pytest.raises(ValueError):
        fanout_outcome([])
    with pytest.raises(ValueError):
        fanout_outcome([leg("A2", "sleeping", 0)])
    with pytest.raises(ValueError, match="A2"):
        fanout_outcome([leg("A2", "complete", None), leg("A3", "complete", 0)])


def test_route() -> None:
    assert route("A1", ["A2", "A3", "A4"]) == "A1->A2,A3,A4"
    assert route("A1", ["A2"]) == "A1->A2"


# --------------------------------------------------------------------------- TransferSpec.destination_agents

ITEMS = [{"source": "/out/a", "destination": "/in/a", "destination_type": "file"}]


def spec(**kw: object) -> TransferSpec:
    return TransferSpec.model_validate({"source_agent": "A1", "destination_agent": "A2", "items": ITEMS, **kw})


def test_a_fan_out_spec_round_trips_and_an_ordinary_one_is_as_before() -> None:
    s = spec(destination_agents=["A2", "A3", "A4"])
    assert s.destination_agents == ["A2", "A3", "A4"]
    cmd = {"kind": "create_transfer", "request_id": "r1", "spec": json.loads(dump(s))}
    assert parse_command(json.dumps(cmd).encode()).spec == s
    plain = spec()
    assert plain.destination_agents is None
    assert "destination_agents" not in json.loads(dump(plain))  # null is left off the wire, as priority is


@pytest.mark.parametrize("agents,words", [
    (["A2"], "at least 2"),
    ([], "at least 2"),
    ([f"B{i}" for i in range(17)], "at most 16"),
    (["A2", "A3", "A3"], "A3 is listed more than once"),
    (["A2", "A1"], "source agent A1 cannot also be a destination"),
    (["A3", "A2"], "first of destination_agents \\(A3\\) must be destination_agent \\(A2\\)"),
    (["A2", ""], "destination_agents"),
    (["A2", "no/slash"], "destination_agents"),
])
def test_a_wrong_destination_list_is_refused(agents: list[str], words: str) -> None:
    first = {"destination_agent": agents[0]} if agents and agents[0] != "A3" else {}  # A3: the wrong first one
    with pytest.raises(ValueError, match=words):
        spec(destination_agents=agents, **first)


def test_sixteen_destinations_are_allowed() -> None:
    agents = [f"B{i}" for i in range(16)]
    assert spec(destination_agent="B0", destination_agents=agents).destination_agents == agents
