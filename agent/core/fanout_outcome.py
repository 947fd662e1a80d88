"""The outcome of a fan-out transfer (`-da A2,A3,...`) from the outcomes of its legs, one per destination.

Pure: the source agent (its legs' sessions or their store rows) gives each leg's outcome in the order of the
spec's `destination_agents`; this says the parent transfer's `state`, `result_code` and the `destinations` list
that its `completed` event, its `query_transfer` / `list_transfers` summaries and the CLI show.

The rule (docs/result-codes.md, "Fan-out"), like `results.transfer_result` one level up:
- cancelled (any leg cancelled: a cancel is for the whole transfer id) -> `cancelled`, 41, as an ordinary
  transfer;
- every destination succeeded (its leg's result 0) -> `complete`, 0;
- some destination received something (a leg with result 0, or 20: some of its files) -> `partial`, 20 (the
  terminal state that goes with 20 for an ordinary transfer too);
- none did (every leg 40, 69, ...) -> `failed`, 40. A leg whose recovery timed out counts as not succeeded;
  its own entry keeps 69 and its state `recovery_timed_out`.
While a leg is still live the parent is live (result_code None): `in_progress` when any leg moves data,
else the state of the first live leg (queued, negotiating, recovering, resynchronising).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from . import results
from .lifecycle import TransferState

# the keys of one `destinations` item, in this order (docs/log-events.md, `completed`)
DESTINATION_FIELDS = ("agent", "state", "result_code", "files_done", "files_failed", "bytes_done", "recoveries",
                      "supplement")


class LegOutcome(NamedTuple):
    """One destination's leg as it stands: result_code None while the leg is live; supplement the reason
    text (why it failed, timed out...), or None."""

    agent: str
    state: str
    result_code: int | None
    files_done: int
    files_failed: int
    bytes_done: int
    recoveries: int
    supplement: str | None = None


class FanoutOutcome(NamedTuple):
    state: str
    result_code: int | None  # None while any leg is live
    destinations: list[dict[str, Any]]


def destination_entry(leg: LegOutcome) -> dict[str, Any]:
    """The leg as an item of `destinations` (exactly DESTINATION_FIELDS)."""
    return dict(zip(DESTINATION_FIELDS, leg))


def fanout_outcome(legs: Sequence[LegOutcome]) -> FanoutOutcome:
    """The parent's state, result code and `destinations`, from its legs in the order of the spec."""
    if not legs:
        raise ValueError("a fan-out transfer has at least one leg")
    states = [TransferState(leg.state) for leg in legs]  # an unknown state is a caller's bug: ValueError
    destinations = [destination_entry(leg) for leg in legs]
    live = [s for s in states if not s.is_terminal]
    if live:
        state = TransferState.IN_PROGRESS if TransferState.IN_PROGRESS in live else live[0]
        return FanoutOutcome(state.value, None, destinations)
    missing = [leg.agent for leg in legs if leg.result_code is None]
    if missing:
        raise ValueError(f"leg(s) {missing} ended without a result code")
    if TransferState.CANCELLED in states:
        return FanoutOutcome(TransferState.CANCELLED.value, results.CANCELLED, destinations)
    codes = [leg.result_code for leg in legs]
    if all(c == results.SUCCESS for c in codes):
        return FanoutOutcome(TransferState.COMPLETE.value, results.SUCCESS, destinations)
    if any(c in (results.SUCCESS, results.PARTIAL) for c in codes):
        return FanoutOutcome(TransferState.PARTIAL.value, results.PARTIAL, destinations)
    return FanoutOutcome(TransferState.FAILED.value, results.FAILED, destinations)


def recovery_fields(legs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The parent's `recovering_since`, `recovery_deadline` and `last_stall`, of the transfer as a whole, from
    each leg's (agent, its summary or row: `state`, `recovering_since`, `recovery_deadline`, `last_stall`; times
    as ISO UTC text, which sorts as time), in -da order: of the legs recovering now, the earliest start and the
    earliest deadline (null when none ends: recovery timeout -1), and the reason of the one that began
    recovering last; with none recovering, the reason of the first leg that has one. A reason is prefixed with
    its destination agent ("A3: ..."): which destination stalled."""
    recovering = [(agent, leg) for agent, leg in legs
                  if TransferState(leg["state"]).is_recovery and leg.get("recovering_since") is not None]
    if recovering:
        deadlines = [leg["recovery_deadline"] for _, leg in recovering if leg.get("recovery_deadline") is not None]
        agent, latest = max(recovering, key=lambda al: str(al[1]["recovering_since"]))
        return {"recovering_since": min(str(leg["recovering_since"]) for _, leg in recovering),
                "recovery_deadline": min(deadlines) if deadlines else None,
                "last_stall": f"{agent}: {latest['last_stall']}" if latest.get("last_stall") else None}
    stalled = next(((agent, leg["last_stall"]) for agent, leg in legs if leg.get("last_stall")), None)
    return {"recovering_since": None, "recovery_deadline": None,
            "last_stall": f"{stalled[0]}: {stalled[1]}" if stalled else None}


def arrived(code: Any) -> bool:
    """A file's result code says it arrived (0, or 2: with a warning)."""
    return code in (results.FILE_SUCCESS, results.FILE_WARNING)


def fanout_files(legs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """The `files` of a fan-out's `completed` event, each file as every destination ended it, from each leg's
    (agent, its files as its completed event lists them), in -da order (docs/log-events.md, `completed`):
    result 0 when it arrived at every destination without a warning, 2 when it arrived at every one with a
    warning, or at some but not all (its supplement names the others: "not transferred to A3: ..."), 1 when it
    arrived at none; its supplement then says each destination's reason (once when they are the same). The
    other fields are the first destination's (`digest`: the first that has one)."""
    if not legs:
        raise ValueError("a fan-out transfer has at least one leg")
    out = []
    for i, base in enumerate(legs[0][1]):
        each = [(agent, files[i]) for agent, files in legs]
        ok = [(a, f) for a, f in each if arrived(f.get("result_code"))]
        bad = [(a, f) for a, f in each if not arrived(f.get("result_code"))]
        view = dict(base, digest=next((f.get("digest") for _, f in ok + each if f.get("digest")), None))
        notes = [(a, f.get("supplement")) for a, f in each if f.get("supplement")]
        if not bad:
            code = results.FILE_SUCCESS if all(f.get("result_code") == results.FILE_SUCCESS for _, f in ok) \
                else results.FILE_WARNING
            supplement = _joined(notes, len(each))
        elif ok:
            code = results.FILE_WARNING
            supplement = "not transferred to " + "; ".join(
                f"{a}" + (f": {f['supplement']}" if f.get("supplement") else "") for a, f in bad)
        else:
            code, supplement = results.FILE_FAILED, _joined(notes, len(each))
        view.update(result_code=code, supplement=supplement)
        out.append(view)
    return out


def _joined(notes: Sequence[tuple[str, str]], legs: int) -> str | None:
    """Each destination's supplement, "A2: ...; A3: ...", or the one text when all `legs` said the same."""
    if not notes:
        return None
    same = len(notes) == legs and len({t for _, t in notes}) == 1
    return notes[0][1] if same else "; ".join(f"{a}: {t}" for a, t in notes)


def route(source_agent: str, destinations: Sequence[str]) -> str:
    """How a fan-out is shown in one line: `A1->A2,A3,A4` (an ordinary transfer: `A1->A2`)."""
    return f"{source_agent}->{','.join(destinations)}"
