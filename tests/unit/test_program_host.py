"""A destination's program calls (agent.programs.ProgramHost) run once each, restarts included: the state store
records each call before it runs and its outcome after, and a repeated or replayed program_run (the same
signed message captured and sent again, also after the agent restarted) is answered from that record. A call
that was running when the agent stopped is answered as a failure, never run a second time."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.programs import ProgramCaller, ProgramHost
from agent.store import StateStore, TransferRecord
from agent.wire.programs import ProgramCall, ProgramRun
from agent.wire.protocol import Topics

TID = "ab" * 24
TID2 = "cd" * 24


def _bin(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "runs.txt"
    script = tmp_path / "bin" / "count.sh"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\necho ran >> {marker}\necho run number $(wc -l < {marker})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script.parent, marker


class Agent:
    """What ProgramHost needs of its agent, with a real state store in `state`: `restart()` opens it again."""

    def __init__(self, tmp_path: Path, bin_dir: Path) -> None:
        self.path = tmp_path / "state" / "state.db"
        self.bin_dir = bin_dir
        self.answers: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.store = StateStore(self.path)
        self.host = self._host()

    def _host(self) -> ProgramHost:
        async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
            assert topic == f"SYSTEM.FTE/Control/A1/{json.loads(payload)['transfer_id']}"
            self.answers.append(json.loads(payload))
            self.arrived.set()

        ctx = SimpleNamespace(name="A2", store=self.store, topics=Topics(), publish=publish,
                              identity=Ed25519PrivateKey.generate(),
                              settings=SimpleNamespace(commandPath=str(self.bin_dir), commandTimeout=10))
        return ProgramHost(ctx)  # type: ignore[arg-type]

    def restart(self) -> None:
        self.store.close()
        self.store = StateStore(self.path)
        self.host = self._host()

    async def ask(self, msg: ProgramRun) -> dict[str, Any]:
        self.arrived.clear()
        before = len(self.answers)
        self.host.on_run(msg)
        await asyncio.wait_for(self.arrived.wait(), 10)
        assert len(self.answers) == before + 1
        return self.answers[-1]["outcome"]


def _run(tid: str = TID) -> ProgramRun:
    return ProgramRun(kind="program_run", transfer_id=tid, source_agent="A1", destination_agent="A2",
                      when="pre_destination", call=ProgramCall(name="count.sh"))


def test_a_program_run_replayed_after_a_restart_is_answered_from_the_record(tmp_path: Path) -> None:
    bin_dir, marker = _bin(tmp_path)

    async def go() -> None:
        agent = Agent(tmp_path, bin_dir)
        first = await agent.ask(_run())
        assert first["outcome"] == "success" and first["output"].strip() == "run number 1", first
        assert await agent.ask(_run()) == first  # a resend: the same answer
        agent.restart()
        assert await agent.ask(_run()) == first  # a replay after the restart: the same answer, from the record
        agent.restart()
        assert await agent.ask(_run()) == first
        agent.store.close()

    asyncio.run(go())
    assert marker.read_text() == "ran\n", "the program ran more than once"


def test_a_call_running_when_the_agent_stopped_is_not_run_again(tmp_path: Path) -> None:
    bin_dir, marker = _bin(tmp_path)

    async def go() -> None:
        agent = Agent(tmp_path, bin_dir)
        # the agent claimed the call and stopped before it finished (killed while the program ran)
        assert agent.store.claim_program_run(TID2, "pre_destination", "A1", 1000.0) == (True, None)
        agent.restart()
        answer = await agent.ask(_run(TID2))
        assert answer["outcome"] == "failure" and "stopped while the program ran" in answer["message"], answer
        agent.restart()
        assert await agent.ask(_run(TID2)) == answer
        agent.store.close()

    asyncio.run(go())
    assert not marker.exists(), "the program ran"


def test_the_store_records_each_call_once(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    assert store.claim_program_run(TID, "pre_destination", "A1", 100.0) == (True, None)
    assert store.claim_program_run(TID, "pre_destination", "A1", 101.0) == (False, None)
    assert store.claim_program_run(TID, "post_destination", "A1", 102.0) == (True, None)
    store.save_program_outcome(TID, "pre_destination", '{"outcome": "success"}')
    assert store.claim_program_run(TID, "pre_destination", "A1", 103.0) == (False, '{"outcome": "success"}')
    assert store.prune_program_runs(101.5) == 1  # the pre_destination row, of 100.0
    assert store.claim_program_run(TID, "post_destination", "A1", 104.0) == (False, None)
    store.close()


def _caller(store: StateStore, bin_dir: Path) -> ProgramCaller:
    ctx = SimpleNamespace(name="A1", store=store, settings=SimpleNamespace(commandPath=str(bin_dir), commandTimeout=10))
    rec = TransferRecord(TID, "source", "queued", "A2", {"programs": {"pre_source": {"name": "count.sh"}},
                                                         "destination_agents": ["A2", "A3"]})
    return ProgramCaller(ctx, rec)  # type: ignore[arg-type]


def test_a_source_call_runs_once_per_transfer_across_a_restart_of_the_source(tmp_path: Path) -> None:
    bin_dir, marker = _bin(tmp_path)
    path = tmp_path / "state" / "state.db"

    async def go() -> None:
        store = StateStore(path)
        first = await _caller(store, bin_dir).run("pre_source")
        assert first is not None and first.outcome == "success" and "run number 1" in first.output
        store.close()
        store = StateStore(path)  # the source restarted (a fan-out's legs had not started): the record answers
        again = await _caller(store, bin_dir).run("pre_source")
        assert again is not None and (again.outcome, again.output) == ("success", first.output)
        store.close()

    asyncio.run(go())
    assert marker.read_text().splitlines() == ["ran"]


def test_a_source_call_running_when_the_source_stopped_fails_rather_than_run_again(tmp_path: Path) -> None:
    bin_dir, marker = _bin(tmp_path)
    store = StateStore(tmp_path / "state" / "state.db")
    assert store.claim_program_run(TID, "pre_source", "A1", 1.0) == (True, None)  # started, never finished
    outcome = asyncio.run(_caller(store, bin_dir).run("pre_source"))
    assert outcome is not None and outcome.outcome == "failure" and "not run again" in outcome.message
    assert not marker.exists()
    assert json.loads(store.claim_program_run(TID, "pre_source", "A1", 2.0)[1] or "{}")["outcome"] == "failure"
