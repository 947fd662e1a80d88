"""Agent commands: fte-create-agent, -start-agent, -stop-agent, -list-agents, -show-agent-details,
-ping-agent, -clean-agent (an agent's configuration, its process on this machine, its status on the broker)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from agent.core.statuses import AgentState
from agent.wire.protocol import Ping, StopAgent

from .agent_process import run_in_foreground, running_pid, start_background
from .app import BROKER_HELP, VERBOSE_HELP, command, err, fail, note, note_ignored, out, run
from .client import ClientError, FteClient, NoAnswer, broker_url, new_request_id
from .safe_text import safe, safe_text, status_text, status_when


@command("create-agent")
def create_agent(
    agent_name: str = typer.Option(..., "-agentName", "--agent-name", help="Name of the new agent (e.g. A1)."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    sandbox: Optional[str] = typer.Option(None, "--sandbox",
                                          help="sandboxRoot: directories the agent may use, ':'-separated; "
                                               "'!DIR' excludes. Default: your home directory."),
    force: bool = typer.Option(False, "-f", "--force", help="Overwrite an existing agent.properties."),
    topic_prefix: Optional[str] = typer.Option(
        None, "--topic-prefix", help="topicPrefix (default SYSTEM.FTE; brokers that map '.' in topics, such as "
                                     "NATS and RabbitMQ, need one without '.', e.g. SYSTEM_FTE)."),
) -> None:
    """Create an agent's configuration: $FTE_CONFIG_HOME/agents/NAME/agent.properties."""
    from agent.settings import (SettingsError, default_sandbox, load_agent_settings, properties_path,
                                validate_agent_name, write_agent_properties)

    try:
        validate_agent_name(agent_name)
    except ValueError as exc:
        fail(str(exc))
    from agent.auth import check_requester_name, ensure_key, public_text, requester_name, trust
    from agent.settings import config_home

    me = requester_name()
    try:
        check_requester_name(me)  # before anything is written
    except ValueError as exc:
        fail(f"{exc} (set FTE_REQUESTER)")
    path = properties_path(agent_name)
    values = {"agentName": agent_name, "brokerUrl": broker_url(broker), "sandboxRoot": sandbox or default_sandbox(),
              "authorityChecking": "true"}
    prefix = topic_prefix or os.environ.get("FTE_TOPIC_PREFIX")
    if prefix:
        values["topicPrefix"] = prefix
    from agent.atomic_files import locked

    try:
        write_agent_properties(path, values, force=force)
        load_agent_settings(agent_name)
        # commands from this user (same FTE_CONFIG_HOME) work at once: their key is created and trusted.
        # One fte-create-agent at a time past this point: two run at once would each make their key before
        # the other looked for it, and neither would trust the other.
        with locked(config_home()):
            key = ensure_key(config_home(), me)
            trust(path.parent, me, public_text(key.public_key()), "all")
            _trust_neighbours(path.parent)
    except FileExistsError:
        fail(f"agent {agent_name} already exists ({path}); use --force to overwrite it")
    except SettingsError as exc:
        path.unlink(missing_ok=True)
        fail(str(exc))
    out.print(f"Created agent {agent_name}: {path}")
    out.print(f"It obeys commands signed by {me} (your key in {config_home() / 'keys'}); "
              f"trust others with: fte key trust {agent_name} NAME PUBLIC_KEY")
    out.print(f"Start it with: fte-start-agent {agent_name}")
    try:
        # made before its directories is fine (a deployment may create them later), but say it now: the
        # agent refuses to start until they exist, and that is where the user would first hear of it
        load_agent_settings(agent_name, require_directories=True)
    except SettingsError as exc:
        err.print(f"warning: {safe(str(exc))}; fte-start-agent {agent_name} refuses to start until then",
                  markup=False, soft_wrap=True)


def _trust_neighbours(agent_home: Path) -> None:
    """Agents configured in the same FTE_CONFIG_HOME trust each other's identity keys for transfers."""
    from agent.auth import public_text, trust
    from agent.wire.binding import agent_requester, load_or_create_agent_key

    mine = public_text(load_or_create_agent_key(agent_home).public_key())
    for other in sorted(agent_home.parent.iterdir()):
        if other == agent_home or not (other / "agent.key").exists():
            continue
        theirs = public_text(load_or_create_agent_key(other).public_key())
        trust(other, agent_requester(agent_home.name), mine, "transfer")
        trust(agent_home, agent_requester(other.name), theirs, "transfer")


