"""The command line: `fte <verb>` and the `fte-<verb>` console scripts (MFT's flag names).

Commands are thin: parse, build a request, send it, render the reply. Every error is one line on
stderr saying what was wrong and what to do, with a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from agent.protocol import (CancelTransfer, CreateTransfer, ListTransfers, Ping, StopAgent,
                            TransferItem, TransferSpec, new_transfer_id, utc_now)

from .client import ClientError, FteClient, NoAnswer, broker_url, new_request_id
from .render import SafeLogFormatter, TransferWatcher, format_event, safe, safe_markup, safe_text, status_text
from agent.core.statuses import AGENT_GONE, AGENT_RUNNING, AgentState

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mqtt-fte: managed file transfer over MQTT.")
# emoji off: ":thumbs_up:" in a file name is shown as typed, not as a picture
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
out = Console(highlight=False, soft_wrap=True, emoji=False)

BROKER_HELP = "Broker URL (mqtt://HOST:PORT or mqtts://...); default $FTE_BROKER_URL"
VERBOSE_HELP = "Say (on stderr) which messages were ignored because no trusted agent key signed them."


def note_ignored(verbose: bool) -> Any:
    """The FteClient's on_ignored for a command's -v: one note line per ignored message."""
    if not verbose:
        return None
    return lambda message: err.print(f"note: {message}", markup=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    # messages carry file names and agent replies: never rich markup, never a control character
    err.print(f"[bold red]error:[/] {safe_markup(message)}", soft_wrap=True)
    raise typer.Exit(code)


def check_id_or_fail(transfer_id: str) -> None:
    """A transfer id (or prefix) that cannot be one fails the command before any broker is asked."""
    from .observe import check_transfer_id

    try:
        check_transfer_id(transfer_id)
    except ClientError as exc:
        fail(str(exc))


def run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ClientError as exc:
        fail(str(exc), exc.code)
    except KeyboardInterrupt:
        raise typer.Exit(130)


# --------------------------------------------------------------------------- agents


@app.command("create-agent")
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
    from agent.binding import agent_requester, load_or_create_agent_key

    mine = public_text(load_or_create_agent_key(agent_home).public_key())
    for other in sorted(agent_home.parent.iterdir()):
        if other == agent_home or not (other / "agent.key").exists():
            continue
        theirs = public_text(load_or_create_agent_key(other).public_key())
        trust(other, agent_requester(agent_home.name), mine, "transfer")
        trust(agent_home, agent_requester(other.name), theirs, "transfer")


def _pid_file(name: str) -> Path:
    from agent.settings import agent_dir

    return agent_dir(name) / "agent.pid"


def _running_pid(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


@app.command("start-agent")
def start_agent(
    name: str = typer.Argument(..., help="Agent name."),
    foreground: bool = typer.Option(False, "-F", "--foreground", help="Run in the foreground (logs to stderr)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging."),
) -> None:
    """Start an agent (in the background unless -F)."""
    from agent.link import BrokerConfigError
    from agent.settings import SettingsError, agent_dir, load_agent_settings, timeout_warnings

    try:
        settings = load_agent_settings(name, require_directories=True)
    except SettingsError as exc:
        fail(str(exc))
    pid = _running_pid(name)
    if pid is not None and pid != os.getpid():
        fail(f"agent {name} is already running (pid {pid}); stop it with fte-stop-agent {name}")
    if not foreground:
        _start_background(name, agent_dir(name))
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("amqtt", "transitions", "aiomqtt", "mqtt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for w in timeout_warnings(settings):
        logging.getLogger("fte.agent").warning("%s", w)
    _pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    _pid_file(name).write_text(str(os.getpid()))
    try:
        asyncio.run(_run_agent(settings))
    except BrokerConfigError as exc:
        fail(f"agent {name}: {exc}")
    finally:
        try:
            if _pid_file(name).read_text().strip() == str(os.getpid()):
                _pid_file(name).unlink()
        except OSError:
            pass


async def _run_agent(settings: Any) -> None:
    from agent.daemon import Agent

    agent = Agent(settings, settings.state_dir)
    loop = asyncio.get_running_loop()
    # SIGTERM/SIGINT: an immediate stop; running transfers resume from their checkpoints at restart
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop, True)
    logging.getLogger("fte.agent").info("agent %s starting (broker %s, state %s)", settings.agentName,
                                        settings.brokerUrl, settings.state_dir)
    await agent.run()
    logging.getLogger("fte.agent").info("agent %s stopped", settings.agentName)


def _start_background(name: str, home: Path) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    logfile = logs / "output0.log"
    with open(logfile, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "start-agent", name, "-F"], stdout=fh,
                                stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
            fail(f"agent {name} exited at start (code {proc.returncode}): {' | '.join(tail)}")
        if _running_pid(name) == proc.pid and _agent_ready(name, proc.pid):
            out.print(f"Agent {name} started (pid {proc.pid}); log: {logfile}")
            return
        time.sleep(0.2)
    out.print(f"Agent {name} started (pid {proc.pid}) but has not reached its broker yet; log: {logfile}")


def _agent_ready(name: str, pid: int) -> bool:
    async def check() -> bool:
        try:
            async with FteClient(broker_url(None, name)) as c:
                st = await c.agent_status(name, settle=0.5)
                return bool(st and st.verified and st.pid == pid and st.status in AGENT_RUNNING)
        except ClientError:
            return False

    return asyncio.run(check())


class StopRefused(ClientError):
    """The agent answered and refused to stop (as opposed to: no broker, no answer)."""


async def _no_stop_answer(c: FteClient, name: str, wait: float) -> str:
    """What the client knows of an agent that did not answer its stop: its last status on the broker (verified
    or not) and when it was published, or that the broker has none; never "start it", for a stop."""
    head = f"agent {name} did not answer within {wait:g} s"
    st = await c.agent_status(name)
    if st is None and c.invalid_status(name) is not None:
        return (f"{head}; the status on {c.topics.agent_status(name)} is not a valid agent status "
                f"({c.invalid_status(name)}): ignored; a running agent replaces it within a second, so agent {name} "
                f"is not running (or not of this broker: check the name with fte-list-agents)")
    if st is None:
        return (f"{head}; no agent of that name has a status on {c.topics.agent_status(name)} at {c.addr.url} "
                f"(unknown agent: check the name with fte-list-agents)")
    last = (f"its last status (verified) is {st.status}" if st.verified else
            f"its last status is {st.status}, but unverified (not signed by a key of agent {name} trusted here; "
            f"-v on fte-show-agent-details {name} says why)")
    last += f", published {st.time}"
    if st.status == AgentState.STOPPED:
        return f"{head}; {last}: it is not running, nothing to stop"
    if st.status == AgentState.UNREACHABLE:
        return (f"{head}; {last}: it lost the broker without stopping (killed, or its host or network went "
                f"away); if it still runs, stop it on its host")
    return (f"{head}; {last}, but it does not answer: it may be paused or cut off from the broker, or the "
            f"broker's ACL drops your commands (docs/troubleshooting.md)")


@app.command("stop-agent")
def stop_agent(
    name: str = typer.Argument(...),
    immediate: bool = typer.Option(False, "-i", "--immediate",
                                   help="Stop now; running transfers resume from their checkpoints at restart."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    timeout: float = typer.Option(600, "--timeout", help="Seconds to wait for the agent to stop (its answer to the "
                                                         "stop is awaited for at most 10 s of them)."),
) -> None:
    """Stop an agent: by default after its running transfers finish (controlled); -i at once."""
    pid = _running_pid(name)

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
                st = c.status_of(await asyncio.wait_for(q.get(), left))
                if st is not None and st.verified and st.status == AgentState.STOPPED:  # a forged STOPPED is no stop
                    return True

    try:
        asyncio.run(go())
        out.print(f"Agent {name} stopped.")
        return
    except (ClientError, asyncio.TimeoutError) as exc:
        if isinstance(exc, StopRefused):
            fail(str(exc), exc.code)  # the agent said no: never force it
        if pid is None:
            if isinstance(exc, NoAnswer):
                fail(str(exc), exc.code)
            fail(f"could not stop agent {name}: {exc}")
        # the broker is away or the agent does not answer, but it runs here: signal it
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if _running_pid(name) is None:
                out.print(f"Agent {name} stopped (pid {pid}, by signal).")
                return
            time.sleep(0.1)
        fail(f"agent {name} (pid {pid}) did not stop; kill it with: kill -9 {pid}")


@app.command("list-agents")
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
    from agent.settings import validate_agent_name

    for name in names or []:
        try:
            validate_agent_name(name)
        except ValueError as exc:
            fail(str(exc))

    async def go() -> tuple[dict[str, Any], bool, FteClient]:
        async with FteClient(broker_url(broker, names[0] if names else None), on_ignored=note_ignored(verbose)) as c:
            if names:
                return await c.agent_statuses_of(list(dict.fromkeys(names))), False, c
            since = time.time()
            statuses = await c.agent_statuses(settle=0.7)
            local = [n for n in _local_agent_names() if n not in statuses]
            extra = await c.agent_statuses_of(local, settle=0.5) if local else {}
            # a status retained before the wildcard subscription, found only on its own topic: the broker
            # does not deliver retained messages to wildcard subscriptions (not an agent that just started)
            wildcard_blind = any(_epoch(st.time) < since - 1.0 for st in extra.values())
            return {**statuses, **extra}, wildcard_blind, c

    statuses, wildcard_blind, client = run(go())
    topics = client.topics
    missing = [n for n in dict.fromkeys(names or []) if n not in statuses]
    if as_json:
        out.print_json(json.dumps({k: {**v.model_dump(), "verified": v.verified} for k, v in sorted(statuses.items())}),
                       ensure_ascii=True)
    elif statuses:
        from rich.table import Table

        t = Table("Agent", "Status", "Host", "Transfers (src/dst)", "Status published")
        console = out if out.is_terminal else Console(width=200, highlight=False)  # whole names in a pipe
        for name, st in sorted(statuses.items()):
            t.add_row(safe_text(name), safe_text(status_text(st)), safe_text(st.host or ""),
                      f"{len(st.source_transfers)}/{len(st.destination_transfers)}", safe_text(st.time))
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
        _note(f"no agent status arrived on {topics.all_agent_status()}. Check the broker and FTE_TOPIC_PREFIX (it "
              f"must be the agents' topicPrefix). A broker that does not deliver retained messages to wildcard "
              f"subscriptions (RabbitMQ 3.x) shows no agent here: name them, fte-list-agents A1 A2, or use "
              f"fte-show-agent-details NAME.")
    if any(not st.verified for st in statuses.values()):
        _note("a status marked unverified is not signed by a key this client trusts: it may be forged. For an agent "
              "configured elsewhere, trust its key: fte key trust-agent NAME KEY (see docs/troubleshooting.md)")
    if wildcard_blind:
        _note(f"this broker did not deliver the retained statuses on {topics.all_agent_status()} (RabbitMQ 3.x does "
              f"not deliver retained messages to wildcard subscriptions): only the agents configured on this "
              f"machine were found, each on its own topic. Name the others: fte-list-agents NAME...")


def _note(message: str) -> None:
    err.print(f"note: {safe(message)}", markup=False, soft_wrap=True)


def _local_agent_names() -> list[str]:
    """The agents configured on this machine ($FTE_CONFIG_HOME/agents/NAME/agent.properties)."""
    from agent.settings import config_home, validate_agent_name

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


@app.command("show-agent-details")
def show_agent_details(
    name: str = typer.Argument(...),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help=VERBOSE_HELP),
) -> None:
    """Show an agent's status and transfers (marked unverified when no trusted key signed it)."""

    async def go() -> Any:
        async with FteClient(broker_url(broker, name), on_ignored=note_ignored(verbose)) as c:
            return await c.require_agent(name)

    st = run(go())
    data = {**st.model_dump(), "verified": st.verified}
    data.pop("signature", None)
    if as_json:
        out.print_json(json.dumps(data), ensure_ascii=True)
        return
    data["status"] = status_text(st)
    for k, v in data.items():
        out.print(safe(f"{k:26} {v}"), markup=False)
    if not st.verified:
        _note(f"this status is not signed by a key this client trusts for agent {name}: it may be forged; "
              f"trust the agent's key with fte key trust-agent {name} KEY (see docs/troubleshooting.md)")


