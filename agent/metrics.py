"""Prometheus metrics of one agent, served as text on an opt-in port (agent.properties: metricsPort).

No client library: the text exposition format is a few lines, and an agent should not need another
dependency for it. Counters only grow; gauges are read from the agent when scraped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Callable

log = logging.getLogger("fte.metrics")


class Metrics:
    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.bytes_sent = 0
        self.bytes_received = 0
        self.finished: dict[tuple[str, int], int] = defaultdict(int)  # (state, result code) -> transfers
        self.recoveries = 0
        self.recovery_seconds_sum = 0.0
        self.recovery_seconds_count = 0
        self.rejected_messages = 0
        self.gauges: dict[str, Callable[[], dict[str, float]]] = {}

    def transfer_finished(self, state: str, result_code: int) -> None:
        self.finished[(state, result_code)] += 1

    def recovery_started(self) -> None:
        self.recoveries += 1

    def recovery_ended(self, seconds: float) -> None:
        self.recovery_seconds_sum += seconds
        self.recovery_seconds_count += 1

    def render(self) -> str:
        a = f'agent="{self.agent}"'
        lines = [
            "# HELP fte_bytes_sent_total File bytes acknowledged by destinations (this agent as source).",
            "# TYPE fte_bytes_sent_total counter",
            f"fte_bytes_sent_total{{{a}}} {self.bytes_sent}",
            "# HELP fte_bytes_received_total File bytes written to part files (this agent as destination).",
            "# TYPE fte_bytes_received_total counter",
            f"fte_bytes_received_total{{{a}}} {self.bytes_received}",
            "# HELP fte_transfers_finished_total Transfers ended, by final state and result code (as source).",
            "# TYPE fte_transfers_finished_total counter",
        ]
        for (state, rc), n in sorted(self.finished.items()):
            lines.append(f'fte_transfers_finished_total{{{a},state="{state}",result_code="{rc}"}} {n}')
        lines += [
            "# HELP fte_recoveries_total Times a transfer entered recovery.",
            "# TYPE fte_recoveries_total counter",
            f"fte_recoveries_total{{{a}}} {self.recoveries}",
            "# HELP fte_recovery_duration_seconds Time from entering recovery to resuming (resumed recoveries).",
            "# TYPE fte_recovery_duration_seconds summary",
            f"fte_recovery_duration_seconds_sum{{{a}}} {self.recovery_seconds_sum:.3f}",
            f"fte_recovery_duration_seconds_count{{{a}}} {self.recovery_seconds_count}",
            "# HELP fte_messages_rejected_total Inbound messages dropped as malformed, unauthorised or unbound.",
            "# TYPE fte_messages_rejected_total counter",
            f"fte_messages_rejected_total{{{a}}} {self.rejected_messages}",
        ]
        for name, read in sorted(self.gauges.items()):
            lines += [f"# TYPE {name} gauge"]
            for labels, value in sorted(read().items()):
                extra = f",{labels}" if labels else ""
                lines.append(f"{name}{{{a}{extra}}} {value:g}")
        return "\n".join(lines) + "\n"

    async def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """A minimal HTTP/1.0 server for GET /metrics."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = await asyncio.wait_for(reader.readline(), 5)
                while (await asyncio.wait_for(reader.readline(), 5)).strip():
                    pass
                path = request.split()[1].decode() if len(request.split()) > 1 else "/"
                if path.split("?")[0] == "/metrics":
                    body, status = self.render().encode(), "200 OK"
                else:
                    body, status = b"see /metrics\n", "404 Not Found"
                writer.write(f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
            except (asyncio.TimeoutError, ConnectionError, IndexError):
                pass
            finally:
                writer.close()

        try:
            server = await asyncio.start_server(handle, host, port)
        except OSError as exc:
            log.error("no metrics: cannot listen on %s:%d (metricsPort): %s", host, port, exc)
            return
        log.info("metrics on http://%s:%d/metrics", host, port)
        async with server:
            await server.serve_forever()
