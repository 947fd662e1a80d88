"""The watchdog: outcomes the peers have not confirmed.

A source transfer's outcome (Complete) is sent again until the destination confirms it (CompleteAck): every
COMPLETE_RETRY_INTERVAL to a peer that is running, at once when a peer comes back, and when a destination
asks about a transfer this source no longer runs. (A destination that hears nothing from its source for
transferAckTimeout asks it to recover on its session's own timer: agent.core.destination_session.)
"""

from __future__ import annotations

import asyncio

from .context import AgentContext
from .core.lifecycle import TERMINAL_STATE_VALUES as TERMINAL
from .core.policy import COMPLETE_RETRY_INTERVAL
from .core.statuses import AGENT_RUNNING
from .source import send_complete


class Watchdog:
    """`run()` watches; `resend_to(agent)` and `answer_finished(tid)` send outcomes on demand."""

    def __init__(self, ctx: AgentContext) -> None:
        self._ctx = ctx

    async def run(self) -> None:
        ctx = self._ctx
        while True:
            await asyncio.sleep(COMPLETE_RETRY_INTERVAL)
            if not ctx.link_up():
                continue
            for rec in ctx.store.transfers("source", files=False):
                if rec.state in TERMINAL and not rec.peer_confirmed and ctx.peer_status(rec.peer) in AGENT_RUNNING:
                    await send_complete(ctx, rec)

    async def resend_to(self, agent: str) -> None:
        """`agent` is running (again): the outcomes it has not confirmed."""
        for rec in self._ctx.store.transfers("source", files=False):
            if rec.peer == agent and rec.state in TERMINAL and not rec.peer_confirmed:
                await send_complete(self._ctx, rec)

    async def answer_finished(self, tid: str) -> None:
        """A destination asks about a transfer this source no longer runs: tell it the outcome."""
        rec = self._ctx.store.load_transfer(tid, "source")
        if rec is not None and rec.state in TERMINAL:
            await send_complete(self._ctx, rec)
