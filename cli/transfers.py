"""Transfer commands: fte-create-transfer (from flags, a template -tn or a request file -td; now or -ss
scheduled), fte-cancel-transfer, fte-logs."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from agent.core.statuses import AGENT_GONE, AGENT_RUNNING
from agent.wire.protocol import CancelTransfer, CreateTransfer, ListTransfers, TransferSpec, new_transfer_id, utc_now

from .app import BROKER_HELP, VERBOSE_HELP, command, err, fail, note_ignored, out, run
from .client import ClientError, FteClient, broker_url, new_request_id
from .safe_text import safe
from .transfer_request import (BANDWIDTH_HELP, DESTINATION_AGENT_HELP, DESTINATION_ENCODING_OPTION, LINE_ENDING_OPTION,
                               MODE_OPTION, PRIORITY_HELP, PROGRAM_HELP, SOURCE_ENCODING_OPTION, check_flags,
                               destinations_text, priority_and_bandwidth, program_calls, text_fields, transfer_spec,
                               with_programs)
from .transfer_ids import check_transfer_id, resolve_transfer_id


def optional_wait_value(argv: list[str]) -> list[str]:
    """`-w` takes an optional number (MFT style): a bare -w waits without limit (typer needs a value: -1)."""
    fixed: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-w", "--wait"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            try:
                float(nxt)  # type: ignore[arg-type]
                fixed += [a, nxt]  # type: ignore[list-item]
                i += 2
                continue
            except (TypeError, ValueError):
                fixed += [a, "-1"]
                i += 1
                continue
        fixed.append(a)
        i += 1
    return fixed


@command("create-transfer", argv_fix=optional_wait_value)
def create_transfer(
    ctx: typer.Context,
    sources: Optional[List[str]] = typer.Argument(
        None, help="Source file(s) or directories on the source agent (with -tn/-td: replace its sources)."),
    source_agent: Optional[str] = typer.Option(None, "-sa", "--source-agent",
                                               help="Source agent (required unless -tn or -td gives it)."),
    destination_agent: Optional[str] = typer.Option(None, "-da", "--destination-agent",
                                                    help=DESTINATION_AGENT_HELP + " Required unless -tn or -td "
                                                                                  "gives it."),
    dest_file: Optional[str] = typer.Option(None, "-df", "--destination-file", help="Destination file."),
    dest_dir: Optional[str] = typer.Option(None, "-dd", "--destination-directory", help="Destination directory."),
    exist: str = typer.Option("error", "-de", "--destination-exists", help="error | overwrite"),
    disposition: str = typer.Option("leave", "-sd", "--source-disposition", help="leave | delete (only on success)"),
    checksum: str = typer.Option("sha256", "-cs", "--checksum", help="sha256 | md5 | none"),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Recurse into source directories."),
    recovery_timeout: Optional[int] = typer.Option(
        None, "-rt", "--recovery-timeout",
        help="Seconds to keep recovering a stalled transfer: -1 forever, 0 fail at once. "
             "Overrides the source agent's transferRecoveryTimeout."),
    job_name: Optional[str] = typer.Option(None, "-jn", "--job-name", help="Job name, carried in the log."),
    metadata: List[str] = typer.Option([], "-md", "--metadata", help="key=value[,key=value] metadata."),
    template_name: Optional[str] = typer.Option(
        None, "-tn", "--template-name",
        help="Submit this template (fte-create-template): flags given here override its values, sources given "
             "here replace its sources."),
    generate: Optional[Path] = typer.Option(
        None, "-gt", "--generate-transfer",
        help="Write the transfer request (JSON) to this file instead of submitting it; submit it with -td."),
    definition: Optional[Path] = typer.Option(
        None, "-td", "--transfer-definition",
        help="Submit the transfer request in this file (from -gt; a template's JSON also works); flags given "
             "here override its values."),
    wait: Optional[float] = typer.Option(None, "-w", "--wait",
                                         help="Wait for the outcome (optionally at most SECONDS); exit code = "
                                              "result code (0, 20, 40, 41, 69; a fan-out: 0 when every "
                                              "destination succeeded, 20 some, 40 none), 2 if the wait ran out."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the agent to accept the request."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help=VERBOSE_HELP),
    schedule_start: Optional[str] = typer.Option(
        None, "-ss", "--schedule-start", help="Run at this time (YYYY-MM-DDThh:mm) instead of now: a scheduled "
                                              "transfer, kept by the source agent across restarts."),
    time_base: str = typer.Option("admin", "-tb", "--time-base",
                                  help="admin: -ss/-es are this machine's local time; source: the agent's."),
    occurrence_interval: Optional[str] = typer.Option(
        None, "-oi", "--occurrence-interval", help="Repeat every minutes|hours|days|weeks|months|years."),
    occurrence_frequency: int = typer.Option(1, "-of", "--occurrence-frequency", help="Repeat every N intervals."),
    occurrence_count: Optional[int] = typer.Option(None, "-oc", "--occurrence-count",
                                                   help="Run N times in all (not with -es)."),
    end_schedule: Optional[str] = typer.Option(None, "-es", "--end-schedule",
                                               help="No run after this time (YYYY-MM-DDThh:mm; not with -oc)."),
    mode: Optional[str] = MODE_OPTION,
    source_encoding: Optional[str] = SOURCE_ENCODING_OPTION,
    destination_encoding: Optional[str] = DESTINATION_ENCODING_OPTION,
    destination_line_ending: Optional[str] = LINE_ENDING_OPTION,
    presrc: Optional[str] = typer.Option(None, "-presrc", "--pre-source-call", help=PROGRAM_HELP["-presrc"]),
    postsrc: Optional[str] = typer.Option(None, "-postsrc", "--post-source-call", help=PROGRAM_HELP["-postsrc"]),
    predst: Optional[str] = typer.Option(None, "-predst", "--pre-destination-call", help=PROGRAM_HELP["-predst"]),
    postdst: Optional[str] = typer.Option(None, "-postdst", "--post-destination-call",
                                          help=PROGRAM_HELP["-postdst"]),
    priority: Optional[int] = typer.Option(None, "-pr", "--priority", help=PRIORITY_HELP),
    bandwidth: Optional[str] = typer.Option(None, "--bandwidth", metavar="RATE", help=BANDWIDTH_HELP),
    trigger: Optional[str] = typer.Option(
        None, "-tr", "--trigger",
        help="Run only if this holds on the source agent, else end with result 42: file=exist,PATH[,PATH...] | "
             "file!=exist,PATH[,...] | filesize>=SIZE,PATH[,...] (SIZE: B, KB, MB, GB)."),
) -> None:
    """Transfer files from the source agent to the destination agent (MFT's fteCreateTransfer).

    With -tn TEMPLATE or -td FILE the transfer comes from a template or a request file, and the flags and
    sources given here override it; with -gt FILE it is written to FILE instead of being submitted."""
    from . import templates

    if template_name is None and definition is None:
        # everything from the command line: sources, -sa and -da are required (a usage error, exit 2)
        for param_name, present in (("sources", bool(sources)), ("source_agent", source_agent is not None),
                                    ("destination_agent", destination_agent is not None)):
            if not present:
                param = next(p for p in ctx.command.params if p.name == param_name)
                errors = sys.modules[typer.BadParameter.__module__]
                if param_name == "sources":
                    raise errors.UsageError("Missing argument 'sources'.", ctx=ctx)
                raise errors.MissingParameter(ctx=ctx, param=param)
        assert sources and source_agent and destination_agent
        if (dest_file is None) == (dest_dir is None):
            fail("give exactly one destination: -df FILE or -dd DIRECTORY")
    elif template_name is not None and definition is not None:
        fail("give -tn TEMPLATE or -td FILE, not both")
    check_flags(exist, disposition, checksum, recovery_timeout)
    text_fields(mode, source_encoding, destination_encoding, destination_line_ending)
    calls = program_calls(presrc, postsrc, predst, postdst)
    priority_and_bandwidth(priority, bandwidth)
    if generate is not None and wait is not None:
        fail("-w has no meaning with -gt: the request is written to a file, not submitted")
    if template_name is None and definition is None:
        assert sources and source_agent and destination_agent
        spec = transfer_spec(source_agent, destination_agent, sources, dest_file, dest_dir, exist, disposition,
                             checksum, recursive, recovery_timeout, job_name, metadata, mode, source_encoding,
                             destination_encoding, destination_line_ending, priority, bandwidth, trigger=trigger)
    else:
        try:
            overrides = templates.overrides_from(
                ctx, sources=sources, source_agent=source_agent, destination_agent=destination_agent,
                dest_file=dest_file, dest_dir=dest_dir, exist=exist, disposition=disposition, checksum=checksum,
                recursive=recursive, recovery_timeout=recovery_timeout, job_name=job_name, metadata=metadata,
                mode=mode, source_encoding=source_encoding, destination_encoding=destination_encoding,
                destination_line_ending=destination_line_ending, priority=priority, bandwidth=bandwidth,
                trigger=trigger)
            creator: Optional[str] = None
            if definition is not None:
                _, base, label = templates.read_definition_file(definition)
            else:
                assert template_name is not None
                templates.validate_template_name(template_name)
                fetched, creator = run(templates.fetch_template(broker_url(broker, source_agent), template_name))
                base, label = fetched.spec, f"template {template_name}"
            spec = templates.merge(base, overrides, label)
        except templates.RequestFileError as exc:
            fail(exc.line(), exc.code)
    spec = with_programs(spec, calls)
    if generate is not None:
        try:
            path = templates.write_request_file(generate, spec)
        except templates.RequestFileError as exc:
            fail(exc.line(), exc.code)
        if as_json:
            out.print(json.dumps({"request_file": str(path), **templates.request_document(spec)}), markup=False,
                      emoji=False)
        else:
            out.print(f"Wrote the transfer request ({spec.source_agent} -> {destinations_text(spec)}, "
                      f"{len(spec.items)} source(s)) to {path}; submit it with: fte-create-transfer -td {path}",
                      markup=False, emoji=False)
        raise typer.Exit(0)
    if template_name is not None or definition is not None:
        # what you sign is what runs: say where the files go from and to before anything is sent
        err.print(templates.submission_line(spec, label, creator), markup=False, emoji=False)
    if schedule_start is None and (occurrence_frequency != 1 or time_base != "admin"):
        fail("-of and -tb describe a schedule: give its start with -ss YYYY-MM-DDThh:mm")
    if schedule_start is not None:
        from .schedules import schedule_spec, submit_schedule

        if wait is not None:
            fail("-w has no meaning with -ss: the transfer runs later; watch it with fte-logs --follow")
        sched = schedule_spec(schedule_start, time_base, occurrence_interval, occurrence_frequency,
                              occurrence_count, end_schedule)
        data = run(submit_schedule(broker_url(broker, spec.source_agent), spec, sched))
        if as_json:
            out.print(json.dumps(data), markup=False)
        else:
            out.print(safe(f"Scheduled transfer {data['schedule_id']} on agent {spec.source_agent}: first run at "
                           f"{data['next_run']}. List with fte-list-scheduled-transfers."), markup=False)
        raise typer.Exit(0)
    elif any(v is not None for v in (occurrence_interval, occurrence_count, end_schedule)):
        fail("-oi, -oc and -es describe a schedule: give its start with -ss YYYY-MM-DDThh:mm")
    tid = new_transfer_id()
    code = run(_submit_and_wait(spec, tid, wait, as_json, broker_url(broker, spec.source_agent), timeout, verbose))
    raise typer.Exit(code)


async def _submit_and_wait(spec: TransferSpec, tid: str, wait: Optional[float], as_json: bool, url: str,
                           timeout: float, verbose: bool = False) -> int:
    async with FteClient(url, on_ignored=note_ignored(verbose)) as c:
        st = await c.require_agent(spec.source_agent)
        if st.verified and st.status in AGENT_GONE:  # else the (signed) reply will tell
            raise ClientError(f"agent {spec.source_agent} is {st.status}; start it with "
                              f"fte-start-agent {spec.source_agent}")
        watcher = None
        if wait is not None:  # the events' rendering only to watch (docs/development.md, "Start-up cost")
            from .render import TransferWatcher

            watcher = TransferWatcher(c, spec.source_agent, tid, show_progress=not as_json and out.is_terminal,
                                      console=out)
            await watcher.subscribe()
        cmd = CreateTransfer(kind="create_transfer", request_id=new_request_id(), reply_to=c.client_id,
                             sent_at=utc_now(), transfer_id=tid, spec=spec)
        reply = await c.request(spec.source_agent, cmd, timeout=timeout)
        if not reply.ok:
            raise ClientError(f"agent {spec.source_agent} refused the transfer: {reply.message}",
                              reply.result_code or 1)
        not_met = reply.data.get("trigger_not_met")
        if wait is None:
            if not_met and not as_json:  # submitted, and ended at once: the exit code says "submitted", as MFT's
                out.print(safe(f"Transfer {tid} not started (result 42): {not_met}"), markup=False)
                return 0
            if as_json:
                out.print(json.dumps({"transfer_id": tid, "state": "submitted", **reply.data}), markup=False)
            else:
                out.print(safe(f"Transfer {tid} submitted to agent {spec.source_agent} "
                               f"({reply.data.get('files')} file(s), {reply.data.get('bytes')} bytes)."), markup=False)
            return 0
        if not as_json and not not_met:
            left_out = reply.data.get("left_out")  # what the walk of the sources left out (links, FIFOs)
            out.print(safe(f"Transfer {tid} started: {reply.data.get('files')} file(s), "
                           f"{reply.data.get('bytes')} bytes" + (f"; {left_out}." if left_out else ".")),
                      markup=False)
        assert watcher is not None
        final = await watcher.wait(None if wait < 0 else wait)
        if final is None:
            if as_json:
                out.print(json.dumps({"transfer_id": tid, "state": "waiting", "result_code": 2}), markup=False)
            else:
                err.print(f"Transfer {tid} has not finished within {wait:g} s; it goes on "
                          f"(watch it with: fte-logs --follow --transfer {tid})")
            return 2
        rc = int(final.get("result_code", 40))
        if as_json:
            out.print(json.dumps(outcome_json(tid, final, rc)), markup=False)
        else:
            from .render import destination_lines, format_event

            out.print(format_event(final), markup=False)
            for line in destination_lines(final):  # a fan-out: each destination's outcome, one line each
                out.print(line, markup=False)
        return rc


def outcome_json(tid: str, final: dict[str, Any], rc: int) -> dict[str, Any]:
    """-w --json's object: the outcome of the transfer, and each destination's of a fan-out (`destinations`)."""
    return {"transfer_id": tid, "state": final.get("state"), "result_code": rc, "files": final.get("files"),
            "message": final.get("message"), **({"encryption": final["encryption"]} if final.get("encryption") else {}),
            **({"programs": final["programs"]} if final.get("programs") else {}),
            **({"destinations": final["destinations"]} if final.get("destinations") else {})}


@command("cancel-transfer")
def cancel_transfer(
    transfer_id: str = typer.Argument(..., help="The transfer id, or its first 8 or more characters."),
    agent: str = typer.Option(..., "-a", "--agent", help="The source or destination agent of the transfer."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the agent."),
) -> None:
    """Cancel a transfer in any state (recovering included); its part files are removed."""
    check_transfer_id(transfer_id)

    async def go() -> Any:
        nonlocal transfer_id
        async with FteClient(broker_url(broker, agent)) as c:
            transfer_id = await resolve_transfer_id(c, transfer_id, agent)
            return await c.request(agent, CancelTransfer(kind="cancel_transfer", request_id=new_request_id(),
                                                         reply_to=c.client_id, transfer_id=transfer_id),
                                   timeout=timeout)

    reply = run(go())
    if not reply.ok:
        fail(reply.message, reply.result_code or 1)
    out.print(safe(f"Cancel of transfer {transfer_id} accepted by {agent} ({reply.data.get('state')})."), markup=False)


@command("logs")
def logs(
    agent: Optional[str] = typer.Option(None, "-a", "--agent", help="Only this agent's events."),
    transfer: Optional[str] = typer.Option(None, "-t", "--transfer",
                                           help="Only this transfer's events (its id, or the first 8 or more "
                                                "characters of it)."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing events as they happen."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    verbose: bool = typer.Option(False, "-v", "--verbose", help=VERBOSE_HELP),
) -> None:
    """Show transfers known to the agents, or (--follow) every transfer log event live.

    Only events signed by the agent that published them (a key this client trusts) are shown."""
    if transfer is not None:
        check_transfer_id(transfer)
    run(_logs(agent, transfer, follow, as_json, broker_url(broker, agent), verbose))


async def _logs(agent: Optional[str], transfer: Optional[str], follow: bool, as_json: bool, url: str,
                verbose: bool = False) -> None:
    from .render import format_event, route_of

    async with FteClient(url, on_ignored=note_ignored(verbose)) as c:
        if transfer is not None:
            transfer = await resolve_transfer_id(c, transfer, agent)
        if not follow:
            statuses = await c.agent_statuses(settle=0.5)
            names = [agent] if agent else sorted(n for n, s in statuses.items() if s.status in AGENT_RUNNING)
            rows = []
            for n in names:
                try:
                    r = await c.request(n, ListTransfers(kind="list_transfers", request_id=new_request_id(),
                                                         reply_to=c.client_id), timeout=5)
                    rows += [t for t in r.data.get("transfers", []) if not transfer or t["transfer_id"] == transfer]
                except ClientError as exc:
                    err.print(f"warning: {safe(exc)}", markup=False)
            for t in rows:
                if as_json:
                    out.print(json.dumps(t), soft_wrap=True, markup=False)
                else:
                    out.print(safe(f"{t['transfer_id']} {t['role']:11} {t['state']:18} "
                                   f"{route_of(t)} "
                                   f"{t.get('bytes_done')}/{t.get('bytes_total')} bytes"
                                   + (f" result {t['result_code']}" if t.get("result_code") is not None else "")),
                              soft_wrap=True, markup=False)
            if not rows:
                out.print("No transfers. Watch live events with: fte-logs --follow")
            return
        # without a transfer filter: monitor events too (Log/<agent>/Monitors/<name>)
        q = await c.subscribe(c.topics.log_filter(agent, transfer) if transfer
                              else c.topics.every_event(agent))
        from .client import RecentEvents
        recent = RecentEvents()
        while True:
            get = asyncio.ensure_future(q.get())
            gone = asyncio.ensure_future(c.disconnected.wait())
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                gone.cancel()
                ev = c.event_of(get.result())  # None for anything its agent did not sign
                if ev is None or not recent.first_time(ev):
                    continue
                out.print(json.dumps(ev) if as_json else format_event(ev), soft_wrap=True, markup=False)
            else:
                get.cancel()
                err.print("lost the broker; reconnecting ...")
                await c.reconnect()
                err.print("reconnected")
