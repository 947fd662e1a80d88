"""Prometheus metrics of one agent, served as text on an opt-in port (agent.properties: metricsPort).

No client library: the text exposition format is a few lines, and an agent should not need another
dependency for it. Counters only grow; gauges are read from the agent when scraped. Every metric has its
`# HELP` and `# TYPE` lines; `fte_build_info{version}` is 1; the duration and size of finished transfers
(as source) are histograms with cumulative `le` buckets (docs/operations.md lists them all).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections import defaultdict
from typing import Any, Callable, Mapping

from . import __version__

log = logging.getLogger("fte.metrics")

# seconds: from sub-second small files to a many-hour bulk transfer
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
# bytes, powers of 10 (decimal, as every figure fte shows): 1 kB .. 100 GB
SIZE_BUCKETS = tuple(float(10 ** e) for e in range(3, 12))

# The help text of each gauge the agent registers (Metrics.gauges); one without an entry gets a generic help.
GAUGE_HELP = {
    "fte_transfers_active": "Transfers running now, by role.",
    "fte_transfers_in_state": "Transfers this agent knows, by state.",
    "fte_log_outbox_depth": "Log events and retained messages waiting in the outbox to be published.",
    "fte_monitors_running": "Resource monitors running.",
    "fte_broker_connected": "1 while the agent is connected to its broker, else 0.",
}


class Histogram:
    """A Prometheus histogram: cumulative counts per upper bound, the sum and the count."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


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
        self.durations = Histogram(DURATION_BUCKETS)
        self.sizes = Histogram(SIZE_BUCKETS)

    def transfer_finished(self, state: str, result_code: int, statistics: Mapping[str, Any] | None = None) -> None:
        """A transfer ended (as source); `statistics` of its `completed` event give its duration and size."""
        self.finished[(state, result_code)] += 1
        if statistics is not None:
            self.durations.observe(max(0.0, float(statistics.get("seconds") or 0)))
            self.sizes.observe(float(max(0, statistics.get("bytes") or 0)))

    def recovery_started(self) -> None:
        self.recoveries += 1

    def recovery_ended(self, seconds: float) -> None:
        self.recovery_seconds_sum += seconds
        self.recovery_seconds_count += 1

    def render(self) -> str:
        a = f'agent="{self.agent}"'
        lines = [
            "# HELP fte_build_info The fte version of this agent (value always 1).",
            "# TYPE fte_build_info gauge",
            f'fte_build_info{{{a},version="{__version__}"}} 1',
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
            "# HELP fte_transfer_duration_seconds Time from start to end of finished transfers (as source).",
            "# TYPE fte_transfer_duration_seconds histogram",
            *self.durations.lines("fte_transfer_duration_seconds", a),
            "# HELP fte_transfer_size_bytes File bytes transferred by finished transfers (as source).",
            "# TYPE fte_transfer_size_bytes histogram",
            *self.sizes.lines("fte_transfer_size_bytes", a),
        ]
        for name, read in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {GAUGE_HELP.get(name, 'A gauge of the agent, read when scraped.')}",
                      f"# TYPE {name} gauge"]
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
