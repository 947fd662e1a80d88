"""The history database as the web server reads it (ops.history, HISTORY_API), in a thread; without a
database (no --db and no default file, or ops.history not installed) every read is empty: live only."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Any

from cli.client import ClientError


class HistoryAdapter:
    def __init__(self, history: Any = None, url: str | None = None) -> None:
        self.h = history
        self.url = url
        self.lock = asyncio.Lock()  # one connection: one query at a time

    @classmethod
    def open(cls, url: str | None) -> "HistoryAdapter":
        try:
            from ops import history as hist  # type: ignore[attr-defined]
        except ImportError:
            if url:
                raise ClientError("--db needs ops.history (the logger's history module), which is not installed")
            return cls()
        if url is None:
            url = hist.default_history_url()
            path = url.removeprefix("sqlite:///")
            if not os.path.exists("/" + path.lstrip("/")):
                return cls()
        try:
            return cls(hist.History.open(url), url)
        except hist.HistoryError as exc:
            raise ClientError(f"cannot open the history database {url}: {exc}") from None

    @property
    def enabled(self) -> bool:
        return self.h is not None

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.h is None:
            return None
        async with self.lock:
            return await asyncio.to_thread(getattr(self.h, name), *args, **kwargs)

    async def transfers(self, *, agent: str | None, since: datetime | None, state: str | None,
                        job_name: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._call("transfers", agent=agent, since=since, state=state, job_name=job_name,
                                limit=limit) or []

    async def transfer(self, tid: str) -> dict[str, Any] | None:
        return await self._call("transfer", tid)  # type: ignore[no-any-return]

    async def events(self, tid: str) -> list[dict[str, Any]]:
        return await self._call("events", tid) or []

    def close(self) -> None:
        if self.h is not None:
            self.h.close()
