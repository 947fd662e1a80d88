"""The web console's token: FTE_WEB_TOKEN, else one generated at first start into
$FTE_CONFIG_HOME/web/token (0600)."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

COOKIE = "fte_web_token"


def token_path(home: Path) -> Path:
    return home / "web" / "token"


def load_token(home: Path, env: dict[str, str] | os._Environ[str] = os.environ) -> tuple[str, bool]:
    """(token, generated now). Generated tokens are written with mode 0600, never replaced."""
    given = env.get("FTE_WEB_TOKEN")
    if given:
        return given, False
    path = token_path(home)
    try:
        text = path.read_text().strip()
        if text:
            return text, False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token, True


def same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