@command("start-agent")
def start_agent(
    name: str = typer.Argument(..., help="Agent name."),
    foreground: bool = typer.Option(False, "-F", "--foreground", help="Run in the foreground (logs to stderr)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging."),
) -> None:
    """Start an agent (in the background unless -F)."""
    from agent.settings import SettingsError, agent_dir, load_agent_settings

    try:
        settings = load_agent_settings(name, require_directories=True)
    except SettingsError as exc:
        fail(str(exc))
    pid = running_pid(name)
    if pid is not None and pid != os.getpid():
        fail(f"agent {name} is already running (pid {pid}); stop it with fte-stop-agent {name}")
    if not foreground:
        start_background(name, agent_dir(name))
        return
    run_in_foreground(name, settings, verbose)


class StopRefused(ClientError):
    """The agent answered and refused to stop (as opposed to: no broker, no answer)."""


async def _no_stop_answer(c: FteClient, name: str, wait: float) -> str:
    """What the client knows of an agent that did not answer its stop: its last status on the broker (verified
    or not) and when it was published, or that the broker has none; never "start it", for a stop."""
    head = f"agent {name} did not answer within {wait:g} s"
    st = await c.agent_status(name)
    invalid = c.invalid_status_text(name) if st is None else None
    if invalid is not None:
        return f"{head}; {invalid}"
    if st is None:
        return (f"{head}; no agent of that name has a status on {c.topics.agent_status(name)} at {c.addr.url} "
                f"(unknown agent: check the name with fte-list-agents)")
    last = (f"its last status (verified) is {st.status}" if st.verified else
            f"its last status is {st.status}, but unverified (not signed by a key of agent {name} trusted here; "
            f"-v on fte-show-agent-details {name} says why)")
    heard = (await c.last_heard([name])).get(name) if st.status == AgentState.UNREACHABLE else None
    last += f", {status_when(st, heard)}"
    if st.status == AgentState.STOPPED:
        return f"{head}; {last}: it is not running, nothing to stop"
    if st.status == AgentState.UNREACHABLE:
        return (f"{head}; {last}: it lost the broker without stopping (killed, or its host or network went "
                f"away); if it still runs, stop it on its host")
    return (f"{head}; {last}, but it does not answer: it may be paused or cut off from the broker, or the "
            f"broker's ACL drops your commands (docs/troubleshooting.md)")


