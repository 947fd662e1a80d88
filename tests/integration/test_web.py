"""`fte web` over HTTP, as a user runs it: the console script as a process, agents A1 and A2 as processes,
the session's Mosquitto. Auth, agents, a transfer submitted through the API and seen complete, a cancel,
bad input answered with 4xx JSON, the OpenAPI document, the SSE stream, and the dashboard in headless
Chromium (a screenshot kept under test-artifacts/)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import FteEnv, running_agents, sandbox_dir, script, wait_until
from tests.support.ci import unavailable

pytestmark = pytest.mark.timeout(180)

TOKEN = "test-token-" + "x" * 20
PROPS = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000, "transferAckTimeoutRetries": 3}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


LAST: dict[str, Any] = {}  # the last answer about each transfer, shown when a wait runs out


class Web:
    def __init__(self, env: FteEnv, extra: dict[str, str] | None = None, *args: str) -> None:
        self.proc = subprocess.Popen([script("web"), "--port", "0", *args], env={**env.env, **(extra or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline()  # bounded by the test's timeout; the server prints it at once
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", self.line)
        if m is None:
            self.stop()
            raise AssertionError(f"fte web printed no URL: {self.line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.base = f"http://127.0.0.1:{m.group(1)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def call(web: Web, method: str, path: str, body: Any = None, token: str | None = TOKEN,
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(web.base + path, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        assert exc.headers.get("Content-Type", "").startswith("application/json"), text
        return exc.code, json.loads(text)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mosquitto: Any) -> Iterator[tuple[FteEnv, Web, Path]]:
    tmp = tmp_path_factory.mktemp("web")
    data = sandbox_dir(tmp, "in", "out")
    with running_agents(tmp / "fte_home", mosquitto.ensure_running().url, data, **PROPS) as env:
        web = Web(env, {"FTE_WEB_TOKEN": TOKEN})
        try:
            wait_until(lambda: {"A1", "A2"} <= {a["name"] for a in call(web, "GET", "/api/v1/agents")[1]}, 30,
                       "fte web to see both agents")
            yield env, web, data
        finally:
            web.stop()


def request_doc(data: Path, name: str, job: str = "webtest", exist: str = "error") -> dict[str, Any]:
    return {"version": 1, "spec": {"source_agent": "A1", "destination_agent": "A2", "job_name": job,
                                   "exist": exist, "items": [{"source": str(data / "in" / name),
                                                              "destination": str(data / "out" / name),
                                                              "destination_type": "file"}]}}


def finished(web: Web, tid: str) -> dict[str, Any] | None:
    code, t = call(web, "GET", f"/api/v1/transfers/{tid}")
    LAST[tid] = t
    return t if code == 200 and t.get("result_code") is not None and t["state"] in (
        "complete", "partial", "failed", "cancelled", "recovery_timed_out") else None


def wait_done(web: Web, tid: str, what: str) -> dict[str, Any]:
    try:
        return wait_until(lambda: finished(web, tid), 60, what)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answer: {LAST.get(tid)}") from None


def test_token_is_required(stack) -> None:
    _, web, _ = stack
    for token in (None, "wrong"):
        code, body = call(web, "GET", "/api/v1/agents", token=token)
        assert code == 401 and "token" in body["error"]
    code, body = call(web, "GET", "/api/v1/agents")
    assert code == 200


def test_generated_token_file(stack, tmp_path: Path) -> None:
    env, _, _ = stack
    home = tmp_path / "home2"
    shutil.copytree(env.home, home, ignore=shutil.ignore_patterns("*.sqlite*", "*.db*", "*.pid", "*.log"))
    other = FteEnv(home, env.broker_url)
    web = Web(other)
    try:
        path = home / "web" / "token"
        token = path.read_text().strip()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"/?token={token}" in web.line
        assert call(web, "GET", "/api/v1/agents", token=token)[0] == 200
        # the dashboard: ?token= once, then an HttpOnly cookie and a redirect to / without the token
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"{web.base}/?token={token}", timeout=10) as r:
            assert r.status == 200 and r.url == web.base + "/" and b"mqtt-fte" in r.read()
        no_redirect = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,), {
            "redirect_request": lambda *a, **k: None}))
        try:
            no_redirect.open(f"{web.base}/?token={token}", timeout=10)
            raise AssertionError("no redirect")
        except urllib.error.HTTPError as exc:
            assert exc.code == 302
            cookie = exc.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    finally:
        web.stop()
    assert web.proc.returncode == 0, web.proc.stderr.read() if web.proc.stderr else ""


def test_agents(stack) -> None:
    _, web, _ = stack
    code, rows = call(web, "GET", "/api/v1/agents")
    by = {a["name"]: a for a in rows}
    assert by["A1"]["status"] in ("READY", "ACTIVE") and by["A1"]["verified"] is True


def test_transfer_through_the_api(stack) -> None:
    _, web, data = stack
    payload = os.urandom(200_000)
    (data / "in" / "api.bin").write_bytes(payload)
    code, body = call(web, "POST", "/api/v1/transfers", request_doc(data, "api.bin"))
    assert code == 201, body
    tid = body["transfer_id"]
    t = wait_done(web, tid, "the transfer to finish in GET /api/v1/transfers/{id}")
    assert t["state"] == "complete" and t["result_code"] == 0, t
    assert (data / "out" / "api.bin").read_bytes() == payload
    # the state can come from the agent's status before the completed event reaches the live view: wait for it

    def completed_event() -> bool:
        _, t = call(web, "GET", f"/api/v1/transfers/{tid}")
        return any(e.get("action") == "completed" and e["verified"] for e in t.get("events", []))

    wait_until(completed_event, 30, "the verified completed event in GET /api/v1/transfers/{id}")
    code, rows = call(web, "GET", "/api/v1/transfers?job_name=webtest&state=complete")
    assert code == 200 and tid in [r["transfer_id"] for r in rows]
    assert all({"transfer_id", "state", "result_code"} <= r.keys() for r in rows)
    code, rows = call(web, "GET", "/api/v1/transfers?job_name=nothing-like-it")
    assert code == 200 and tid not in [r["transfer_id"] for r in rows]


def test_cancel_through_the_api(stack) -> None:
    env, web, data = stack
    (data / "in" / "c.bin").write_bytes(os.urandom(2_000_000))
    env.agents["A2"].pause()  # the destination stops answering: the transfer cannot finish before the cancel
    try:
        code, body = call(web, "POST", "/api/v1/transfers", request_doc(data, "c.bin", job="cancelme"))
        assert code == 201, body
        tid = body["transfer_id"]
        code, body = call(web, "POST", f"/api/v1/transfers/{tid}/cancel")
        assert code == 200 and body["accepted"] is True, body
    finally:
        env.agents["A2"].resume()
    t = wait_done(web, tid, "the cancelled transfer's outcome")
    assert t["state"] == "cancelled", t


@pytest.mark.parametrize("method,path,body,status,words", [
    ("POST", "/api/v1/transfers", b"not json", 400, "not JSON"),
    ("POST", "/api/v1/transfers", b"[1]", 400, "transfer request"),
    ("POST", "/api/v1/transfers", b'{"version": 7, "spec": {}}', 400, "version"),
    ("POST", "/api/v1/transfers", json.dumps({"version": 1, "spec": {"source_agent": "A1"}}).encode(), 400,
     "invalid transfer request"),
    ("POST", "/api/v1/transfers", json.dumps({"version": 1, "spec": {
        "source_agent": "A1", "destination_agent": "A2", "exist": "maybe",
        "items": [{"source": "/x", "destination": "/y", "destination_type": "file"}]}}).encode(), 400, "exist"),
    ("POST", "/api/v1/transfers", b"{" * 1_100_000, 413, "larger"),
    ("GET", "/api/v1/transfers?since=yesterday", None, 400, "ISO-8601"),
    ("GET", "/api/v1/transfers?colour=red", None, 400, "unknown query"),
    ("GET", "/api/v1/transfers?limit=-3", None, 400, "limit"),
    ("GET", "/api/v1/transfers/..%2F..%2Fetc", None, 400, "not a transfer id"),
    ("GET", "/api/v1/transfers/" + "0" * 48, None, 404, "no transfer"),
    ("POST", "/api/v1/transfers/" + "0" * 48 + "/cancel", None, 404, "not known"),
    ("POST", "/api/v1/transfers/" + "0" * 48 + "/cancel", b"{bad", 400, "optional"),
    ("GET", "/api/v1/nothing", None, 404, "no such endpoint"),
])
def test_bad_input_is_a_json_4xx(stack, method: str, path: str, body: bytes | None, status: int,
                                 words: str) -> None:
    _, web, _ = stack
    code, answer = call(web, method, path, raw=body)
    assert code == status, answer
    assert set(answer) == {"error"} and words in answer["error"], answer
    assert "Traceback" not in answer["error"]


def test_openapi_document(stack) -> None:
    _, web, _ = stack
    code, doc = call(web, "GET", "/api/v1/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")
    for p in ("/api/v1/agents", "/api/v1/transfers", "/api/v1/transfers/{id}", "/api/v1/transfers/{id}/cancel",
              "/api/v1/monitors", "/api/v1/templates", "/api/v1/events"):
        assert p in doc["paths"], p
    assert call(web, "GET", "/api/v1/monitors")[0] == 200
    assert call(web, "GET", "/api/v1/templates")[0] == 200


def test_event_stream(stack) -> None:
    _, web, data = stack
    req = urllib.request.Request(web.base + "/api/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
    (data / "in" / "sse.bin").write_bytes(b"s" * 1000)
    with urllib.request.urlopen(req, timeout=30) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.readline().startswith(b": connected")
        code, body = call(web, "POST", "/api/v1/transfers", request_doc(data, "sse.bin", exist="overwrite"))
        assert code == 201
        tid = body["transfer_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # each readline is bounded by the socket timeout
            line = stream.readline()
            if line.startswith(b"data: ") and tid.encode() in line and b'"completed"' in line:
                break
        else:
            raise AssertionError("no completed event of the transfer on the stream")


def chromium() -> str:
    for name in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if name and os.path.exists(name):
            return name
    unavailable("chromium is not installed (Debian package chromium)")
    raise AssertionError


def test_dashboard_shows_a_transfer(stack, tmp_path: Path) -> None:
    browser = chromium()
    _, web, data = stack
    (data / "in" / "dash.bin").write_bytes(os.urandom(100_000))
    code, body = call(web, "POST", "/api/v1/transfers", request_doc(data, "dash.bin", job="dashboard-job",
                                                                     exist="overwrite"))
    assert code == 201, body
    tid = body["transfer_id"]
    wait_done(web, tid, "the dashboard's transfer to finish")
    url = f"{web.base}/?token={TOKEN}"
    # the page's script draws the first view from the data inlined in the page before the load event, at
    # which --dump-dom prints the DOM (the EventSource stays open after: no --virtual-time-budget, it would wait)
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    assert tid[:12] in dom and "dashboard-job" in dom, dom[-3000:]
    assert "A1" in dom and "complete" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-dashboard.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,900", url], capture_output=True,
                   timeout=60)
    assert shot.exists() and shot.stat().st_size > 1000
    print(f"dashboard screenshot: {shot}")


def test_history_from_the_logger(stack, tmp_path: Path) -> None:
    """A transfer recorded by `fte logger`, read by an `fte web --db` started after it ended."""
    from ops.history import History

    env, web, data = stack
    db = f"sqlite:///{tmp_path}/history.db"
    log = tmp_path / "logger.log"
    with open(log, "ab") as fh:
        logger = subprocess.Popen([script("logger"), "--db", db], env=env.env, stdout=fh, stderr=fh,
                                  stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "connected to" in log.read_text(errors="replace"), 30, "the logger connects")
        (data / "in" / "hist.bin").write_bytes(b"h" * 5000)
        code, body = call(web, "POST", "/api/v1/transfers", request_doc(data, "hist.bin", job="histjob",
                                                                         exist="overwrite"))
        assert code == 201, body
        tid = body["transfer_id"]

        def recorded() -> bool:
            with History.open(db) as h:
                t = h.transfer(tid)
                return t is not None and t.get("last_event") == "completed"

        wait_until(recorded, 60, "the transfer in the logger's history")
    finally:
        logger.terminate()
        logger.wait(20)
    later = Web(env, {"FTE_WEB_TOKEN": TOKEN}, "--db", db)
    try:
        code, rows = call(later, "GET", "/api/v1/transfers?job_name=histjob")
        assert code == 200 and [r["transfer_id"] for r in rows] == [tid], rows
        assert rows[0]["state"] == "complete" and rows[0]["result_code"] == 0
        code, t = call(later, "GET", f"/api/v1/transfers/{tid}")
        assert code == 200 and any(e.get("received_at") and e["action"] == "completed" for e in t["events"]), t
    finally:
        later.stop()


def test_a_fan_out_in_the_history_names_every_destination(stack, tmp_path: Path) -> None:
    """A fan-out (-da A2,A3) from the history: its destinations in the transfer view, found by either agent."""
    from ops.history import History
    from tests.support import history_events as hev

    env, _, _ = stack
    db = f"sqlite:///{tmp_path}/fanout.db"
    with History.open(db) as h:
        h.record(hev.fanout_started(), verified=True)
        h.record(hev.fanout_completed(), verified=True)
    later = Web(env, {"FTE_WEB_TOKEN": TOKEN}, "--db", db)
    try:
        code, rows = call(later, "GET", "/api/v1/transfers?agent=A3")
        assert code == 200 and [r["transfer_id"] for r in rows] == [hev.TID3], rows
        code, t = call(later, "GET", f"/api/v1/transfers/{hev.TID3}")
        assert code == 200 and [(d["agent"], d["result_code"]) for d in t["destinations"]] == [("A2", 0), ("A3", 40)], t
    finally:
        later.stop()
