"""Scheduled transfers: fte-create-transfer -ss ..., fte-list-scheduled-transfers, fte-delete-scheduled-transfer."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import typer

from agent.wire.protocol import TransferSpec
from agent.scheduler import CreateSchedule, DeleteSchedule, ScheduleSpec

from .app import BROKER_HELP, command, fail, out, print_listing, run
from .client import ClientError, FteClient, broker_url, new_request_id


def schedule_spec(start: str, time_base: str, interval: Optional[str], frequency: int, count: Optional[int],
                  end: Optional[str]) -> ScheduleSpec:
    """-ss/-tb/-oi/-of/-oc/-es as the agent wants them. With -tb admin (the default) the times are this
    machine's local time and travel with their UTC offset; with -tb source the agent's local time applies."""
    def convert(text: str, flag: str) -> str:
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            raise ClientError(f"{flag} {text!r} is not a time of the form YYYY-MM-DDThh:mm") from None
        if time_base == "admin" and t.tzinfo is None:
            t = t.astimezone()
        return t.isoformat()

    if time_base not in ("admin", "source"):
        raise ClientError(f"-tb {time_base!r} is not admin or source")
    if count is not None and end is not None:
        raise ClientError("give -oc (a number of occurrences) or -es (an end time), not both")
    if (count is not None or end is not None or frequency != 1) and interval is None:
        raise ClientError("-of, -oc and -es need a repeating schedule: give -oi minutes|hours|days|weeks|months|years")
    try:
        return ScheduleSpec(start=convert(start, "-ss"), time_base=time_base, interval=interval, frequency=frequency,
                            count=count, end=convert(end, "-es") if end else None)
    except ValueError as exc:
        # name the flag and the reason: the first line of a pydantic error is only
        # "1 validation error for ScheduleSpec" (e.g. for -oi fortnights or -of 0)
        from pydantic import ValidationError

        if isinstance(exc, ValidationError) and exc.errors():
            e = exc.errors()[0]
            flag = {"interval": "-oi", "frequency": "-of", "count": "-oc", "start": "-ss", "end": "-es",
                    "time_base": "-tb"}.get(str(e["loc"][0]) if e["loc"] else "", "schedule")
            raise ClientError(f"invalid schedule: {flag} {e.get('input')!r}: {e['msg']}") from None
        raise ClientError(f"invalid schedule: {str(exc).splitlines()[0]}") from None


async def submit_schedule(url: str, spec: TransferSpec, schedule: ScheduleSpec) -> dict[str, Any]:
    async with FteClient(url) as c:
        await c.require_agent(spec.source_agent)
        reply = await c.request(spec.source_agent, CreateSchedule(
            kind="create_schedule", request_id=new_request_id(), reply_to=c.client_id, schedule=schedule, spec=spec))
    if not reply.ok:
        raise ClientError(f"agent {spec.source_agent} refused the schedule: {reply.message}", reply.result_code or 1)
    return reply.data


@command("list-scheduled-transfers")
def list_scheduled(
    agent: Optional[str] = typer.Option(None, "-a", "--agent", help="Only this source agent's schedules."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
) -> None:
    """List scheduled transfers as their source agents report them (each agent's retained view, on
    Scheduler/<agent>, of the schedules in its own state store, which is what runs)."""
    def line(r: dict[str, Any]) -> str:
        sc, sp = r["schedule"], r["spec"]
        every = f"every {sc['frequency']} {sc['interval']}" if sc.get("interval") else "once"
        files = ", ".join(i["source"] for i in sp["items"])
        return (f"{r['schedule_id']} {r['agent']:10} next {r['next_run']}  {every}  "
                f"{files} -> {','.join(sp.get('destination_agents') or [sp['destination_agent']])}  "
                f"(runs so far: {r['runs']})  "
                f"by {r.get('requester') or '(unknown)'}")

    print_listing(run(_retained(broker, agent)), as_json, "No scheduled transfers.", line)


@command("delete-scheduled-transfer")
def delete_scheduled(
    schedule_id: str = typer.Argument(..., help="The schedule id (fte-list-scheduled-transfers)."),
    agent: str = typer.Option(..., "-a", "--agent", help="The schedule's source agent."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
) -> None:
    """Delete a scheduled transfer."""
    async def go() -> Any:
        async with FteClient(broker_url(broker, agent)) as c:
            await c.require_agent(agent)
            return await c.request(agent, DeleteSchedule(kind="delete_schedule", request_id=new_request_id(),
                                                         reply_to=c.client_id, schedule_id=schedule_id))
    try:
        DeleteSchedule(kind="delete_schedule", request_id="x", schedule_id=schedule_id)
    except ValueError:
        fail(f"{schedule_id!r} is not a schedule id (16 hex characters, from fte-list-scheduled-transfers)")
    reply = run(go())
    if not reply.ok:
        fail(reply.message, reply.result_code or 1)
    out.print(f"Schedule {schedule_id} deleted from agent {agent}.")


async def _retained(broker: Optional[str], agent: Optional[str]) -> list[dict[str, Any]]:
    async with FteClient(broker_url(broker, agent)) as c:
        rows: list[dict[str, Any]] = []
        for data in await c.retained_json(c.topics.schedules(agent)):
            rows += [dict(r, agent=data.get("agent")) for r in data.get("schedules", [])]
        return rows
