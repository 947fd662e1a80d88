"""A source session (agent A1) and a destination session (A2) wired to each other in one process, on real files
and a real state store each: what one publishes the other handles, no broker. For what happens when the source
file changes while it is sent, or the destination's disk fills up (tests/unit/test_source_transfer.py,
test_destination_driver.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent.source import SourceTransfer
from agent.store import FileRecord, TransferRecord
from tests.unit.test_destination_driver import _context



class Pair:
    """A source session (agent A1) and the destination session (A2) it creates by its negotiation. `on_chunk`,
    if set, runs before each chunk is handed to the destination (the test changes the source file there)."""

    def __init__(self, tmp_path: Path, chunk_size: int = 4096, window: int = 2) -> None:
        from agent.sandbox import Sandbox

        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        self.src_ctx = _context(tmp_path / "a", [])
        self.dst_ctx = _context(tmp_path / "b", [])
        for ctx in (self.src_ctx, self.dst_ctx):
            ctx.chunk_size, ctx.window_chunks, ctx.sandbox = chunk_size, window, Sandbox([tmp_path])
        self.src_ctx.name = "A1"
        self.src_ctx.publish = self._from_source
        self.dst_ctx.publish = self._from_destination
        self.source: SourceTransfer | None = None
        self.dest: Any = None
        self.on_chunk: Any = None
        self.chunks = 0
        self.kinds: list[str] = []  # what the source sent on the control topic

    async def _from_source(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        from agent.destination import DestinationTransfer
        from agent.wire.protocol import Bundle, Complete, FileEnd, Resync, decode_chunk, parse_control

        if "/Data/" in topic:
            frame = decode_chunk(payload)
            if isinstance(frame, Bundle):
                await self.dest.on_bundle(frame)
                return
            self.chunks += 1
            if self.on_chunk is not None:
                self.on_chunk(self.chunks)
            await self.dest.on_chunk(frame)
        elif "/Control/" in topic:
            msg = parse_control(payload)
            self.kinds.append(msg.kind)
            if isinstance(msg, Resync):
                if self.dest is None:
                    self.dest = DestinationTransfer.accept(self.dst_ctx, msg)
                await self.dest.on_resync(msg)
            elif isinstance(msg, FileEnd):
                await self.dest.on_file_end(msg)
            elif isinstance(msg, Complete):
                await self.dest.on_complete(msg)

    async def _from_destination(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        from agent.wire.protocol import CompleteAck, parse_control

        msg = parse_control(payload)
        if not isinstance(msg, CompleteAck) and self.source is not None:
            self.source.post("control", msg)

    def run(self, files: list[tuple[Path, Path]], before: Any = None, timeout: float = 20) -> dict[str, Any]:
        """Transfer (source, destination) pairs, as recorded when requested; `before()` runs after the request
        is recorded and before the session starts. Returns the `completed` event."""
        rec = TransferRecord("d" * 48, "source", "queued", "A2",
                             {"source_agent": "A1", "destination_agent": "A2", "exist": "overwrite"})
        for i, (src, dst) in enumerate(files):
            st = src.stat()
            rec.files.append(FileRecord(i, str(src), str(dst), st.st_size, st.st_mtime))
        self.src_ctx.store.save_transfer(rec)
        if before is not None:
            before()
        self.source = SourceTransfer(self.src_ctx, rec)
        asyncio.run(asyncio.wait_for(self.source.run(), timeout))
        events = [json.loads(payload) for _, _, payload, _ in self.src_ctx.store.outbox_peek()]
        [completed] = [e for e in events if e["action"] == "completed"]
        return completed
