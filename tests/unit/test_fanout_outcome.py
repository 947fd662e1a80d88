"""A fan-out transfer's outcome from its legs' (agent.core.fanout_outcome): table tests, and the wire field
TransferSpec.destination_agents that asks for one."""

from __future__ import annotations

import json

import pytest

from agent.core import results
from agent.core.fanout_outcome import (DESTINATION_FIELDS, LegOutcome, fanout_files, fanout_outcome, recovery_fields,
                                       route)
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


T1, T2, T3 = "2026-12-07T10:00:01.000Z", "2026-12-07T10:00:02.000Z", "2026-12-07T10:00:03.000Z"


def summary(state: str, since: str | None = None, deadline: str | None = None, stall: str | None = None) -> dict:
    return {"state": state, "recovering_since": since, "recovery_deadline": deadline, "last_stall": stall}


@pytest.mark.parametrize("why, legs, expected", [
    ("a destination other than the first recovering: it, not the first's nothing",
     [("A2", summary("in_progress")), ("A3", summary("recovering", T2, T3, "lost it"))],
     {"recovering_since": T2, "recovery_deadline": T3, "last_stall": "A3: lost it"}),
    ("two recovering: the earliest start and deadline, the reason of the one that began last",
     [("A2", summary("recovering", T2, T3, "late")), ("A3", summary("resynchronising", T1, None, "early")),
      ("A4", summary("recovering", T1, T2, "early too"))],
     {"recovering_since": T1, "recovery_deadline": T2, "last_stall": "A2: late"}),
    ("recovering without a deadline (-rt -1): none",
     [("A2", summary("recovering", T1, None, "x"))], {"recovering_since": T1, "recovery_deadline": None,
                                                       "last_stall": "A2: x"}),
    ("none recovering: the reason of the first that has one (a failed destination's)",
     [("A2", summary("complete")), ("A3", summary("recovery_timed_out", None, None, "gone")),
      ("A4", summary("failed", None, None, "refused"))],
     {"recovering_since": None, "recovery_deadline": None, "last_stall": "A3: gone"}),
    ("no stall anywhere", [("A2", summary("complete")), ("A3", summary("in_progress"))],
     {"recovering_since": None, "recovery_deadline": None, "last_stall": None}),
])
def test_recovery_fields_describe_the_transfer_as_a_whole(why: str, legs: list, expected: dict) -> None:
    assert recovery_fields(legs) == expected, why


def fv(rc: int | None, supplement: str | None = None, digest: str | None = "d") -> dict:
    return {"index": 0, "source": "/s", "destination": "/d", "size": 5, "checksum_method": "sha256",
            "digest": digest, "result_code": rc, "supplement": supplement}


@pytest.mark.parametrize("why, legs, rc, supplement", [
    ("arrived everywhere", [fv(0), fv(0)], 0, None),
    ("arrived everywhere, one with a warning", [fv(0), fv(2, "w")], 2, "A3: w"),
    ("the first failed, the second got it: arrived at some (not the first's failure)",
     [fv(1, "full", None), fv(0)], 2, "not transferred to A2: full"),
    ("the second failed: arrived at some (not the first's success)", [fv(0), fv(1, "gone", None)], 2,
     "not transferred to A3: gone"),
    ("failed everywhere, for the same reason: said once", [fv(1, "x", None), fv(1, "x", None)], 1, "x"),
    ("failed everywhere, for different reasons: each", [fv(1, "x", None), fv(1, "y", None)], 1, "A2: x; A3: y"),
    ("not finished (no result) counts as not arrived", [fv(0), fv(None, None, None)], 2, "not transferred to A3"),
])
def test_fanout_files_are_each_file_as_every_destination_ended_it(why: str, legs: list, rc: int,
                                                                  supplement: str | None) -> None:
    [f] = fanout_files(list(zip(("A2", "A3"), ([g] for g in legs))))
    assert (f["result_code"], f["supplement"]) == (rc, supplement), why
    # the digest of a destination that has one
    assert f["digest"] == ("d" if any(g["digest"] for g in legs) else None) and f["source"] == "/s"
