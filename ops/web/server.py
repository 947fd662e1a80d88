"""The HTTP side of `fte web` (aiohttp): the REST API under /api/v1, the SSE stream, the dashboard.

Every /api request needs `Authorization: Bearer <token>`; the dashboard takes `?token=` once and keeps it in an
HttpOnly, SameSite=Strict cookie. Errors are JSON {"error": message} with a 4xx status; bad input never a 500.
Commands go through cli.client.FteClient, signed with the key of the user who runs `fte web`."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from agent.wire.protocol import CancelTransfer, CreateTransfer, new_transfer_id, utc_now
from cli.client import ClientError, FteClient, new_request_id

from . import auth
from .history_adapter import HistoryAdapter
from .live import Live
from .openapi import openapi_document

log = logging.getLogger("fte.web")
STATIC = Path(__file__).parent / "static"
MAX_BODY = 1024 * 1024  # a transfer request is a few KB; far below the agents' command limit
LIVE_KEY = web.AppKey("live", Live)
CLIENT_KEY = web.AppKey("client", FteClient)
HISTORY_KEY = web.AppKey("history", HistoryAdapter)
TOKEN_KEY = web.AppKey("token", str)
# transfers submitted through this server -> their source agent: a cancel right after the submit must not
# depend on the broker having delivered the transfer's first status to the live view yet
SUBMITTED_KEY = web.AppKey("submitted", dict)
_SUBMITTED_KEEP = 10_000


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                ) -> web.StreamResponse:
    token = request.app[TOKEN_KEY]
    if request.path.startswith("/api/"):
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.startswith("Bearer ") else None
        if given is None:
            given = request.cookies.get(auth.COOKIE)  # the dashboard's own calls (EventSource sends no header)
        if not auth.same(given, token):
            return error("missing or wrong token: send the header 'Authorization: Bearer <token>' (the token is "
                         "FTE_WEB_TOKEN, or the file $FTE_CONFIG_HOME/web/token)", 401)
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(str(exc), exc.status)
    except ClientError as exc:
        return error(str(exc), 502 if "broker" in str(exc) else 409)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error(exc.reason or "error", exc.status)
        raise
    except Exception:
        log.exception("internal error on %s", request.path)
        return error("internal error; see the fte web log", 500)


# --------------------------------------------------------------------------- the dashboard


async def index(request: web.Request) -> web.StreamResponse:
    token = request.app[TOKEN_KEY]
    given = request.query.get("token")
    if given is not None:
        if not auth.same(given, token):
            return web.Response(status=401, content_type="text/html",
                                text="<h1>Wrong token</h1><p>Open the URL that <code>fte web</code> printed.</p>")
        resp = web.HTTPFound("/")
        resp.set_cookie(auth.COOKIE, token, httponly=True, samesite="Strict", path="/")
        return resp
    if not auth.same(request.cookies.get(auth.COOKIE), token):
        return web.Response(status=401, content_type="text/html",
                            text="<h1>Not signed in</h1><p>Open the URL that <code>fte web</code> printed "
                                 "(<code>http://HOST:PORT/?token=...</code>; the token is in "
                                 "$FTE_CONFIG_HOME/web/token or FTE_WEB_TOKEN).</p>")
    # the first view inlined: the page is drawn without waiting for a round trip (and headless browsers see it)
    initial = {"agents": sorted(request.app[LIVE_KEY].agents.values(), key=lambda r: r["name"]),
               "transfers": await _transfer_rows(request.app, None, None, None, None, 200)}
    data = json.dumps(initial).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = (STATIC / "index.html").read_text(encoding="utf-8").replace(
        "<!--INITIAL-->", f'<script id="initial" type="application/json">{data}</script>')
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------- the API


def _since(value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"since={value!r} is not an ISO-8601 time (e.g. 2026-12-02T15:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _check_id(tid: str) -> str:
    if not (1 <= len(tid) <= 64) or not all(c.isalnum() or c in "-_" for c in tid):
        raise BadRequest(f"{tid[:80]!r} is not a transfer id")
    return tid


async def agents(request: web.Request) -> web.Response:
    rows = sorted(request.app[LIVE_KEY].agents.values(), key=lambda r: r["name"])
    return web.json_response(rows)


def _matches(row: dict[str, Any], agent: str | None, since: datetime | None, state: str | None,
             job: str | None) -> bool:
    fanout = [d.get("agent") for d in row.get("destinations") or [] if isinstance(d, dict)]
    if agent and agent not in (row.get("source_agent"), row.get("destination_agent"), *fanout):
        return False
    if state and row.get("state") != state:
        return False
    if job and row.get("job_name") != job:
        return False
    if since:
        t = _time(row.get("created") or row.get("started_at") or row.get("updated"))
        if t is not None and t < since:
            return False
    return True


async def transfers(request: web.Request) -> web.Response:
    q = request.query
    unknown = set(q) - {"agent", "since", "state", "job_name", "limit"}
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))} (known: agent, since, state, "
                         "job_name, limit)")
    since = _since(q.get("since"))
    try:
        limit = int(q.get("limit", "1000"))
        if not 1 <= limit <= 10000:
            raise ValueError
    except ValueError:
        raise BadRequest("limit is a whole number from 1 to 10000") from None
    agent, state, job = q.get("agent") or None, q.get("state") or None, q.get("job_name") or None
    return web.json_response(await _transfer_rows(request.app, agent, since, state, job, limit))


async def _transfer_rows(app: web.Application, agent: str | None, since: datetime | None, state: str | None,
                         job: str | None, limit: int) -> list[dict[str, Any]]:
    """The history's transfers and the live ones (the live view wins for a transfer in both), newest first."""
    merged: dict[str, dict[str, Any]] = {}
    for row in await app[HISTORY_KEY].transfers(agent=agent, since=since, state=state, job_name=job, limit=limit):
        merged[row["transfer_id"]] = {**row, "live": False}
    for tid, row in app[LIVE_KEY].transfers.items():
        if _matches(row, agent, since, state, job):
            merged[tid] = {**merged.get(tid, {}), **row}
    rows = sorted(merged.values(), key=lambda r: str(r.get("created") or r.get("started_at") or r.get("updated")
                                                     or ""), reverse=True)
    return rows[:limit]


