"""The operator documentation stays true to the code.

docs/operations.md, docs/troubleshooting.md, docs/migrating-from-mft.md (and README.md) name commands,
flags, agent properties and metrics; each must exist:

- every `fte-<verb>` and `fte <verb> [<sub>]` is a command of the typer app (cli.main.app), and every flag
  written after it on a command line (an inline code span, or a line of a fenced block) is one of its
  options;
- every flag in the mqtt-fte column of the fteCreateTransfer flag table is an option of fte-create-transfer;
- every camelCase name in backticks is a property of agent.settings.AgentSettings, unless it is one of the
  reference system's (MFT) names listed below, which must then *not* be properties;
- every `fte_...` metric named is one the agent exposes (agent/metrics.py, agent/daemon.py), and every
  metric the agent exposes is in docs/operations.md;
- every relative link of README.md and docs/*.md resolves to an existing file, and an anchor into a
  Markdown file to one of its headings;
- config/fte-agent@.service runs `fte-start-agent %i -F`, and `systemd-analyze verify` accepts it (when
  systemd-analyze is installed).
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import typer

import cli.main
from agent import settings as agent_settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
OPS_DOCS = [DOCS / "operations.md", DOCS / "troubleshooting.md", DOCS / "migrating-from-mft.md"]
COMMAND_DOCS = OPS_DOCS + [ROOT / "README.md"]
UNIT = ROOT / "config" / "fte-agent@.service"

# Names of the reference system (IBM MQ MFT) that the migration guide mentions on purpose: properties
# mqtt-fte does not have, and an MFT log field. None of them may be an agent property.
MFT_ONLY = {
    "agentQMgr", "agentQMgrHost", "agentQMgrPort", "agentQMgrChannel", "agentQMgrAuthenticationCredentialsFile",
    "agentSslCipherSpec", "agentSslTrustStore", "agentSslKeyStore", "agentType", "agentDesc", "agentFrameSize",
    "agentCheckpointInterval", "userSandboxes", "doNotUseTempOutputFile", "enableQueueInputOutput",
    "maxInputOutputMessageLength", "enableMemoryAllocationChecking", "maxRestartCount", "maxRestartInterval",
    "maxRestartDelay", "monitorReportTriggerFail", "agentTraceLevel", "retryCount",
}
# camelCase words in backticks that are neither agent properties nor MFT names (monitor trigger names).
OTHER_CAMEL_CASE = {"noSizeChange", "noMatch", "fileSize"}


# --------------------------------------------------------------------------- the CLI


def _cli() -> Any:
    return typer.main.get_command(cli.main.app)


def _commands() -> dict[str, Any]:
    """Top-level commands by name (`create-transfer`, `key`, ...)."""
    return dict(_cli().commands)


def _options(command: Any) -> set[str]:
    opts: set[str] = {"--help"}
    for p in command.params:
        if p.param_type_name == "option":
            opts.update(p.opts)
            opts.update(p.secondary_opts)
    return opts


# --------------------------------------------------------------------------- reading the docs


def _strip_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _fenced_lines(text: str) -> Iterator[str]:
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        yield from block.splitlines()


def _code_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks (`x`, ``x``)."""
    return [m.group(2) for m in re.finditer(r"(`+)(.+?)\1", _strip_fences(text))]


def _command_lines(text: str) -> list[str]:
    """Text that is a command line: inline code spans and the lines of fenced blocks."""
    lines = []
    for line in _fenced_lines(text):
        line = re.sub(r"^\s*(?:[\w.-]+)?\$\s+", "", line)  # a prompt: "host1$ ", "$ "
        lines.append(line)
    return lines + _code_spans(text)


# `fte-create-transfer`, `/usr/bin/fte-start-agent`; not `mqtt-fte`, `fte-agent@.service`, `fte-agent-A1`,
# `fte-cli-<hex>` (names of the project, the unit, MQTT client ids)
_DASHED = re.compile(r"(?<![\w.-])fte-([a-z]+(?:-[a-z]+)*)(?![\w@<-])")
# `fte top`, `fte key show`, at the start of a command line
_SPACED = re.compile(r"^\s*fte ([a-z][a-z-]*)(?: ([a-z]+(?:-[a-z]+)*))?")  # subcommands: `fte key trust-agent`
_END_OF_COMMAND = re.compile(r"\s(?:\||;|&&|>>?|#)\s|`")


def _invocations(line: str) -> Iterator[tuple[str, str | None, list[str]]]:
    """(verb, subcommand word or None, the words after it) of each fte command in a command line."""
    found = [(m.start(), m.end(), m.group(1), None) for m in _DASHED.finditer(line)]
    m = _SPACED.match(line)
    if m:
        found.append((m.start(), m.end(), m.group(1), m.group(2)))
    found.sort()
    for i, (start, end, verb, sub) in enumerate(found):
        stop = found[i + 1][0] if i + 1 < len(found) else len(line)
        rest = line[end:stop]
        cut = _END_OF_COMMAND.search(rest)
        if cut:
            rest = rest[:cut.start()]
        words = rest.split()
        if sub is None and words and re.fullmatch(r"[a-z]+(?:-[a-z]+)*", words[0]) and verb == "key":
            sub, words = words[0], words[1:]
        yield verb, sub, words


