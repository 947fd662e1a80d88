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

from collections.abc import Sequence
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


def route(source_agent: str, destinations: Sequence[str]) -> str:
    """How a fan-out is shown in one line: `A1->A2,A3,A4` (an ordinary transfer: `A1->A2`)."""
    return f"{source_agent}->{','.join(destinations)}"