async def transfer(request: web.Request) -> web.Response:
    tid = _check_id(request.match_info["id"])
    live = request.app[LIVE_KEY]
    hist = request.app[HISTORY_KEY]
    row = await hist.transfer(tid)
    # the history's events carry the untouched event again under "event": the members are enough here
    events = [{k: v for k, v in e.items() if k != "event"} for e in await hist.events(tid)] if row else []
    if tid in live.transfers:
        row = {**(row or {}), **live.transfers[tid]}
        seen = {e.get("event_id") for e in events}
        events = events + [e for e in live.events.get(tid, ()) if e.get("event_id") not in seen]
    if row is None:
        raise BadRequest(f"no transfer {tid} is known (neither live nor in the history)", 404)
    return web.json_response({**row, "events": events})


async def _body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes", 413)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes", 413)
    return raw


def parse_request(raw: bytes) -> Any:
    """A transfer request as `fte-create-transfer -gt FILE` writes it ({"version": 1, "spec": {...}}), checked
    by the CLI's own models (cli.templates); a TransferSpec, or BadRequest naming the problem."""
    from pydantic_core import from_json

    from cli import templates

    try:
        data = from_json(raw)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict) or "spec" not in data:
        raise BadRequest('the body is a transfer request: {"version": 1, "spec": {...}} as fte-create-transfer -gt '
                         'FILE writes it')
    if data.get("version", templates.REQUEST_VERSION) != templates.REQUEST_VERSION:
        raise BadRequest(f"version {data['version']!r} is not supported (version {templates.REQUEST_VERSION})")
    data.setdefault("version", templates.REQUEST_VERSION)
    try:
        req = templates.RequestFile.model_validate_json(json.dumps(data), strict=True)
        spec = templates.TemplateSpec.model_validate(req.spec.model_dump())
        return templates.merge(spec, templates.Overrides(), "the request")
    except ValidationError as exc:
        raise BadRequest(f"invalid transfer request: {templates._first_error(exc)}") from None
    except (templates.TemplateError, ValueError) as exc:
        raise BadRequest(f"invalid transfer request: {exc}") from None


async def create(request: web.Request) -> web.Response:
    spec = parse_request(await _body(request))
    c = request.app[CLIENT_KEY]
    st = request.app[LIVE_KEY].agents.get(spec.source_agent)
    if st is None:
        raise BadRequest(f"agent {spec.source_agent} is not known on the broker (no status); check the name", 409)
    tid = new_transfer_id()
    cmd = CreateTransfer(kind="create_transfer", request_id=new_request_id(), reply_to=c.client_id,
                         sent_at=utc_now(), transfer_id=tid, spec=spec)
    reply = await c.request(spec.source_agent, cmd, timeout=10)
    if not reply.ok:
        raise BadRequest(f"agent {spec.source_agent} refused the transfer: {reply.message}", 409)
    submitted = request.app[SUBMITTED_KEY]
    submitted[tid] = spec.source_agent
    while len(submitted) > _SUBMITTED_KEEP:
        submitted.pop(next(iter(submitted)))
    return web.json_response({"transfer_id": tid, "state": "submitted", "source_agent": spec.source_agent,
                              **reply.data}, status=201)