def _flags(words: list[str]) -> list[str]:
    out = []
    # "-trs\|-all" in a table cell: alternatives
    for w in (part for word in words for part in re.split(r"\\?\|", word)):
        w = w.strip("[](),.")
        if w.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", w) and w not in ("-", "--") \
                and not w.startswith("-..."):
            out.append(w.split("=")[0])
    return out


# --------------------------------------------------------------------------- commands and flags


def test_the_ops_docs_exist() -> None:
    for path in OPS_DOCS + [UNIT]:
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing"


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=lambda p: p.name)
def test_every_command_named_exists(doc: Path) -> None:
    commands = _commands()
    text = doc.read_text(encoding="utf-8")
    problems = []
    for verb in sorted({m.group(1) for m in _DASHED.finditer(text)}):
        if verb not in commands:
            problems.append(f"fte-{verb}")
    for line in _command_lines(text):
        for verb, sub, _ in _invocations(line):
            if verb not in commands:
                problems.append(f"fte {verb}")
            elif sub is not None and hasattr(commands[verb], "commands") and sub not in commands[verb].commands:
                problems.append(f"fte {verb} {sub}")
    assert not problems, f"{doc.name} names commands the CLI does not have: {sorted(set(problems))}"


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=lambda p: p.name)
def test_every_flag_written_after_a_command_exists(doc: Path) -> None:
    commands = _commands()
    problems = []
    for line in _command_lines(doc.read_text(encoding="utf-8")):
        for verb, sub, words in _invocations(line):
            command = commands.get(verb)
            if command is None:
                continue  # reported by test_every_command_named_exists
            if hasattr(command, "commands"):
                command = command.commands.get(sub or "")
                if command is None:
                    continue
            for flag in _flags(words):
                if flag not in _options(command):
                    problems.append(f"fte-{verb}{' ' + sub if sub else ''} {flag}   (in: {line.strip()[:90]})")
    assert not problems, f"{doc.name} uses flags the commands do not have:\n" + "\n".join(problems)


def test_the_fte_create_transfer_flag_table_matches_the_cli() -> None:
    text = (DOCS / "migrating-from-mft.md").read_text(encoding="utf-8")
    section = text.split("## fteCreateTransfer flags", 1)[1].split("\n## ", 1)[0]
    options = _options(_commands()["create-transfer"])
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| MFT flag")
            and not line.startswith("|---")]
    assert len(rows) > 20, "the fteCreateTransfer flag table was not found"
    problems = []
    statuses = set()
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert len(cells) == 4, f"a row of the flag table does not have 4 cells: {row}"
        ours, status = cells[1], cells[2]
        statuses.add(status)
        flags = [f for span in re.findall(r"`([^`]+)`", ours) for f in _flags(span.split())]
        if status == "not supported":
            assert ours == "—", f"a flag marked 'not supported' names an mqtt-fte flag: {row}"
        else:
            assert flags, f"a supported flag row names no mqtt-fte flag: {row}"
        problems += [f for f in flags if f not in options]
    assert statuses <= {"same", "changed", "not supported", "new"}, statuses
    assert not problems, f"fte-create-transfer has no flag(s) {problems}"


def test_mft_flags_that_are_not_supported_are_really_absent() -> None:
    options = _options(_commands()["create-transfer"])
    for flag in ("-dq", "-sq", "-sm", "-dm"):
        assert flag not in options, f"fte-create-transfer now has {flag}: update docs/migrating-from-mft.md"


# --------------------------------------------------------------------------- agent properties


def _camel_case_names(text: str) -> set[str]:
    names = set()
    for span in _code_spans(text):
        m = re.fullmatch(r"([a-z][a-z0-9]*[A-Z][A-Za-z0-9]*)(?:=.*)?", span.strip())
        if m:
            names.add(m.group(1))
    for line in _fenced_lines(text):
        m = re.match(r"\s*#?\s*([a-z][a-z0-9]*[A-Z][A-Za-z0-9]*)=", line)
        if m:
            names.add(m.group(1))
    return {n for n in names if not re.match(r"fte[A-Z]", n)}  # fteCreateTransfer & co: MFT commands


@pytest.mark.parametrize("doc", OPS_DOCS, ids=lambda p: p.name)
def test_every_agent_property_named_exists(doc: Path) -> None:
    fields = set(agent_settings.AgentSettings.model_fields)
    unknown = _camel_case_names(doc.read_text(encoding="utf-8")) - fields - MFT_ONLY - OTHER_CAMEL_CASE
    assert not unknown, (f"{doc.name} names properties AgentSettings does not have: {sorted(unknown)} "
                         "(an MFT-only name goes into MFT_ONLY in this test)")


def test_mft_only_names_are_not_properties() -> None:
    fields = set(agent_settings.AgentSettings.model_fields)
    assert not (MFT_ONLY & fields), f"now agent properties: {sorted(MFT_ONLY & fields)}; fix the migration guide"
    assert not (OTHER_CAMEL_CASE & fields)


