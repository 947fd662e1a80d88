"""`fte demo`: an embedded broker, two agents and real transfers, in one process.

1. A generated file goes from A1 to A2, with a progress bar and the live log events.
2. (recovery) The broker is stopped in the middle of the transfer and started again: the user watches
   recovering -> resumed -> complete, and the file arrives intact.
3. (recovery) A transfer with -rt 3 to an agent that stops: RecoveryTimedOut (69); when the agent
   comes back it removes its part files.
Exit 0 when everything behaved as it should.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from agent.daemon import Agent
from agent.embedded_broker import EmbeddedBroker
from agent.wire.events import Completed, TransferEventBase, read_event
from agent.wire.protocol import CreateTransfer, TransferItem, TransferSpec, new_transfer_id, utc_now
from agent.settings import load_agent_settings, write_agent_properties

from .client import ClientError, FteClient, new_request_id
from .trusted_agents import AgentKeys
from .render import format_event


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class DemoAgents:
    def __init__(self, home: Path, url: str, console: Console) -> None:
        self.home = home
        self.url = url
        self.console = console
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.events: list[TransferEventBase] = []
        self.finished: dict[str, Completed] = {}
        self.changed = asyncio.Event()

    def configure(self, name: str) -> None:
        env = {"FTE_CONFIG_HOME": str(self.home)}
        path = self.home / "agents" / name / "agent.properties"
        write_agent_properties(path, {"agentName": name, "brokerUrl": self.url, "sandboxRoot": str(self.home),
                                      "transferAckTimeout": "2000", "transferAckTimeoutRetries": "2",
                                      "brokerKeepalive": "5", "agentStateDir": str(self.home / "state" / name)})
        load_agent_settings(name, env=env)  # fail early on a bad file

    async def start(self, name: str) -> None:
        settings = load_agent_settings(name, env={"FTE_CONFIG_HOME": str(self.home)})
        agent = Agent(settings, settings.state_dir, agent_home=self.home / "agents" / name)
        agent.tlog.listeners.append(self._on_event)
        self.agents[name] = agent
        self.tasks[name] = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.link.up.wait(), 15)

    async def stop(self, name: str) -> None:
        self.agents[name].request_stop(immediate=True)
        await asyncio.wait_for(self.tasks[name], 15)

    def _on_event(self, data: dict[str, Any]) -> None:
        ev = read_event(data)  # the agents' own transfer events (TransferLog.listeners), as their models
        if not isinstance(ev, TransferEventBase):
            return
        self.events.append(ev)
        self.console.print(format_event(ev), soft_wrap=True, markup=False, emoji=False)
        if isinstance(ev, Completed):
            self.finished[ev.transfer_id] = ev
        self.changed.set()

    async def outcome(self, tid: str, timeout: float) -> Completed:
        deadline = time.monotonic() + timeout
        while tid not in self.finished:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"demo transfer {tid} did not finish within {timeout:g} s", 2)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        return self.finished[tid]

    async def stop_all(self) -> None:
        for name in list(self.tasks):
            if not self.tasks[name].done():
                self.agents[name].request_stop(immediate=True)
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


async def _submit(url: str, spec: TransferSpec, home: Path) -> str:
    """`home`: the demo's FTE_CONFIG_HOME, whose agents' keys sign the replies."""
    tid = new_transfer_id()
    async with FteClient(url, keys=AgentKeys(home)) as c:
        reply = await c.request(spec.source_agent, CreateTransfer(
            kind="create_transfer", request_id=new_request_id(), reply_to=c.client_id, sent_at=utc_now(),
            transfer_id=tid, spec=spec))
    if not reply.ok:
        raise ClientError(f"the demo transfer was refused: {reply.message}")
    return tid


async def _progress_until(demo: DemoAgents, tid: str, console: Console, fraction: float | None = None) -> None:
    """Show a progress bar from the source agent until the transfer ends (or reaches `fraction`)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"{tid[:12]}", total=None)
        while tid not in demo.finished:
            session = demo.agents["A1"].transfers.source(tid)
            if session is not None:
                s = session.summary()
                bar.update(task, total=s["bytes_total"], completed=s["bytes_done"],
                           description=f"{tid[:12]} {s['state']}")
                if fraction is not None and s["bytes_total"] and s["bytes_done"] >= fraction * s["bytes_total"]:
                    return
            await asyncio.sleep(0.05)


