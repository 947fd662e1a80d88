"""Program calls, the IO: find the program in commandPath, run it as an argv list (never a shell) with a
timeout, keep the tail of its output, retry per its spec; and, on a destination agent, run the calls its
transfers' sources ask for (ProgramRun) and answer what became of them (ProgramDone).

The rules (syntax, which names may run, successrc, the environment) are agent.core.program_call's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import time
from typing import Any, Callable, Mapping

from .context import AgentContext
from .store import TransferRecord
from .core import program_call as pc
from .core import results
from .core.lifecycle import TransferState
from .core.source_actions import Action
from .core.source_session import SourceSession
from .wire.binding import seal
from .wire.programs import ProgramCall, ProgramDone, ProgramOutcome, ProgramRun
from .wire.protocol import ProtocolError

log = logging.getLogger("fte.programs")

# a destination keeps the outcome of each call it ran (its state store, table program_runs) this long, to
# answer a repeated or replayed ProgramRun from the record, restarts included, without running it again
PROGRAM_RUN_DAYS = 90
RESEND_RUN = 10.0  # seconds between sends of an unanswered ProgramRun (lost with the broker, peer away)


def find_program(name: str, command_path: str | None) -> str:
    """The executable file `name` is in commandPath; ProgramCallError if it may not run or is not there."""
    candidates = pc.command_candidates(name, pc.split_command_path(command_path))
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            return path
    raise pc.ProgramCallError(f"program {name!r} refused: no executable file of that name in commandPath "
                              f"({command_path})")


async def _run_once(path: str, args: tuple[str, ...], env: Mapping[str, str],
                    timeout: float) -> tuple[int | None, bytes, str]:
    """(return code or None if killed, output tail, error) of one run."""
    try:
        proc = await asyncio.create_subprocess_exec(
            path, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=dict(env), start_new_session=True)  # its own group: killed whole
    except OSError as exc:
        return None, b"", f"could not start {path}: {exc.strerror or exc}"
    tail = bytearray()

    async def read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            tail.extend(chunk)
            del tail[:-pc.OUTPUT_TAIL_BYTES]  # bounded, however much it writes

    try:
        await asyncio.wait_for(asyncio.gather(read(), proc.wait()), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return None, bytes(tail), "timed out"
    return proc.returncode, bytes(tail), ""


async def run_call(call: pc.Call, when: str, command_path: str | None, timeout: float,
                   env: Mapping[str, str], sleep: Callable[[float], Any] = asyncio.sleep) -> pc.Outcome:
    """Run `call` (retries included) and say what became of it; a refused call is never started."""
    out = pc.Outcome(when, call.name, "refused", args=list(call.args))
    try:
        path = find_program(call.name, command_path)
    except pc.ProgramCallError as exc:
        out.message = str(exc)
        log.warning("%s %s", pc.FLAG_OF.get(when, when), exc)
        return out
    for attempt in range(call.retry_count + 1):
        if attempt and call.retry_wait:
            await sleep(call.retry_wait)
        rc, tail, error = await _run_once(path, call.args, env, timeout)
        out.attempts, out.return_code, out.output = attempt + 1, rc, pc.tail(tail)
        if rc is None:
            out.outcome, out.message = ("timed_out", f"killed after {timeout:g} s") if error == "timed out" \
                else ("failure", error)
        elif pc.succeeded(call.success_rc, rc):
            out.outcome, out.message = "success", ""
            break
        else:
            out.outcome, out.message = "failure", f"return code {rc} is not a success ({call.success_rc})"
    log.info("%s %s: %s (return code %s, %d attempt(s))", pc.FLAG_OF.get(when, when), call.name, out.outcome,
             out.return_code, out.attempts)
    return out


def environment(transfer_id: str, source: str, destination: str, job_name: str | None,
                destinations: list[str], when: str, destination_agents: list[str] | None = None) -> dict[str, str]:
    return pc.program_environment(transfer_id, source, destination, job_name, destinations, when, os.environ,
                                  destination_agents or ())


def timeout_of(ctx: AgentContext) -> float:
    return float(getattr(ctx.settings, "commandTimeout", 60))


def command_path_of(ctx: AgentContext) -> str:
    return str(getattr(ctx.settings, "commandPath", "") or "")


def outcome_model(o: pc.Outcome) -> ProgramOutcome:
    data = o.to_json()
    data["output"] = data["output"][-(pc.OUTPUT_TAIL_BYTES * 2):]
    data["message"] = data["message"][:1024]
    return ProgramOutcome(**data)


async def monitor_command(ctx: AgentContext, task: dict[str, Any], origin: str) -> str:
    """A monitor's command task (agent.monitor): its call, arguments substituted, run here; the outcome as
    JSON (the `program` of the monitor's `command_ran` event)."""
    call = ProgramCall.model_validate(task["command"]).call()
    env = pc.program_environment("", ctx.name, "", origin, list(task.get("files") or []), "monitor", os.environ)
    outcome = await run_call(call, "monitor", command_path_of(ctx), timeout_of(ctx), env)
    return json.dumps(outcome_model(outcome).model_dump())


def interrupted(ctx: AgentContext, transfer_id: str, when: str, call: ProgramCall) -> ProgramOutcome:
    """The outcome of a call that was started and never finished here (the agent stopped while it ran): a
    failure, recorded, rather than a second run (a source's calls and a destination's alike)."""
    outcome = ProgramOutcome(when=when, name=call.name, args=list(call.args), outcome="failure",
                             message=f"agent {ctx.name} stopped while the program ran; it is not run again "
                                     "(its outcome is unknown)")
    ctx.store.save_program_outcome(transfer_id, when, outcome.model_dump_json())
    return outcome


class ProgramHost:
    """A destination agent's side: runs the pre_destination / post_destination calls its transfers' sources
    ask for, once each (a repeated request is answered with the outcome it had), and answers signed."""

    def __init__(self, ctx: AgentContext, clock: Callable[[], float] = time.time) -> None:
        self._ctx = ctx
        self._clock = clock
        self._running: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_run(self, msg: ProgramRun) -> None:
        if msg.destination_agent != self._ctx.name:
            raise ProtocolError(f"program_run for agent {msg.destination_agent!r} received by {self._ctx.name!r}")
        if msg.when == "post_destination":
            # after the files: only for a transfer this agent received from that source, with the paths it wrote
            rec = self._ctx.store.load_transfer(msg.transfer_id, "destination")
            if rec is None or rec.peer != msg.source_agent:
                raise ProtocolError(f"program_run post_destination for transfer {msg.transfer_id}, which agent "
                                    f"{self._ctx.name} did not receive from {msg.source_agent}")
            msg = msg.model_copy(update={"destinations": [f.destination for f in rec.files]})
        key = (msg.transfer_id, msg.when)
        if key in self._running:
            return
        store, now = self._ctx.store, self._clock()
        first, recorded = store.claim_program_run(msg.transfer_id, msg.when, msg.source_agent, now)
        if not first:
            # asked again (a resend, or a replay, maybe after a restart): answered from the record, never rerun
            outcome = ProgramOutcome.model_validate_json(recorded) if recorded else \
                interrupted(self._ctx, msg.transfer_id, msg.when, msg.call)
            log.info("program_run %s for transfer %s answered from the record (%s): a call runs once only",
                     msg.when, msg.transfer_id, outcome.outcome)
            self._answer(msg, outcome)
            return
        store.prune_program_runs(now - PROGRAM_RUN_DAYS * 86400)
        self._running.add(key)
        task = asyncio.create_task(self._run(msg, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, msg: ProgramRun, key: tuple[str, str]) -> None:
        try:
            env = environment(msg.transfer_id, msg.source_agent, msg.destination_agent, msg.job_name,
                              list(msg.destinations), msg.when)
            outcome = outcome_model(await run_call(msg.call.call(), msg.when, command_path_of(self._ctx),
                                                   timeout_of(self._ctx), env))
            self._ctx.store.save_program_outcome(msg.transfer_id, msg.when, outcome.model_dump_json())
        finally:
            self._running.discard(key)
        self._answer(msg, outcome)

    def _answer(self, msg: ProgramRun, outcome: ProgramOutcome) -> None:
        done = ProgramDone(kind="program_done", transfer_id=msg.transfer_id, when=msg.when, outcome=outcome,
                           destination_agent=self._ctx.name)
        task = asyncio.ensure_future(self._ctx.publish(self._ctx.topics.control(msg.source_agent, msg.transfer_id),
                                                       seal(done, None, self._ctx.identity), 1, False))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def cancel_tasks(self) -> list[asyncio.Task[None]]:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        return tasks


class ProgramCaller:
    """A source transfer's side: runs its source calls here and has its destination run the others.

    Of a fan-out transfer (agent/fanout.py) the parent's caller has only the source calls (`only`: run once
    for the transfer), each leg's only the destination calls (run by each destination agent)."""

    def __init__(self, ctx: AgentContext, rec: TransferRecord, only: tuple[str, ...] | None = None) -> None:
        header = rec.header
        # a fan-out leg's row is f"{tid}/{dest}": its calls are of the transfer, tid (agent/fanout.py)
        self._ctx, self._rec, self._tid, self._dest = ctx, rec, header.get("leg_of") or rec.transfer_id, rec.peer
        self._job = header.get("job_name")
        self._destinations = [f.destination for f in rec.files]
        self._agents = list(header.get("destination_agents") or [])
        self.calls: dict[str, ProgramCall] = {k: ProgramCall(**v) for k, v in (header.get("programs") or {}).items()
                                              if v and (only is None or k in only)}
        self.outcomes: list[pc.Outcome] = []
        self.failed_before: str | None = None  # a fan-out's -presrc failed: every leg fails before it starts
        self._answers: dict[str, asyncio.Future[ProgramOutcome]] = {}

    def __bool__(self) -> bool:
        return bool(self.calls)

    async def run(self, when: str) -> pc.Outcome | None:
        """Run the call `when` (if the transfer has one) where it belongs; its outcome, also kept."""
        call = self.calls.get(when)
        if call is None:
            return None
        if when.endswith("_source"):
            outcome = self._recorded(when, call)
            if outcome is None:
                env = environment(self._tid, self._ctx.name, self._dest, self._job, self._destinations, when,
                                  self._agents)
                outcome = await run_call(call.call(), when, command_path_of(self._ctx), timeout_of(self._ctx), env)
                self._ctx.store.save_program_outcome(self._tid, when, outcome_model(outcome).model_dump_json())
        else:
            outcome = await self._remote(when, call)
        self.outcomes.append(outcome)
        return outcome

    def _recorded(self, when: str, call: ProgramCall) -> pc.Outcome | None:
        """A source call runs once per transfer, restarts included, as a destination's does (ProgramHost): noted
        in the store (program_runs) before it runs; None: it is the first time, run it. Else its recorded outcome,
        or, if this agent stopped while it ran (a restart before the legs of a fan-out started), a failure."""
        first, recorded = self._ctx.store.claim_program_run(self._tid, when, self._ctx.name, time.time())
        if first:
            return None
        outcome = (ProgramOutcome.model_validate_json(recorded) if recorded else
                   interrupted(self._ctx, self._tid, when, call)).outcome_of()
        log.info("%s %s of transfer %s: ran before this agent restarted (%s), not run again",
                 pc.FLAG_OF.get(when, when), call.name, self._tid, outcome.outcome)
        return outcome

    async def before(self, session: SourceSession) -> list[Action]:
        """-presrc here, then -predst on the destination, when `session` is about to start (not after a
        restart of a transfer that had started): the session's actions to fail it if one failed. Nothing has
        moved then: the destination has not even been offered the transfer."""
        if self.failed_before is not None and session.state == TransferState.QUEUED:
            return session.fail(self.failed_before, time.monotonic())
        if not self.calls or session.state != TransferState.QUEUED:
            return []
        for when in ("pre_source", "pre_destination"):
            outcome = await self.run(when)
            if outcome is not None and not outcome.ok:
                return session.fail(pc.describe_failure(outcome), time.monotonic())
        return []

    async def after(self, state: TransferState, fields: dict[str, Any]) -> dict[str, Any]:
        """-postdst on the destination, then -postsrc here, when files arrived (the transfer ended complete or
        partial); the `completed` event's `fields` with their outcomes (and the pre- calls'): a failed one
        makes a success FAILED (40). The transfer's record takes the event's result and `state`."""
        self._rec.result_code, self._rec.state = fields["result_code"], state.value
        if not self.calls:
            return fields
        if state in (TransferState.COMPLETE, TransferState.PARTIAL):
            for when in ("post_destination", "post_source"):
                await self.run(when)
        failed = [o for o in self.outcomes if not o.ok and o.when.startswith("post_")]
        rc = pc.result_after_post(fields["result_code"], failed, results.FAILED)
        if rc != fields["result_code"]:
            fields.update(result_code=rc, result=results.describe(rc),
                          message="; ".join(pc.describe_failure(o) for o in failed))
        fields["programs"] = self.json()
        self._rec.result_code = fields["result_code"]
        return fields

    def answered(self, msg: ProgramDone) -> None:
        fut = self._answers.get(msg.when)
        if fut is not None and not fut.done():
            fut.set_result(msg.outcome)

    async def _remote(self, when: str, call: ProgramCall) -> pc.Outcome:
        """Ask the destination to run `call`, again every RESEND_RUN s, until it answers or the wait ends:
        as long as every attempt could take here, and two minutes more."""
        fut = self._answers[when] = asyncio.get_running_loop().create_future()
        run = ProgramRun(kind="program_run", transfer_id=self._tid, source_agent=self._ctx.name,
                         destination_agent=self._dest, when=when, call=call, job_name=self._job,  # type: ignore[arg-type]
                         destinations=self._destinations)
        payload = seal(run, None, self._ctx.identity)
        limit = (call.retry_count + 1) * (timeout_of(self._ctx) + call.retry_wait) + 120
        end = time.monotonic() + limit
        try:
            while time.monotonic() < end:
                if self._ctx.link_up():
                    try:
                        await self._ctx.publish(self._ctx.topics.control(self._dest, self._tid), payload, 1, False)
                    except ConnectionError:
                        pass
                try:
                    answer = await asyncio.wait_for(asyncio.shield(fut), min(RESEND_RUN, end - time.monotonic()))
                    return answer.outcome_of()
                except asyncio.TimeoutError:
                    continue
        finally:
            self._answers.pop(when, None)
        return pc.Outcome(when, call.name, "failure", args=list(call.args),
                          message=f"destination agent {self._dest} did not answer within {limit:g} s")

    def json(self) -> list[dict[str, Any]]:
        return [o.to_json() for o in self.outcomes]