@app.command("ping-agent")
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


@app.command("clean-agent")
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
    pid = _running_pid(name)
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


# --------------------------------------------------------------------------- keys

key_app = typer.Typer(help="Requester keys: who may command an agent (authorityChecking=true).", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("generate")
def key_generate(
    name: Optional[str] = typer.Option(None, "--name", help="Requester name (default: $FTE_REQUESTER or your user)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
) -> None:
    """Create your signing key in $FTE_CONFIG_HOME/keys and print its public half."""
    from agent.auth import generate_key, load_private, public_text, requester_name
    from agent.settings import config_home

    name = name or requester_name()
    try:
        path = generate_key(config_home(), name, overwrite=force)
    except (FileExistsError, ValueError) as exc:
        fail(f"{exc}; use --force to replace it" if isinstance(exc, FileExistsError) else str(exc))
    key = load_private(config_home(), name)
    assert key is not None
    out.print(f"Created {path}")
    out.print(f"{name} {public_text(key.public_key())}")


@key_app.command("show")
def key_show(
    name: Optional[str] = typer.Option(None, "--name", help="Requester name."),
    agent: Optional[str] = typer.Option(None, "--agent", help="Show this agent's identity key instead."),
) -> None:
    """Print your requester name and public key (give this line to an agent's owner)."""
    from agent.auth import load_private, public_text, requester_name
    from agent.settings import agent_dir, config_home

    if agent:
        from agent.binding import agent_requester, load_or_create_agent_key

        if not (agent_dir(agent) / "agent.properties").exists():
            fail(f"agent {agent} is not configured here ({agent_dir(agent)})")
        pub = public_text(load_or_create_agent_key(agent_dir(agent)).public_key())
        out.print(f"{agent_requester(agent)} {pub}")
        return
    name = name or requester_name()
    key = load_private(config_home(), name)
    if key is None:
        fail(f"no key for {name} in {config_home() / 'keys'}; create one with: fte key generate")
    out.print(f"{name} {public_text(key.public_key())}")


@key_app.command("trust")
def key_trust(
    agent: str = typer.Argument(..., help="The agent (configured under $FTE_CONFIG_HOME) that will obey."),
    name: str = typer.Argument(..., help="Requester name."),
    public_key: str = typer.Argument(..., help="The requester's public key (base64, from fte key show)."),
    permissions: str = typer.Option("transfer,cancel", "-p", "--permissions",
                                    help="Comma-separated: transfer, cancel, monitor, admin; or all."),
) -> None:
    """Let a requester command an agent (or, as agent.NAME with -p transfer, let agent NAME take part in transfers)."""
    from agent.auth import check_trust_entry, is_agent_key_name, trust
    from agent.settings import agent_dir

    d = agent_dir(agent)
    if not (d / "agent.properties").exists():
        fail(f"agent {agent} is not configured here ({d}); create it with fte-create-agent -agentName {agent}")
    try:
        check_trust_entry(name, permissions)
        path = trust(d, name, public_key, permissions)
    except ValueError as exc:
        fail(str(exc))
    if is_agent_key_name(name):
        out.print(f"{agent} now takes part in transfers with the agent whose identity key is {name}; {path}")
        return
    out.print(f"{agent} now obeys {name} ({permissions}); {path}")


@key_app.command("untrust")
def key_untrust(
    agent: str = typer.Argument(..., help="The agent (configured under $FTE_CONFIG_HOME)."),
    name: str = typer.Argument(..., help="The requester (or agent.NAME) it stops trusting."),
) -> None:
    """Stop an agent obeying a requester (or taking part in transfers with agent NAME, given as agent.NAME)."""
    from agent.auth import TRUST_FILE, untrust
    from agent.settings import agent_dir

    d = agent_dir(agent)
    if not (d / "agent.properties").exists():
        fail(f"agent {agent} is not configured here ({d}); see the agents with fte-list-agents")
    if not untrust(d, name):
        fail(f"{name} is not in {d / TRUST_FILE}; see who {agent} trusts with: fte key list {agent}")
    out.print(f"{agent} no longer trusts {name} (at once: a running agent re-reads {d / TRUST_FILE})")


@key_app.command("trust-agent")
def key_trust_agent(
    agent: str = typer.Argument(..., help="The agent, as NAME or agent.NAME (as fte key show --agent prints it)."),
    public_key: str = typer.Argument(..., help="Its identity key (base64), from fte key show --agent NAME where "
                                               "the agent is configured."),
) -> None:
    """Believe an agent configured elsewhere: its replies, log events and statuses (signed by this key)."""
    from agent.settings import config_home

    from .trusted_agents import agent_name_of, trust_agent

    try:
        name = agent_name_of(agent)
        path = trust_agent(config_home(), name, public_key)
    except ValueError as exc:
        fail(str(exc))
    out.print(f"This client now believes agent {name} when it is signed by that key; {path}")


@key_app.command("trusted-agents")
def key_trusted_agents() -> None:
    """List the agents whose replies, events and statuses this client believes, and their keys."""
    from agent.settings import config_home

    from .trusted_agents import AgentKeys

    keys = AgentKeys(config_home())
    rows = keys.describe()
    if keys.problem:
        fail(f"{keys.problem}; fix or remove that line")
    if not rows:
        out.print("No agent key is trusted here: no agent is configured in this FTE_CONFIG_HOME and "
                  "fte key trust-agent was not used.")
    for name, key, where in rows:
        out.print(f"agent.{name} {key} ({where})", markup=False)


@key_app.command("list")
def key_list(agent: str = typer.Argument(..., help="Agent whose trusted requesters to list.")) -> None:
    """List the requesters an agent obeys."""
    from agent.auth import TRUST_FILE, parse_trust_file, public_text
    from agent.settings import agent_dir

    path = agent_dir(agent) / TRUST_FILE
    if not path.exists():
        out.print(f"agent {agent} trusts no requester ({path} does not exist)")
        return
    try:
        trusted = parse_trust_file(path.read_text(), path)
    except ValueError as exc:
        fail(str(exc))
    for t in trusted.values():
        out.print(f"{t.name} {public_text(t.key)} {','.join(sorted(t.permissions))}")


# --------------------------------------------------------------------------- transfers


FLAG_OF_FIELD = {"source_agent": "-sa", "destination_agent": "-da", "job_name": "-jn", "metadata": "-md",
                 "recovery_timeout": "-rt", "items": "the sources or -df/-dd", "source": "source"}


def _validation_text(exc: Exception) -> str:
    """A pydantic error as one line naming the flag and the value."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    first = errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    flag = FLAG_OF_FIELD.get(loc[0], loc[0]) if loc else "request"
    if loc == ["destination"]:
        flag = "-df" if "-df" in sys.argv or "--destination-file" in sys.argv else "-dd"
    value = first.get("input")
    shown = f" {value!r}" if isinstance(value, (str, int)) else ""
    if isinstance(value, str) and len(value) > 60:  # a path of 5,000 characters is not repeated in full
        shown = f" {value[:40]!r}... ({len(value)} characters)"
    limit = (first.get("ctx") or {}).get("max_length")
    if first.get("type") == "string_too_long" and limit:
        return f"{flag}{shown} is too long: at most {limit} characters are allowed"
    return f"{flag}{shown}: {first.get('msg')}"


def _metadata(values: List[str]) -> dict[str, str]:
    md: dict[str, str] = {}
    for v in values:
        for pair in v.split(","):
            if "=" not in pair:
                fail(f"-md {pair!r} is not key=value (e.g. -md ticket=42)")
            k, _, val = pair.partition("=")
            md[k.strip()] = val.strip()
    return md


@app.command("create-transfer")
def create_transfer(
    ctx: typer.Context,
    sources: Optional[List[str]] = typer.Argument(
        None, help="Source file(s) or directories on the source agent (with -tn/-td: replace its sources)."),
    source_agent: Optional[str] = typer.Option(None, "-sa", "--source-agent",
                                               help="Source agent (required unless -tn or -td gives it)."),
    destination_agent: Optional[str] = typer.Option(None, "-da", "--destination-agent",
                                                    help="Destination agent (required unless -tn or -td gives it)."),
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
                                              "result code (0, 20, 40, 41, 69), 2 if the wait ran out."),
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
    try:
        templates.check_flags(exist, disposition, checksum, recovery_timeout)
    except templates.TemplateError as exc:
        fail(str(exc))
    if generate is not None and wait is not None:
        fail("-w has no meaning with -gt: the request is written to a file, not submitted")
    if template_name is None and definition is None:
        assert sources and source_agent and destination_agent
        md = _metadata(metadata)
        try:
            items = [TransferItem(source=s, destination=dest_file or dest_dir or "",
                                  destination_type="file" if dest_file else "directory", recursive=recursive)
                     for s in sources]
            spec = TransferSpec(source_agent=source_agent, destination_agent=destination_agent, items=items,
                                exist=exist, disposition=disposition, checksum=checksum.lower(),
                                recovery_timeout=recovery_timeout, job_name=job_name, metadata=md)
        except ValueError as exc:
            fail(f"invalid transfer request: {_validation_text(exc)}")
    else:
        try:
            overrides = templates.overrides_from(
                ctx, sources=sources, source_agent=source_agent, destination_agent=destination_agent,
                dest_file=dest_file, dest_dir=dest_dir, exist=exist, disposition=disposition, checksum=checksum,
                recursive=recursive, recovery_timeout=recovery_timeout, job_name=job_name, metadata=metadata)
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
        except templates.TemplateError as exc:
            fail(str(exc), exc.code)
    if generate is not None:
        try:
            path = templates.write_request_file(generate, spec)
        except templates.RequestFileError as exc:
            fail(exc.line(), exc.code)
        if as_json:
            out.print(json.dumps({"request_file": str(path), **templates.request_document(spec)}), markup=False,
                      emoji=False)
        else:
            out.print(f"Wrote the transfer request ({spec.source_agent} -> {spec.destination_agent}, "
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
        try:
            sched = schedule_spec(schedule_start, time_base, occurrence_interval, occurrence_frequency,
                                  occurrence_count, end_schedule)
        except ClientError as exc:
            fail(str(exc), exc.code)
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
        watcher = TransferWatcher(c, spec.source_agent, tid, show_progress=(wait is not None and not as_json
                                                                             and out.is_terminal), console=out)
        if wait is not None:
            await watcher.subscribe()
        cmd = CreateTransfer(kind="create_transfer", request_id=new_request_id(), reply_to=c.client_id,
                             sent_at=utc_now(), transfer_id=tid, spec=spec)
        reply = await c.request(spec.source_agent, cmd, timeout=timeout)
        if not reply.ok:
            raise ClientError(f"agent {spec.source_agent} refused the transfer: {reply.message}",
                              reply.result_code or 1)
        if wait is None:
            if as_json:
                out.print(json.dumps({"transfer_id": tid, "state": "submitted", **reply.data}), markup=False)
            else:
                out.print(safe(f"Transfer {tid} submitted to agent {spec.source_agent} "
                               f"({reply.data.get('files')} file(s), {reply.data.get('bytes')} bytes)."), markup=False)
            return 0
        if not as_json:
            out.print(safe(f"Transfer {tid} started: {reply.data.get('files')} file(s), "
                           f"{reply.data.get('bytes')} bytes."), markup=False)
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
            out.print(json.dumps({"transfer_id": tid, "state": final.get("state"), "result_code": rc,
                                  "files": final.get("files"), "message": final.get("message")}), markup=False)
        else:
            out.print(format_event(final), markup=False)
        return rc


@app.command("cancel-transfer")
def cancel_transfer(
    transfer_id: str = typer.Argument(..., help="The transfer id, or its first 8 or more characters."),
    agent: str = typer.Option(..., "-a", "--agent", help="The source or destination agent of the transfer."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the agent."),
) -> None:
    """Cancel a transfer in any state (recovering included); its part files are removed."""
    check_id_or_fail(transfer_id)

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


@app.command("logs")
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
        check_id_or_fail(transfer)
    run(_logs(agent, transfer, follow, as_json, broker_url(broker, agent), verbose))


async def _logs(agent: Optional[str], transfer: Optional[str], follow: bool, as_json: bool, url: str,
                verbose: bool = False) -> None:
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
                                   f"{t.get('source_agent')}->{t.get('destination_agent')} "
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


# --------------------------------------------------------------------------- broker and demo


@app.command("broker")
def broker_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(1883, "--port", help="Port to listen on."),
) -> None:
    """Run the embedded MQTT broker (amqtt) in the foreground, for trials and tests."""
    from agent.embedded_broker import run_broker_forever

    raise typer.Exit(run_broker_forever(host, port))


@app.command("demo")
def demo(
    size_mib: int = typer.Option(64, "--size", help="Size of the generated file in MiB."),
    keep: bool = typer.Option(False, "--keep", help="Keep the demo directory."),
    recovery: bool = typer.Option(True, "--recovery/--no-recovery", help="Also demonstrate recovery."),
) -> None:
    """Start an embedded broker and two agents, and transfer a generated file between them."""
    from .demo import run_demo

    raise typer.Exit(run(run_demo(size_mib, keep, recovery, out)))


# --------------------------------------------------------------------------- other command groups

from . import monitors as _monitors  # noqa: E402  (registers on `app`, uses fail/out/run above)

_monitors.register(app)

from . import templates as _templates  # noqa: E402  (create-template, list-templates, delete-templates)

_templates.register(app)

from . import definitions as _definitions  # noqa: E402  (fte key trust-creator, untrust-creator, creators)

_definitions.register(key_app)

from . import schedules as _schedules  # noqa: E402

_schedules.register(app)

from . import observe as _observe  # noqa: E402
from .observe import resolve_transfer_id  # noqa: E402

_observe.register(app)

# --------------------------------------------------------------------------- entry points

VERBS = ["key", "broker", "demo", "create-agent", "start-agent", "stop-agent", "list-agents", "show-agent-details",
         "ping-agent", "create-transfer", "cancel-transfer", "logs", "clean-agent"]


def _preprocess(verb: str | None, argv: list[str]) -> list[str]:
    """`-w` takes an optional number (MFT style): a bare -w waits without limit."""
    if verb != "create-transfer":
        return argv
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


# typer checks a typed flag with pydantic; its words ("Input should be a valid integer, unable to parse
# string as an integer") name neither the flag's value nor what to give instead
_VALUE_PROBLEM = {"int_parsing": "is not a whole number", "int_from_float": "is not a whole number",
                  "float_parsing": "is not a number", "bool_parsing": "is not true or false"}


def _bad_value_text(exc: Exception, argv: list[str]) -> str | None:
    """'-rt 'abc' is not a whole number' for a flag value typer could not convert; None for other errors."""
    cause = exc.__cause__
    param = getattr(exc, "param", None)
    errors = getattr(cause, "errors", None)
    if param is None or not callable(errors):
        return None
    try:
        first = errors()[0]
    except (IndexError, TypeError):
        return None
    opts = list(getattr(param, "opts", None) or [])
    flag = next((o for o in opts if o in argv), opts[0] if opts else str(getattr(param, "name", "value")))
    problem = _VALUE_PROBLEM.get(first.get("type"), f"is invalid: {first.get('msg')}")
    shown = first.get("input")
    return f"{flag} {str(shown)!r} {problem}"


def _invoke(argv: list[str]) -> None:
    """Run the app; a usage error is one line and exit 1 (2 means 'timed out' for these commands)."""
    try:
        code = app(args=argv, prog_name="fte", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # click's UsageError (typer vendors click in recent versions: match it by name)
        kinds = {c.__name__ for c in type(exc).__mro__}
        if "Abort" in kinds:
            sys.exit(130)
        if "UsageError" not in kinds:
            raise
        message = _bad_value_text(exc, argv) or exc.format_message()  # type: ignore[attr-defined]
        if not message:  # no arguments at all: the help was shown
            sys.exit(0)
        known = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
        where = f"fte {argv[0]} --help" if argv and argv[0] in known else "fte --help"
        err.print(f"[bold red]error:[/] {safe_markup(message)} (see: {where})")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def main() -> None:
    argv = sys.argv[1:]
    verb = argv[0] if argv else None
    if verb:
        argv = [verb] + _preprocess(verb, argv[1:])
    _invoke(argv)


def _single(verb: str) -> None:
    _invoke([verb] + _preprocess(verb, sys.argv[1:]))


def broker_main() -> None:
    _single("broker")


def demo_main() -> None:
    _single("demo")


def create_agent_main() -> None:
    _single("create-agent")


def start_agent_main() -> None:
    _single("start-agent")


def stop_agent_main() -> None:
    _single("stop-agent")


def list_agents_main() -> None:
    _single("list-agents")


def show_agent_details_main() -> None:
    _single("show-agent-details")


def ping_agent_main() -> None:
    _single("ping-agent")


def create_transfer_main() -> None:
    _single("create-transfer")


def cancel_transfer_main() -> None:
    _single("cancel-transfer")


def logs_main() -> None:
    _single("logs")


def clean_agent_main() -> None:
    _single("clean-agent")


def key_main() -> None:
    _single("key")



def create_monitor_main() -> None:
    _single("create-monitor")


def list_monitors_main() -> None:
    _single("list-monitors")


def delete_monitor_main() -> None:
    _single("delete-monitor")


def stop_monitor_main() -> None:
    _single("stop-monitor")


def start_monitor_main() -> None:
    _single("start-monitor")



def list_scheduled_transfers_main() -> None:
    _single("list-scheduled-transfers")


def delete_scheduled_transfer_main() -> None:
    _single("delete-scheduled-transfer")

def create_template_main() -> None:
    _single("create-template")


def list_templates_main() -> None:
    _single("list-templates")


def delete_templates_main() -> None:
    _single("delete-templates")



def list_transfers_main() -> None:
    _single("list-transfers")


def show_transfer_main() -> None:
    _single("show-transfer")


def top_main() -> None:
    _single("top")


if __name__ == "__main__":
    main()