@command("stop-agent")
def stop_agent(
    name: str = typer.Argument(...),
    immediate: bool = typer.Option(False, "-i", "--immediate",
                                   help="Stop now; running transfers resume from their checkpoints at restart."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    timeout: float = typer.Option(600, "--timeout", help="Seconds to wait for the agent to stop (its answer to the "
                                                         "stop is awaited for at most 10 s of them)."),
) -> None:
    """Stop an agent: by default after its running transfers finish (controlled); -i at once."""
    pid = running_pid(name)

    async def go() -> bool:
        async with FteClient(broker_url(broker, name)) as c:
            # the answer is awaited even when the agent's status says STOPPED: a STOPPED of an earlier run,
            # replayed retained by someone on the broker, must not keep a running agent from being stopped
            wait = min(10.0, timeout)
            try:
                reply = await c.request(name, StopAgent(kind="stop_agent", request_id=new_request_id(),
                                                        reply_to=c.client_id, immediate=immediate), timeout=wait)
            except NoAnswer:
                raise NoAnswer(await _no_stop_answer(c, name, wait), 2) from None
            if not reply.ok:
                raise StopRefused(f"agent {name} refused to stop: {reply.message}", reply.result_code or 1)
            q = await c.subscribe(c.topics.agent_status(name))
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise ClientError(f"agent {name} has not stopped within {timeout:g} s", 2)
                # an agent of this machine whose process has ended has stopped, whether or not its STOPPED
                # status reaches us (after a cluster node failover the retained status may not be delivered)
                if pid is not None and running_pid(name) is None:
                    return True
                try:
                    got = await asyncio.wait_for(q.get(), min(left, 0.5))
                except asyncio.TimeoutError:
                    continue
                st = c.status_of(got)
                if st is not None and st.verified and st.status == AgentState.STOPPED:  # a forged STOPPED is no stop
                    return True

    try:
        asyncio.run(go())
        out.print(f"Agent {name} stopped.")
        return
    except (ClientError, asyncio.TimeoutError) as exc:
        if isinstance(exc, StopRefused):
            raise  # the agent said no: never force it
        if pid is None:
            if isinstance(exc, NoAnswer):
                raise
            fail(f"could not stop agent {name}: {exc}")
        # the broker is away or the agent does not answer, but it runs here: signal it
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            out.print(f"Agent {name} stopped (pid {pid} has ended).")
            return
        for _ in range(100):
            if running_pid(name) is None:
                out.print(f"Agent {name} stopped (pid {pid}, by signal).")
                return
            time.sleep(0.1)
        fail(f"agent {name} (pid {pid}) did not stop; kill it with: kill -9 {pid}")


@command("list-agents")
def list_agents(
    names: Optional[List[str]] = typer.Argument(
        None, help="Only these agents, each read on its own status topic: this works on every broker, RabbitMQ 3.x "
             "included (exit 1 if one has no status)."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help=VERBOSE_HELP),
) -> None:
    """List the agents that publish a status on the broker (or only the named ones).

    A status not signed by a key this client trusts (agents configured here, and fte key trust-agent) is shown
    as unverified: anyone on the broker can publish one.

    Without names: every status retained on PREFIX/Agents/+, and the status of each agent configured on this
    machine ($FTE_CONFIG_HOME) read on its own topic. A broker that does not deliver retained messages to a
    wildcard subscription (RabbitMQ 3.x) shows only the latter: name the others.
    """
    from agent.names import validate_agent_name

    for name in names or []:
        try:
            validate_agent_name(name)
        except ValueError as exc:
            fail(str(exc))

    async def go() -> tuple[dict[str, Any], bool, FteClient, dict[str, dict[str, Any]]]:
        async with FteClient(broker_url(broker, names[0] if names else None), on_ignored=note_ignored(verbose)) as c:
            found, blind = await statuses_of(c)
            gone = [n for n, st in found.items() if st.status == AgentState.UNREACHABLE]
            return found, blind, c, (await c.last_heard(gone) if gone else {})

    async def statuses_of(c: FteClient) -> tuple[dict[str, Any], bool]:
        if names:
            return await c.agent_statuses_of(list(dict.fromkeys(names))), False
        since = time.time()
        statuses = await c.agent_statuses(settle=0.7)
        local = [n for n in _local_agent_names() if n not in statuses]
        extra = await c.agent_statuses_of(local, settle=0.5) if local else {}
        # a status retained before the wildcard subscription, found only on its own topic: the broker
        # does not deliver retained messages to wildcard subscriptions (not an agent that just started)
        wildcard_blind = any(_epoch(st.time) < since - 1.0 for st in extra.values())
        return {**statuses, **extra}, wildcard_blind

    statuses, wildcard_blind, client, heard = run(go())
    topics = client.topics
    missing = [n for n in dict.fromkeys(names or []) if n not in statuses]
    if as_json:
        out.print_json(json.dumps({k: {**v.model_dump(), "verified": v.verified,
                                       **({"last_heard": (heard.get(k) or {}).get("time")}
                                          if v.status == AgentState.UNREACHABLE else {})}
                                   for k, v in sorted(statuses.items())}), ensure_ascii=True)
    elif statuses:
        from rich.table import Table

        t = Table("Agent", "Status", "Host", "Transfers (src/dst)", "When")
        console = out if out.is_terminal else Console(width=200, highlight=False)  # whole names in a pipe
        for name, st in sorted(statuses.items()):
            t.add_row(safe_text(name), safe_text(status_text(st)), safe_text(st.host or ""),
                      f"{len(st.source_transfers)}/{len(st.destination_transfers)}",
                      safe_text(status_when(st, heard.get(name))))
        console.print(t)
    elif not names:
        out.print("No agents are known on this broker. Create one with: fte-create-agent -agentName A1")
    if missing:
        fail(f"no status for agent{'s' if len(missing) > 1 else ''} {', '.join(missing)} on the broker at "
             f"{client.url} (nothing retained on {topics.agent_status(missing[0])}); check the name, the broker "
             f"(--broker, FTE_BROKER_URL) and FTE_TOPIC_PREFIX (it must be the agents' topicPrefix)")
    if names:
        return
    if not statuses:
        note(f"no agent status arrived on {topics.all_agent_status()}. Check the broker and FTE_TOPIC_PREFIX (it "
              f"must be the agents' topicPrefix). A broker that does not deliver retained messages to wildcard "
              f"subscriptions (RabbitMQ 3.x) shows no agent here: name them, fte-list-agents A1 A2, or use "
              f"fte-show-agent-details NAME.")
    if any(not st.verified for st in statuses.values()):
        note("a status marked unverified is not signed by a key this client trusts: it may be forged. For an agent "
              "configured elsewhere, trust its key: fte key trust-agent NAME KEY (see docs/troubleshooting.md)")
    if wildcard_blind:
        note(f"this broker did not deliver the retained statuses on {topics.all_agent_status()} (RabbitMQ 3.x does "
              f"not deliver retained messages to wildcard subscriptions): only the agents configured on this "
              f"machine were found, each on its own topic. Name the others: fte-list-agents NAME...")


def _local_agent_names() -> list[str]:
    """The agents configured on this machine ($FTE_CONFIG_HOME/agents/NAME/agent.properties)."""
    from agent.home import config_home
    from agent.names import validate_agent_name

    names = []
    try:
        dirs = sorted((config_home() / "agents").iterdir())
    except OSError:
        return []
    for d in dirs:
        try:
            if (d / "agent.properties").is_file() and validate_agent_name(d.name):
                names.append(d.name)
        except (OSError, ValueError):
            continue
    return names


def _epoch(iso: str) -> float:
    """Seconds since the epoch of an agent status's `time` (inf when it cannot be read)."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return float("inf")


@command("show-agent-details")
def show_agent_details(
    name: str = typer.Argument(...),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help=VERBOSE_HELP),
) -> None:
    """Show an agent's status and transfers (marked unverified when no trusted key signed it)."""

    async def go() -> Any:
        async with FteClient(broker_url(broker, name), on_ignored=note_ignored(verbose)) as c:
            st = await c.require_agent(name)
            return st, ((await c.last_heard([name])).get(name) if st.status == AgentState.UNREACHABLE else None)

    st, heard = run(go())
    data = {**st.model_dump(), "verified": st.verified}
    data.pop("signature", None)
    if st.status == AgentState.UNREACHABLE:  # the will's time is when it was registered, not when it fired
        data["last_heard"] = heard.get("time") if heard else None
        data["when"] = status_when(st, heard)
    if as_json:
        out.print_json(json.dumps(data), ensure_ascii=True)
        return
    data["status"] = status_text(st)
    for k, v in data.items():
        out.print(safe(f"{k:26} {v}"), markup=False)
    if not st.verified:
        note(f"this status is not signed by a key this client trusts for agent {name}: it may be forged; "
              f"trust the agent's key with fte key trust-agent {name} KEY (see docs/troubleshooting.md)")


@command("ping-agent")
def ping_agent(
    name: str = typer.Argument(...),
    wait: float = typer.Option(5.0, "-w", "--wait", help="Seconds to wait for the reply."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
) -> None:
    """Ping an agent: exit 0 when it answers, 2 when it does not within -w seconds."""

    async def go() -> float:
        async with FteClient(broker_url(broker, name)) as c:
            t0 = time.monotonic()
            reply = await c.request(name, Ping(kind="ping", request_id=new_request_id(), reply_to=c.client_id),
                                    timeout=wait)
            if not reply.ok:
                raise ClientError(f"agent {name} answered but refused the ping: {reply.message}",
                                  reply.result_code or 1)
            return time.monotonic() - t0

    rtt = run(go())
    out.print(f"Agent {name} answered in {rtt * 1000:.1f} ms.")


@command("clean-agent")
def clean_agent(
    name: str = typer.Argument(...),
    transfers: bool = typer.Option(False, "-trs", "--transfers", help="Delete the agent's transfers."),
    all_: bool = typer.Option(False, "-all", "--all", help="Delete everything in the agent's state store."),
) -> None:
    """Clear a stopped agent's state store (like fteCleanAgent -trs)."""
    from agent.settings import SettingsError, load_agent_settings
    from agent.store import StateStore

    if not (transfers or all_):
        fail("say what to clean: -trs (transfers) or -all")
    try:
        settings = load_agent_settings(name)
    except SettingsError as exc:
        fail(str(exc))
    pid = running_pid(name)
    if pid is not None:
        fail(f"agent {name} is running (pid {pid}); stop it first with fte-stop-agent {name}")
    store = StateStore(settings.state_dir / "state.db")
    n = 0
    for rec in list(store.transfers(files=False)):
        store.delete_transfer(rec.transfer_id, rec.role)
        n += 1
    if all_:
        while batch := store.outbox_peek(1000):
            for seq, *_ in batch:
                store.outbox_done(seq)
        for mname, *_ in store.monitors():
            store.delete_monitor(mname)
        for sid, *_ in store.schedules():
            store.delete_schedule(sid)
    store.close()
    out.print(f"Deleted {n} transfer record(s) from agent {name}'s state store.")
