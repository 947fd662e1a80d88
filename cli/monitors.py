"""Resource monitor commands: fte-create-monitor, fte-list-monitors, fte-delete/stop/start-monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from agent.core.program_call import ProgramCallError
from agent.monitor import CreateMonitor, MonitorCommand, MonitorSpec
from agent.wire.programs import ProgramCall

from .app import BROKER_HELP, command, fail, out, print_listing, run
from .client import FteClient, broker_url, new_request_id
from .safe_text import safe
from .transfer_request import (BANDWIDTH_HELP, DESTINATION_AGENT_HELP, PRIORITY_HELP, PROGRAM_HELP, TEXT_HELP,
                               program_calls, transfer_spec, with_programs)


@command("create-monitor")
def create_monitor(
    agent: str = typer.Option(..., "-ma", "--monitor-agent", help="The agent that monitors (and is the source)."),
    name: str = typer.Option(..., "-mn", "--monitor-name", help="Monitor name (unique per agent)."),
    directory: str = typer.Option(..., "-md", "--monitor-directory", help="Directory to watch (in the sandbox)."),
    trigger: str = typer.Option(..., "-tr", "--trigger",
                                help="match,PATTERN | noMatch,PATTERN | noSizeChange=N,PATTERN | "
                                     "fileSize>=SIZE[KB|MB|GB],PATTERN"),
    poll_interval: int = typer.Option(1, "-pi", "--poll-interval", help="Poll every N units."),
    poll_unit: str = typer.Option("minutes", "-pu", "--poll-unit", help="seconds | minutes | hours | days"),
    batch: int = typer.Option(1, "-bs", "--batch-size", help="Files combined into one transfer at most."),
    recursion: int = typer.Option(0, "-rl", "--recursion-level", help="Subdirectory levels to watch."),
    include: Optional[str] = typer.Option(None, "-x", "--include", help="Only file names matching this."),
    exclude: Optional[str] = typer.Option(None, "-ex", "--exclude", help="Never file names matching this."),
    task_file: Optional[Path] = typer.Option(None, "-mt", "--task-file",
                                             help="Transfer request file (fte-create-transfer -gt) as the task."),
    destination_agent: Optional[str] = typer.Option(None, "-da", help="Task: d" + DESTINATION_AGENT_HELP[1:]),
    dest_file: Optional[str] = typer.Option(None, "-df", help="Task: destination file, e.g. '/in/${FileName}'."),
    dest_dir: Optional[str] = typer.Option(None, "-dd", help="Task: destination directory."),
    exist: str = typer.Option("error", "-de", help="Task: error | overwrite."),
    disposition: str = typer.Option("leave", "-sd", help="Task: leave | delete (after success)."),
    checksum: str = typer.Option("sha256", "-cs", help="Task: sha256 | md5 | none."),
    recovery_timeout: Optional[int] = typer.Option(None, "-rt", help="Task: recovery timeout in seconds."),
    job_name: Optional[str] = typer.Option(None, "-jn", help="Task: job name."),
    sources: List[str] = typer.Argument(None, help="Task sources (default: ${FilePath}, the file that fired)."),
    force: bool = typer.Option(False, "-f", "--force", help="Replace a monitor of the same name."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    mode: Optional[str] = typer.Option(None, "-t", help="Task: " + TEXT_HELP["-t"].removeprefix("Text: ")),
    source_encoding: Optional[str] = typer.Option(None, "-sce", help="Task: " + TEXT_HELP["-sce"].removeprefix("Text: ")),
    destination_encoding: Optional[str] = typer.Option(None, "-dce", help="Task: " + TEXT_HELP["-dce"].removeprefix("Text: ")),
    destination_line_ending: Optional[str] = typer.Option(None, "-dle", help="Task: " + TEXT_HELP["-dle"].removeprefix("Text: ")),
    presrc: Optional[str] = typer.Option(None, "-presrc", help="Task: " + PROGRAM_HELP["-presrc"]),
    postsrc: Optional[str] = typer.Option(None, "-postsrc", help="Task: " + PROGRAM_HELP["-postsrc"]),
    predst: Optional[str] = typer.Option(None, "-predst", help="Task: " + PROGRAM_HELP["-predst"]),
    postdst: Optional[str] = typer.Option(None, "-postdst", help="Task: " + PROGRAM_HELP["-postdst"]),
    command_task: Optional[str] = typer.Option(
        None, "-mc", "--monitor-command",
        help="The task is this program call instead of a transfer (the reference's command task), run on the "
             "monitoring agent once per file that fired, ${...} variables substituted in its arguments: "
             "NAME[(arg1,arg2)][,retrycount[,retrywait[,successrc]]], NAME in the agent's commandPath."),
    priority: Optional[int] = typer.Option(None, "-pr", "--priority", help="Task: " + PRIORITY_HELP),
    bandwidth: Optional[str] = typer.Option(None, "--bandwidth", metavar="RATE", help="Task: " + BANDWIDTH_HELP),
) -> None:
    """Watch a directory and start a transfer (or run a command) when a trigger fires (MFT's fteCreateMonitor)."""
    from agent.core.triggers import TriggerError, poll_seconds

    try:
        seconds = poll_seconds(poll_interval, poll_unit)
    except TriggerError as exc:
        fail(str(exc))
    calls = program_calls(presrc, postsrc, predst, postdst)
    command_call: Any = None
    task: Any = None
    if command_task is not None:
        if task_file is not None or destination_agent or dest_file or dest_dir or calls is not None:
            fail("-mc runs a command as the task: give no transfer task with it (-mt, -da, -df/-dd, -presrc ...)")
        try:
            command_call = ProgramCall.parse(command_task, "-mc")
        except ProgramCallError as exc:
            fail(str(exc), 103)
    elif task_file is not None:
        if destination_agent or dest_file or dest_dir:
            fail("give the task either with -mt FILE or with inline flags (-da -df/-dd ...), not both")
        if calls is not None:
            fail("-presrc/-postsrc/-predst/-postdst with -mt: put them in the task file (fte-create-transfer -gt "
                 "FILE -presrc ...)")
        try:
            from .templates import load_request_file

            task = load_request_file(task_file)["spec"]
        except Exception as exc:
            fail(f"task file {task_file}: {exc}", 103)
    else:
        if not destination_agent or (dest_file is None) == (dest_dir is None):
            fail("give the task: -da AGENT and one of -df FILE / -dd DIR (or -mt TASKFILE)")
        # the flags' checks and words of fte-create-transfer (a bad -rt or -de is one line, not a traceback)
        task = transfer_spec(agent, destination_agent, sources or ["${FilePath}"], dest_file, dest_dir, exist,
                             disposition, checksum, recovery_timeout=recovery_timeout,
                             job_name=job_name, mode=mode, source_encoding=source_encoding,
                             destination_encoding=destination_encoding,
                             destination_line_ending=destination_line_ending, priority=priority, bandwidth=bandwidth)
        task = with_programs(task, calls).model_dump()
    try:
        spec = MonitorSpec(name=name, agent=agent, directory=directory, trigger=trigger, poll_seconds=seconds,
                           batch_size=batch, recursion=recursion, include=include, exclude=exclude, task=task,
                           command=command_call)
    except Exception as exc:
        # say which flag is wrong and why: the first lines of a pydantic error named only the field
        # ("1 validation error for MonitorSpec ['trigger']"), never the reason
        from pydantic import ValidationError

        if isinstance(exc, ValidationError) and exc.errors():
            e = exc.errors()[0]
            where = ".".join(str(x) for x in e["loc"]) or "monitor"
            fail(f"invalid monitor: {where}: {e['msg'].removeprefix('Value error, ')}", 102)
        fail(f"invalid monitor: {str(exc).splitlines()[0]}", 102)
    reply = run(_request(broker, agent, CreateMonitor(kind="create_monitor", request_id=new_request_id(),
                                                      monitor=spec, replace=force)))
    if not reply.ok:
        fail(reply.message, reply.result_code or 1)
    out.print(safe(f"Monitor {name} created on agent {agent}: {trigger} in {directory}, every {seconds} s."),
              markup=False)

def _monitor_switch(verb: str, kind: str, doc: str) -> None:
    """delete-monitor, stop-monitor, start-monitor: the same flags, one request each."""
    def switch(
        agent: str = typer.Option(..., "-ma", "--monitor-agent", help="The monitor's agent."),
        name: str = typer.Option(..., "-mn", "--monitor-name", help="Monitor name."),
        broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    ) -> None:
        reply = run(_request(broker, agent, MonitorCommand(kind=kind, request_id=new_request_id(), name=name)))
        if not reply.ok:
            fail(reply.message, reply.result_code or 1)
        out.print(safe(f"Monitor {name} on agent {agent}: {reply.data.get('state')}."), markup=False)
    switch.__doc__ = doc  # before registering: typer reads the help from the registered function
    command(verb)(switch)


_monitor_switch("delete-monitor", "delete_monitor", "Delete a monitor.")
_monitor_switch("stop-monitor", "stop_monitor", "Stop a monitor (its agent keeps running).")
_monitor_switch("start-monitor", "start_monitor", "Start a stopped monitor.")


@command("list-monitors")
def list_monitors(
    agent: Optional[str] = typer.Option(None, "-ma", "--monitor-agent", help="Only this agent's monitors."),
    name: Optional[str] = typer.Option(None, "-mn", "--monitor-name", help="Only this monitor."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Trigger, directory and task."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
) -> None:
    """List monitors as their agents report them (each agent's retained view of the monitors in its own state
    store; a monitor runs from that store, never from what is on the broker)."""
    def line(m: dict[str, Any]) -> str:
        text = f"{m['agent']:12} {m['name']:24} {m['state']}  by {m.get('requester') or '(unknown)'}"
        if verbose:
            sp = m["spec"]
            task = sp.get("task")
            if task is None:  # a command task
                target = f"command {(sp.get('command') or {}).get('name')}"
            else:
                agents = ",".join(task.get("destination_agents") or [task["destination_agent"]])  # a fan-out: all
                target = f"{agents}:" + ", ".join(i["destination"] for i in task["items"])
            text += f"  {sp['trigger']} in {sp['directory']} every {sp['poll_seconds']} s -> {target}"
        return text

    print_listing(run(_retained_monitors(broker, agent, name)), as_json, "No monitors.", line)


async def _request(broker: Optional[str], agent: str, cmd: Any) -> Any:
    async with FteClient(broker_url(broker, agent)) as c:
        await c.require_agent(agent)
        return await c.request(agent, cmd.model_copy(update={"reply_to": c.client_id}))


async def _retained_monitors(broker: Optional[str], agent: Optional[str], name: Optional[str]) -> list[dict]:
    async with FteClient(broker_url(broker, agent)) as c:
        rows = await c.retained_json(c.topics.monitors(agent, name))
        # the agent republishes a monitor's view as it polls: a listing may read two views of one monitor;
        # keep the one with the most polls (the latest)
        latest: dict[tuple[str, str], dict] = {}  # type: ignore[type-arg]
        for r in rows:
            key = (r.get("agent", ""), r.get("name", ""))
            if key not in latest or (r.get("polls") or 0) >= (latest[key].get("polls") or 0):
                latest[key] = r
        return [latest[k] for k in sorted(latest)]

