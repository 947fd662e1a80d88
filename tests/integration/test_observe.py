"""Observability from the agents: list/show transfers, the live view, Prometheus metrics."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.support.agents import FteEnv, wait_until
from tests.support.brokers import free_port


@pytest.fixture
def env(tmp_path: Path, mosquitto):
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    (data / "out").mkdir()
    e = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    port = free_port()
    try:
        e.create_agent("A1", sandbox=data, metricsPort=port, transferAckTimeout=2000,
                       transferAckTimeoutRetries=1, agentStatusPublishRateLimit=1)
        e.create_agent("A2", sandbox=data, transferAckTimeout=2000)
        e.start_agent("A1")
        e.start_agent("A2")
        e.metrics_port = port  # type: ignore[attr-defined]
        yield e, data
    finally:
        e.stop_all()


def test_list_and_show_transfer_report_what_the_agents_know(env) -> None:
    e, data = env
    (data / "in" / "a.txt").write_text("alpha")
    r = e.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "a.txt"), "-jn", "nightly",
              "-w", "--json", str(data / "in" / "a.txt"))
    assert r.returncode == 0, str(r)
    tid = r.json()["transfer_id"]

    listed = e.run("list-transfers", "--json")
    assert listed.returncode == 0, str(listed)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = {(t["agent"], t["role"]) for t in rows if t["transfer_id"] == tid}
    assert mine == {("A1", "source"), ("A2", "destination")}
    assert all(t["state"] == "complete" for t in rows if t["transfer_id"] == tid and t["role"] == "source")
    assert e.run("list-transfers", "--state", "recovering").stdout.strip() == "No transfers in state recovering."

    shown = e.run("show-transfer", tid, "-a", "A1", "--json")
    assert shown.returncode == 0, str(shown)
    [view] = json.loads(shown.stdout)
    assert view["state"] == "complete" and view["result_code"] == 0 and view["job_name"] == "nightly"
    assert view["files"][0]["destination"] == str(data / "out" / "a.txt")
    assert view["files"][0]["status"] == "done"

    text = e.run("show-transfer", tid)
    assert "A1 (source)" in text.stdout and "A2 (destination)" in text.stdout

    missing = e.run("show-transfer", "0" * 48)
    assert missing.returncode == 1 and "no running agent knows transfer" in missing.stderr
    assert e.run("show-transfer", "nope").returncode == 1

    # the first 12 characters, as fte-logs and fte top print them, find the same transfer
    short = e.run("show-transfer", tid[:12].upper(), "-a", "A1", "--json")
    assert short.returncode == 0, str(short)
    assert json.loads(short.stdout)[0]["transfer_id"] == tid
    logged = e.run("logs", "-t", tid[:8])
    assert logged.returncode == 0 and tid in logged.stdout, str(logged)
    unknown = e.run("show-transfer", "ffffffff" if not tid.startswith("ffffffff") else "eeeeeeee")
    assert unknown.returncode == 1 and "no running agent knows a transfer whose id starts with" in unknown.stderr
    refused = e.run("cancel-transfer", "-a", "A2", tid[:12])  # resolved, then refused: it is complete
    assert refused.returncode != 0 and tid in refused.stderr + refused.stdout, str(refused)


def test_a_stalled_transfer_shows_why(env) -> None:
    e, data = env
    (data / "in" / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    e.agents["A2"].pause()  # SIGSTOP: the destination stops answering
    try:
        r = e.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "big.bin"), "--json",
                  str(data / "in" / "big.bin"))
        tid = r.json()["transfer_id"]

        def recovering() -> dict | None:
            out = e.run("show-transfer", tid, "-a", "A1", "--json")
            view = json.loads(out.stdout)[0] if out.returncode == 0 else None
            return view if view and view["state"] == "recovering" else None

        view = wait_until(recovering, 30, "the transfer to enter recovery")
        assert "no acknowledgement" in view["last_stall"] or "answer to the negotiation" in view["last_stall"]
        assert view["recoveries"] == 1 and view["recovering_since"]
        line = e.run("list-transfers", "-a", "A1", "--state", "recovering").stdout
        assert tid in line and "no " in line  # the reason is on the line

        top = e.run("top", "--once")
        assert top.returncode == 0, str(top)
        assert ("recovering" in top.stdout or "resynchronising" in top.stdout) and tid[:12] in top.stdout
        # cancelled while the destination is still frozen, so it cannot have finished meanwhile
        r = e.run("cancel-transfer", "-a", "A1", tid)
        assert r.returncode == 0, str(r)
    finally:
        e.agents["A2"].resume()


def test_metrics_count_bytes_and_outcomes(env) -> None:
    e, data = env
    payload = os.urandom(300_000)
    (data / "in" / "m.bin").write_bytes(payload)
    r = e.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "out" / "m.bin"), "-w",
              str(data / "in" / "m.bin"))
    assert r.returncode == 0, str(r)
    url = f"http://127.0.0.1:{e.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'fte_bytes_sent_total{agent="A1"} 300000' in text
    assert 'fte_transfers_finished_total{agent="A1",state="complete",result_code="0"} 1' in text
    assert 'fte_broker_connected{agent="A1"} 1' in text
    assert "# TYPE fte_recoveries_total counter" in text
    assert 'fte_transfer_size_bytes_bucket{agent="A1",le="1e+06"} 1' in text  # 300 kB <= 1 MB
    assert 'fte_transfer_duration_seconds_count{agent="A1"} 1' in text
    assert "# HELP fte_broker_connected " in text and 'fte_build_info{agent="A1",version="' in text
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{e.metrics_port}/other", timeout=5)
