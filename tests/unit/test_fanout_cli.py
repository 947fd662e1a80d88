"""A fan-out from the user's side (issue 18): `-da A2,A3,A4` of fte-create-transfer, templates and monitors' tasks
checked and turned into TransferSpec.destination_agents, and how a fan-out's outcome is shown (-w, --json,
fte-list-transfers, fte-show-transfer, fte-logs). No broker: -gt writes the request that would be sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.core.fanout_outcome import LegOutcome, fanout_outcome
from agent.wire.events import build_event, new_event_id
from agent.wire.protocol import TransferSpec, dump
from cli.main import app  # first: the commands registered in their own order
from cli.observe import top_row, transfer_line
from cli.render import destination_lines, format_event, route_of
from cli.templates import Overrides, TemplateError, TemplateSpec, merge, template_spec
from cli.transfer_request import TransferRequestError, destination_agents, transfer_spec
from cli.transfers import outcome_json


def spec(da: str, sa: str = "A1") -> TransferSpec:
    return transfer_spec(sa, da, ["/out/a"], "/in/a", None, "error", "leave", "sha256")


def test_a_comma_list_is_a_fan_out_and_one_name_is_an_ordinary_transfer() -> None:
    s = spec("A2,A3,A4")
    assert (s.destination_agent, s.destination_agents) == ("A2", ["A2", "A3", "A4"])
    assert spec("A2, A3").destination_agents == ["A2", "A3"]  # spaces after the commas are forgiven
    plain = spec("A2")
    assert (plain.destination_agent, plain.destination_agents) == ("A2", None)
    assert "destination_agents" not in json.loads(dump(plain))  # byte for byte the request of before
    assert len(spec(",".join(f"B{i}" for i in range(16))).destination_agents or []) == 16


@pytest.mark.parametrize("da,words", [
    ("A2,A3,A2", "-da 'A2,A3,A2': destination agent A2 is listed more than once"),
    (",".join(f"B{i}" for i in range(17)), "a fan-out has at most 16 destination agents, not 17"),
    ("A2,A1,A3", "-da 'A2,A1,A3': the source agent A1 cannot also be a destination agent"),
    ("A2,,A3", "-da 'A2,,A3': an agent name is empty"),
    ("A2,", "-da 'A2,': an agent name is empty"),
    (",A2", "an agent name is empty"),
    ("A2,no/such", "-da 'no/such'"),  # the name's own rule, as for one -da
])
def test_a_wrong_list_is_named(da: str, words: str) -> None:
    with pytest.raises(TransferRequestError, match=words.replace("(", r"\(").replace(")", r"\)")):
        spec(da)


def test_destination_agents_alone() -> None:
    assert destination_agents("A2") == ("A2", None)
    assert destination_agents("A2,A3", None) == ("A2", ["A2", "A3"])  # a template may not know its source yet


# --------------------------------------------------------------------------- the command line, offline


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTE_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTE_BROKER_URL", "mqtt://127.0.0.1:9")  # nothing listens: -gt needs no broker
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_create_transfer_writes_a_fan_out_request(cli, tmp_path: Path) -> None:
    req = tmp_path / "req.json"
    r = cli("create-transfer", "-sa", "A1", "-da", "A2,A3,A4", "-df", "/in/a", "-gt", str(req), "/out/a")
    assert r.exit_code == 0, r.output
    assert "(A1 -> A2,A3,A4, 1 source(s))" in r.stdout
    got = json.loads(req.read_text())["spec"]
    assert (got["destination_agent"], got["destination_agents"]) == ("A2", ["A2", "A3", "A4"])
    # submitted with -td, it stays a fan-out; -da on the command line replaces every destination
    again = tmp_path / "again.json"
    r = cli("create-transfer", "-td", str(req), "--json", "-gt", str(again))
    assert r.exit_code == 0 and json.loads(r.stdout)["spec"]["destination_agents"] == ["A2", "A3", "A4"]
    r = cli("create-transfer", "-td", str(req), "-da", "A5", "--json", "-gt", str(again))
    assert r.exit_code == 0 and "destination_agents" not in json.loads(r.stdout)["spec"]


@pytest.mark.parametrize("da,words", [
    ("A2,A2", "destination agent A2 is listed more than once"),
    ("A2,A1", "the source agent A1 cannot also be a destination agent"),
    ("A2,,A3", "an agent name is empty"),
    (",".join(f"B{i}" for i in range(17)), "at most 16 destination agents"),
])
def test_create_transfer_refuses_a_wrong_list_in_one_line(cli, tmp_path: Path, da: str, words: str) -> None:
    req = tmp_path / "req.json"
    r = cli("create-transfer", "-sa", "A1", "-da", da, "-df", "/in/a", "-gt", str(req), "/out/a")
    assert r.exit_code == 1 and words in r.stderr and r.stderr.strip().count("\n") == 0, r.output
    assert not req.exists()


def test_a_template_keeps_a_fan_out_and_a_submission_may_replace_it() -> None:
    first, agents = destination_agents("A2,A3", "A1")
    tpl = template_spec(Overrides(source_agent="A1", destination_agent=first, destination_agents=agents,
                                  dest_dir="/in", sources=["/out/a"]))
    assert tpl.destination_agents == ["A2", "A3"]
    kept = merge(TemplateSpec.model_validate(json.loads(tpl.model_dump_json(exclude_none=True))), Overrides())
    assert (kept.destination_agent, kept.destination_agents) == ("A2", ["A2", "A3"])
    one = merge(tpl, Overrides(destination_agent="A5"))  # -da A5 when submitting: one destination
    assert (one.destination_agent, one.destination_agents) == ("A5", None)
    first, agents = destination_agents("A6,A7,A8", "A1")
    other = merge(tpl, Overrides(destination_agent=first, destination_agents=agents))
    assert other.destination_agents == ["A6", "A7", "A8"]
    with pytest.raises(TemplateError, match="the source agent A2 cannot also be a destination agent"):
        merge(tpl, Overrides(source_agent="A2"))
    with pytest.raises(ValueError, match="first of destination_agents"):
        TemplateSpec.model_validate({"destination_agent": "A3", "destination_agents": ["A2", "A3"]})


def test_create_template_refuses_a_wrong_list(cli) -> None:
    r = cli("create-template", "-tn", "T1", "-sa", "A1", "-da", "A2,A2", "-dd", "/in", "/out/a")
    assert r.exit_code == 1 and "destination agent A2 is listed more than once" in r.stderr, r.output


def test_a_monitor_task_takes_the_list() -> None:
    from agent.monitor import MonitorSpec

    task = transfer_spec("A1", "A2,A3", ["${FilePath}"], None, "/in", "error", "leave", "sha256")
    m = MonitorSpec(name="M1", agent="A1", directory="/watch", trigger="match,*.csv", poll_seconds=60,
                    batch_size=1, recursion=0, task=task.model_dump())
    assert m.task is not None and m.task.destination_agents == ["A2", "A3"]


# --------------------------------------------------------------------------- how the outcome is shown

TID = "ab" * 24


def completed(**over: Any) -> dict[str, Any]:
    legs = [LegOutcome("A2", "complete", 0, 1, 0, 300, 0),
            LegOutcome("A3", "recovery_timed_out", 69, 0, 1, 0, 2, "BFGSS0081E: recovery timed out after 5 s"),
            LegOutcome("A4", "complete", 0, 1, 0, 300, 0)]
    out = fanout_outcome(legs)
    event = {"event_id": new_event_id(), "transfer_id": TID, "action": "completed", "state": out.state,
             "time": "2026-12-03T13:00:00.000Z", "agent": "A1", "agent_role": "source", "source_agent": "A1",
             "destination_agent": "A2", "job_name": None, "metadata": {}, "result_code": out.result_code,
             "result": "partial success", "files": [],
             "statistics": {"files": 1, "files_succeeded": 1, "files_failed": 0, "bytes": 600, "seconds": 1.5,
                            "recoveries": 2, "bytes_resent": 0},
             "destinations": out.destinations, **over}
    build_event(event)  # what an agent may publish (strict: the model, the schema's twin)
    return event


def test_the_wait_shows_each_destination_on_its_own_line() -> None:
    ev = completed()
    assert ev["result_code"] == 20 and ev["state"] == "partial"
    line = format_event(ev)
    assert "partial (result 20)" in line
    assert line.endswith("; destinations: A2 complete, A3 recovery_timed_out (69), A4 complete")
    assert destination_lines(ev) == [
        "  A2: complete (result 0): 1 file(s) done, 0 failed, 300 bytes, 0 recoveries",
        "  A3: recovery_timed_out (result 69): 0 file(s) done, 1 failed, 0 bytes, 2 recoveries - "
        "BFGSS0081E: recovery timed out after 5 s",
        "  A4: complete (result 0): 1 file(s) done, 0 failed, 300 bytes, 0 recoveries"]
    got = outcome_json(TID, ev, 20)
    assert got["result_code"] == 20 and [d["agent"] for d in got["destinations"]] == ["A2", "A3", "A4"]


def test_an_ordinary_transfer_is_shown_as_before() -> None:
    ev = completed(destinations=None)
    ev.pop("destinations")
    assert "destinations" not in format_event(ev) and destination_lines(ev) == []
    assert "destinations" not in outcome_json(TID, ev, 0)
    assert route_of(ev) == "A1->A2"


def test_a_reason_from_the_broker_cannot_drive_the_terminal() -> None:
    ev = completed()
    ev["destinations"][1]["supplement"] = "disk\x1b[2Jfull\nforged line"
    assert "\x1b" not in "".join(destination_lines(ev)) and "\n" not in "".join(destination_lines(ev))


def test_listings_show_the_route_of_a_fan_out() -> None:
    row = {"transfer_id": TID, "role": "source", "state": "in_progress", "source_agent": "A1",
           "destination_agent": "A2", "bytes_done": 10, "bytes_total": 100, "result_code": None,
           "destinations": [{"agent": "A2"}, {"agent": "A3"}, {"agent": "A4"}]}
    assert " A1->A2,A3,A4 " in transfer_line(row)
    assert str(top_row(row)[2]) == "A1 -> A2,A3,A4"
    assert route_of({"source_agent": "A1", "destination_agent": "A2"}) == "A1->A2"


def test_a_started_event_names_every_destination_of_a_fan_out() -> None:
    base = {"event_id": new_event_id(), "transfer_id": TID, "action": "started", "state": "queued",
            "time": "2026-12-03T14:00:00.000Z", "agent": "A1", "agent_role": "source", "source_agent": "A1",
            "destination_agent": "A2", "job_name": None, "metadata": {}, "recovery_timeout": -1, "files": [],
            "message": "transfer of 0 file(s)"}
    ev = build_event(dict(base, destination_agents=["A2", "A3", "A4"]))
    assert ev.destination_agents == ["A2", "A3", "A4"]
    assert route_of(ev.wire()) == "A1->A2,A3,A4"  # fte top's route, before the completed event's destinations
    assert "destination_agents" not in build_event(base).wire()  # an ordinary transfer: left off
    assert route_of(base) == "A1->A2"


def test_what_is_about_to_run_names_every_destination() -> None:
    """-tn/-td print what is submitted before it is sent (what you sign is what runs): all the destinations."""
    from cli.templates import Template, submission_line, summary

    s = spec("A2,A3")
    assert "A1:/out/a -> A2,A3:/in/a (file)" in submission_line(s, "template T")
    t = Template(name="T", created="2026-12-03T13:00:00.000Z",
                 spec=TemplateSpec.model_validate(json.loads(s.model_dump_json(exclude_none=True))))
    assert "  agents:       A1 -> A2,A3" in summary(t, "not signed")


def test_fte_top_shows_a_line_per_destination_of_a_fanout_from_its_live_progress() -> None:
    from cli.observe import destination_rows, merge_destinations

    row: dict = {"transfer_id": "f" * 48, "state": "in_progress", "source_agent": "A1", "destination_agent": "A2",
                 "bytes_total": 300, "bytes_done": 150, "destinations": [{"agent": "A2"}, {"agent": "A3"}, {"agent": "A4"}]}
    assert destination_rows(row) == []  # the started event's names only: nothing to show yet
    merge_destinations(row, [
        {"agent": "A2", "state": "complete", "bytes_done": 100, "files_done": 1, "recoveries": 0, "bytes_resent": 0},
        {"agent": "A3", "state": "recovering", "bytes_done": 10, "files_done": 0, "recoveries": 2, "bytes_resent": 4},
        {"agent": "A4", "state": "in_progress", "bytes_done": 40, "files_done": 0, "recoveries": 0, "bytes_resent": 0}])
    shown = [[str(c) for c in r] for r in destination_rows(row)]
    assert [r[2] for r in shown] == ["  └ A2", "  └ A3", "  └ A4"]
    assert [r[4] for r in shown] == ["complete", "recovering", "in_progress"]
    assert [r[5].rsplit(" ", 1)[-1] for r in shown] == ["100%", "10%", "40%"]  # of the 100 bytes each gets
    assert shown[1][8] == "2" and shown[1][9] == "4 bytes resent"
    # the outcome of the completed event is kept when later figures come
    row["destinations"][0]["result_code"] = 0
    merge_destinations(row, [{k: v for k, v in d.items() if k != "result_code"} for d in row["destinations"]])
    assert row["destinations"][0]["result_code"] == 0 and str(destination_rows(row)[0][9]) == "result 0"
    assert destination_rows({"transfer_id": "x", "state": "in_progress"}) == []  # an ordinary transfer


def test_the_wait_progress_of_a_fanout_has_a_bar_per_destination() -> None:
    import io
    import json as _json
    import re as _re

    from rich.console import Console
    from rich.progress import Progress

    from agent.wire.events import parse_progress
    from cli.render import _destination_bars

    text = (Path(__file__).resolve().parents[2] / "docs" / "log-events.md").read_text(encoding="utf-8")
    blocks = [_json.loads(m.group(1)) for m in _re.finditer(r"^```json\n(.*?)^```", text, _re.S | _re.M)]
    snapshot = parse_progress(_json.dumps(next(b for b in blocks if "destinations" in b and "bytes_total" in b)).encode())
    progress = Progress(console=Console(file=io.StringIO()))
    legs: dict = {}
    _destination_bars(progress, legs, snapshot)
    _destination_bars(progress, legs, snapshot)  # again: the same bars, updated
    tasks = {t.id: t for t in progress.tasks}
    assert list(legs) == ["A2", "A3"] and len(tasks) == 2
    a2, a3 = tasks[legs["A2"]], tasks[legs["A3"]]
    assert (a2.description, a2.completed, a2.total) == ("  A2 in_progress", 20971520, 25165824)
    assert (a3.description, a3.completed) == ("  A3 recovering", 8388608)


@pytest.mark.parametrize("states, shown", [
    (("in_progress", "recovering"), True),  # a destination other than the first recovering: said on the line
    (("in_progress", "in_progress"), False),
])
def test_a_listing_line_says_why_a_destination_is_stalled(states: tuple[str, str], shown: bool) -> None:
    from cli.observe import transfer_line

    t = {"transfer_id": "ab" * 24, "role": "source", "state": "in_progress", "source_agent": "A1",
         "destination_agent": "A2", "destination_agents": ["A2", "A3"], "bytes_done": 5, "bytes_total": 10,
         "last_stall": "A3: lost the connection to the broker",
         "destinations": [{"agent": a, "state": s} for a, s in zip(("A2", "A3"), states)]}
    assert ("- A3: lost the connection to the broker" in transfer_line(t)) is shown
