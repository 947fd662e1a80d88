"""The gate a source transfer passes to run: at most maxSourceTransfers at once, the others queued and
started by priority, then in arrival order (the rule: agent.core.start_order). The IO shell of that rule:
one future a waiting transfer, resolved when its turn comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .core.start_order import StartOrder


class StartGate:
    def __init__(self, slots: int) -> None:
        self.order = StartOrder(slots)
        self._turns: dict[str, asyncio.Future[None]] = {}

    @asynccontextmanager
    async def slot(self, tid: str, priority: int) -> AsyncIterator[None]:
        """Hold one of the slots for the body; wait for it, in turn, when all are taken."""
        turn = self._turns[tid] = asyncio.get_running_loop().create_future()
        self.order.queue(tid, priority)
        self._open()
        try:
            await turn
            yield
        finally:
            self._turns.pop(tid, None)
            self.order.done(tid)
            self._open()

    def _open(self) -> None:
        for tid in self.order.due():
            turn = self._turns.get(tid)
            if turn is not None and not turn.done():
                turn.set_result(None)
