"""`fte web`: the REST API and the web console (ops.web)."""

from __future__ import annotations

from typing import Optional

import typer

from .app import BROKER_HELP, command, err, out, run
from .client import broker_url


@command("web")
def web(
    port: int = typer.Option(8470, "--port", help="TCP port (0: a free one, printed)."),
    bind: str = typer.Option("127.0.0.1", "--bind", help="Address to listen on (127.0.0.1: this machine only)."),
    db: Optional[str] = typer.Option(None, "--db", help="The history database (sqlite:///ABS/PATH.db or "
                                                        "postgresql://...); default: fte logger's, when it exists."),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
) -> None:
    """Serve the REST API (/api/v1) and the web console until SIGTERM or Ctrl-C."""
    from agent.settings import config_home
    from ops.web import auth
    from ops.web.server import serve

    token, generated = auth.load_token(config_home())
    if not 0 <= port <= 65535:
        err.print(f"error: --port {port} is not a TCP port (0-65535)")
        raise typer.Exit(2)

    def announce(actual: int) -> None:
        host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
        if generated:
            out.print(f"fte web: a new token is in {auth.token_path(config_home())}; open "
                      f"http://{host}:{actual}/?token={token}", markup=False, soft_wrap=True)
        else:
            src = "FTE_WEB_TOKEN" if __import__("os").environ.get("FTE_WEB_TOKEN") else str(
                auth.token_path(config_home()))
            out.print(f"fte web: serving http://{host}:{actual}/ (open http://{host}:{actual}/?token=TOKEN; the "
                      f"token is in {src})", markup=False, soft_wrap=True)

    run(serve(broker_url(broker), bind, port, db, token, announce))