async def run_demo(size_mib: int, keep: bool, recovery: bool, console: Console) -> int:
    # the demo shows the transfer log; the agents' own diagnostics (reconnect attempts, the embedded
    # broker's teardown noise) would only hide it
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    home = Path(tempfile.mkdtemp(prefix="fte-demo-"))
    ok = True
    try:
        async with EmbeddedBroker(port=0) as broker:
            console.print(f"[bold]mqtt-fte demo[/] - embedded broker on {broker.url}, agents A1 and A2, files in {home}")
            demo = DemoAgents(home, broker.url, console)
            for name in ("A1", "A2"):
                demo.configure(name)
                await demo.start(name)
            src = home / "A1" / "outbox" / "demo.bin"
            src.parent.mkdir(parents=True)
            with open(src, "wb") as fh:
                for _ in range(size_mib):
                    fh.write(os.urandom(1 << 20))
            digest = _sha256(src)

            # 1. a plain transfer
            console.rule("1. transfer A1 -> A2")
            dst = home / "A2" / "inbox" / "demo.bin"
            spec = TransferSpec(source_agent="A1", destination_agent="A2", job_name="demo",
                                items=[TransferItem(source=str(src), destination=str(dst), destination_type="file")])
            tid = await _submit(broker.url, spec, home)
            await _progress_until(demo, tid, console)
            ev = await demo.outcome(tid, 120)
            good = ev.result_code == 0 and dst.exists() and _sha256(dst) == digest
            console.print(f"[{'green' if good else 'red'}]file arrived {'intact' if good else 'DAMAGED'}[/] "
                          f"(sha256 {digest[:16]}...)")
            ok &= good
            if recovery:
                ok &= await _demo_broker_outage(demo, broker, src, digest, home, console)
                ok &= await _demo_recovery_timeout(demo, broker.url, src, home, console)
            await demo.stop_all()
    finally:
        if keep:
            console.print(f"demo files kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    console.rule()
    console.print("[bold green]demo succeeded[/]" if ok else "[bold red]demo failed[/]")
    return 0 if ok else 1


async def _demo_broker_outage(demo: DemoAgents, broker: EmbeddedBroker, src: Path, digest: str, home: Path,
                              console: Console) -> bool:
    console.rule("2. the broker goes away in the middle of a transfer")
    dst = home / "A2" / "inbox" / "demo-recovered.bin"
    # --bandwidth: the transfer takes about 2 s whatever the file's size and the machine's speed, so the broker
    # is stopped while it runs (a fast machine finished a small file before its first progress poll)
    spec = TransferSpec(source_agent="A1", destination_agent="A2", job_name="demo-outage",
                        items=[TransferItem(source=str(src), destination=str(dst), destination_type="file")],
                        bandwidth=max(1, src.stat().st_size // 2))
    tid = await _submit(broker.url, spec, home)
    await _progress_until(demo, tid, console, fraction=0.3)
    if tid not in demo.finished:
        await broker.stop()
        console.print("[yellow]demo: broker stopped (simulated outage of 3 s)[/]")
        await asyncio.sleep(3)
        await broker.start()
        console.print("[yellow]demo: broker back[/]")
    await _progress_until(demo, tid, console)
    ev = await demo.outcome(tid, 120)
    actions = [e.action for e in demo.events if e.transfer_id == tid and e.agent == "A1"]
    good = ev.result_code == 0 and _sha256(dst) == digest and "recovering" in actions and "resumed" in actions
    console.print(f"[{'green' if good else 'red'}]recovered: {' -> '.join(a for a in actions if a != 'progress')}; "
                  f"file {'intact' if _sha256(dst) == digest else 'DAMAGED'}[/]")
    return good


async def _demo_recovery_timeout(demo: DemoAgents, url: str, src: Path, home: Path, console: Console) -> bool:
    console.rule("3. -rt 3 to an agent that stops: RecoveryTimedOut, then its part files are removed")
    dst = home / "A2" / "inbox" / "demo-timeout.bin"
    part = Path(str(dst) + ".part")
    spec = TransferSpec(source_agent="A1", destination_agent="A2", job_name="demo-timeout", recovery_timeout=3,
                        items=[TransferItem(source=str(src), destination=str(dst), destination_type="file")])
    tid = await _submit(url, spec, home)
    while not part.exists() and tid not in demo.finished:
        await asyncio.sleep(0.01)
    await demo.stop("A2")
    console.print(f"[yellow]demo: agent A2 stopped; part file left: {part.name} "
                  f"({part.stat().st_size if part.exists() else 0} bytes)[/]")
    ev = await demo.outcome(tid, 60)
    had_part = part.exists()
    console.print("[yellow]demo: starting A2 again[/]")
    await demo.start("A2")
    deadline = time.monotonic() + 30
    while part.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    good = ev.result_code == 69 and had_part and not part.exists() and not dst.exists()
    console.print(f"[{'green' if good else 'red'}]result {ev.result_code} (RecoveryTimedOut); part file "
                  f"{'removed by A2 after resync' if not part.exists() else 'STILL THERE'}[/]")
    return good