def test_the_migration_guide_covers_every_property() -> None:
    text = (DOCS / "migrating-from-mft.md").read_text(encoding="utf-8")
    named = _camel_case_names(text)
    missing = set(agent_settings.AgentSettings.model_fields) - named
    assert not missing, f"docs/migrating-from-mft.md does not map the properties {sorted(missing)}"
    # the queue-manager properties the agent explains when it refuses them
    missing_mft = set(agent_settings._MFT_ONLY) - named
    assert not missing_mft, f"docs/migrating-from-mft.md does not mention {sorted(missing_mft)}"


# --------------------------------------------------------------------------- metrics


def _base(metric: str) -> str:
    return re.sub(r"_(sum|count)$", "", metric)


def _exposed_metrics() -> set[str]:
    source = "".join((ROOT / "agent" / name).read_text(encoding="utf-8") for name in ("metrics.py", "daemon.py"))
    return {_base(m) for m in re.findall(r"\bfte_[a-z][a-z_]*[a-z]\b", source)}


def test_metrics_are_found_in_the_code() -> None:
    exposed = _exposed_metrics()
    for name in ("fte_broker_connected", "fte_transfers_in_state", "fte_log_outbox_depth",
                 "fte_transfers_finished_total"):
        assert name in exposed


@pytest.mark.parametrize("doc", OPS_DOCS, ids=lambda p: p.name)
def test_every_metric_named_exists(doc: Path) -> None:
    exposed = _exposed_metrics()
    named = {_base(m) for m in re.findall(r"\bfte_[a-z][a-z_]*[a-z]\b", doc.read_text(encoding="utf-8"))}
    assert not named - exposed, f"{doc.name} names metrics the agent does not expose: {sorted(named - exposed)}"


def test_every_exposed_metric_is_documented() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    named = {_base(m) for m in re.findall(r"\bfte_[a-z][a-z_]*[a-z]\b", text)}
    missing = _exposed_metrics() - named
    assert not missing, f"docs/operations.md does not describe the metrics {sorted(missing)}"


def test_the_metric_labels_documented_are_those_rendered() -> None:
    from agent.metrics import Metrics

    m = Metrics("A1")
    m.transfer_finished("failed", 40)
    m.gauges["fte_transfers_in_state"] = lambda: {'state="recovering"': 1}
    text = m.render()
    assert 'fte_transfers_finished_total{agent="A1",state="failed",result_code="40"} 1' in text
    assert 'fte_transfers_in_state{agent="A1",state="recovering"} 1' in text
    ops = (DOCS / "operations.md").read_text(encoding="utf-8")
    assert 'fte_transfers_in_state{state=~"recovering|resynchronising"}' in ops
    assert 'fte_transfers_finished_total{result_code!="0"}' in ops


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for line in _strip_fences(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: Path) -> Iterator[str]:
    text = _strip_fences(path.read_text(encoding="utf-8"))
    text = re.sub(r"(`+).+?\1", "", text)  # no links inside code spans
    for m in re.finditer(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        yield m.group(1)


LINKED_DOCS = [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    problems = []
    for target in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not problems, f"{doc.relative_to(ROOT)} has broken links: {problems}"


def test_the_slug_function() -> None:
    assert _slug("Running an agent as a systemd service") == "running-an-agent-as-a-systemd-service"
    assert _slug("Differences from IBM MQ MFT") == "differences-from-ibm-mq-mft"
    assert _slug("not_authorized") == "not_authorized"
    assert _slug("Retained status and last will on a cluster") == "retained-status-and-last-will-on-a-cluster"
    assert _slug("Topic access: what each broker user needs") == "topic-access-what-each-broker-user-needs"
    assert _slug("`.` in a topic level: NATS 2.9 and RabbitMQ") == "-in-a-topic-level-nats-29-and-rabbitmq"


# --------------------------------------------------------------------------- the systemd unit


def _unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{UNIT.name}: {line!r} before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_runs_the_agent_in_the_foreground() -> None:
    unit = _unit()
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    program, *args = exec_start.split()
    assert Path(program).name == "fte-start-agent" and Path(program).is_absolute()
    assert args == ["%i", "-F"]
    assert set(args[1:]) <= _options(_commands()["start-agent"])
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["Restart"] == ["on-failure"]
    assert any(v.startswith("FTE_CONFIG_HOME=") for v in service["Environment"])
    assert "ExecStop" not in service  # SIGTERM is already the immediate stop (see docs/operations.md)
    assert "fte-start-agent" in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    program = _unit()["Service"]["ExecStart"][0].split()[0]
    # verify insists that ExecStart exists: point it at an executable that does, and the user at ours
    text = UNIT.read_text(encoding="utf-8").replace(program, sys.executable)
    text = re.sub(r"^(User|Group)=.*$", lambda m: f"{m.group(1)}={getpass.getuser()}", text, flags=re.M)
    (tmp_path / UNIT.name).write_text(text, encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(tmp_path / "fte-agent@DB01.service")], capture_output=True,
                            text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"systemd-analyze verify: {output}"