async def cancel(request: web.Request) -> web.Response:
    tid = _check_id(request.match_info["id"])
    raw = await _body(request)
    agent = None
    if raw.strip():
        try:
            data = json.loads(raw)
        except ValueError:
            raise BadRequest("the body is optional; when given, JSON {\"agent\": NAME}") from None
        agent = data.get("agent") if isinstance(data, dict) else None
        if agent is not None and not isinstance(agent, str):
            raise BadRequest("agent is the name of an agent")
    if agent is None:
        row = request.app[LIVE_KEY].transfers.get(tid) or await request.app[HISTORY_KEY].transfer(tid) or {}
        agent = row.get("source_agent") or request.app[SUBMITTED_KEY].get(tid)
    if not agent:
        raise BadRequest(f"transfer {tid} is not known here: give its agent, {{\"agent\": NAME}}", 404)
    c = request.app[CLIENT_KEY]
    reply = await c.request(agent, CancelTransfer(kind="cancel_transfer", request_id=new_request_id(),
                                                  reply_to=c.client_id, transfer_id=tid), timeout=10)
    if not reply.ok:
        raise BadRequest(f"agent {agent} refused the cancel: {reply.message}", 409)
    return web.json_response({"transfer_id": tid, "agent": agent, "accepted": True, **reply.data})


async def monitors(request: web.Request) -> web.Response:
    rows = sorted(request.app[LIVE_KEY].monitors.values(), key=lambda r: (str(r.get("agent")), str(r.get("name"))))
    return web.json_response(rows)


async def templates_(request: web.Request) -> web.Response:
    rows = sorted(request.app[LIVE_KEY].templates.values(), key=lambda r: str(r.get("name")))
    return web.json_response(rows)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def events(request: web.Request) -> web.StreamResponse:
    live = request.app[LIVE_KEY]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    q = live.listen()
    try:
        await resp.write(b": connected\n\n")
        while True:
            try:
                item = await asyncio.wait_for(q.get(), 15)
            except asyncio.TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            await resp.write(f"event: {item['type']}\ndata: {json.dumps(item['data'])}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        live.unlisten(q)
    return resp


async def not_found(request: web.Request) -> web.Response:
    return error(f"no such endpoint: {request.method} {request.path} (see /api/v1/openapi.json)", 404)


def make_app(client: FteClient, live: Live, history: HistoryAdapter, token: str) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[CLIENT_KEY], app[LIVE_KEY], app[HISTORY_KEY], app[TOKEN_KEY] = client, live, history, token
    app[SUBMITTED_KEY] = {}
    r = app.router
    r.add_get("/", index)
    r.add_static("/static/", STATIC)
    r.add_get("/api/v1/agents", agents)
    r.add_get("/api/v1/transfers", transfers)
    r.add_post("/api/v1/transfers", create)
    r.add_get("/api/v1/transfers/{id}", transfer)
    r.add_post("/api/v1/transfers/{id}/cancel", cancel)
    r.add_get("/api/v1/monitors", monitors)
    r.add_get("/api/v1/templates", templates_)
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_get("/api/v1/events", events)
    r.add_route("*", "/api/{tail:.*}", not_found)
    return app


async def serve(url: str, bind: str, port: int, db: str | None, token: str, announce: Callable[[int], None]) -> None:
    history = HistoryAdapter.open(db)
    client = FteClient(url)
    await client.connect()
    live = Live(client)
    await live.start()
    app = make_app(client, live, history, token)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=3.0)  # open SSE streams: a quick stop
    await runner.setup()
    site = web.TCPSite(runner, bind, port)
    try:
        await site.start()
    except OSError as exc:
        await client.close()
        raise ClientError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}; choose another --port") from None
    server = site._server
    actual = server.sockets[0].getsockname()[1] if server and server.sockets else port  # type: ignore[union-attr]
    announce(actual)
    stop = asyncio.Event()
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await live.stop()
        await client.close()
        history.close()
