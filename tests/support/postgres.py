"""A PostgreSQL server of the test session's own: initdb + pg_ctl on a free port, never the machine's.

The binaries are found on PATH, else in ``pg_config --bindir``. PostgreSQL refuses to run as root, so
when the tests run as root the data directory is given to the ``postgres`` system user (Debian's
package creates it) and the server runs as that user. The server listens on 127.0.0.1 and on a socket
in its own directory, with trust authentication for local connections (a throwaway cluster).

Use: ``with PostgresServer() as pg: pg.create_database("logger")`` gives
``postgresql://fte@127.0.0.1:PORT/logger``; ``pg.kill()`` / ``pg.start()`` for fault tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.brokers import free_port

PG_MISSING = ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in `pg_config --bindir`; "
              "install postgresql (apt-get install postgresql)")
SUPERUSER = "fte"


def find_pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        if out and (Path(out) / "initdb").exists() and (Path(out) / "pg_ctl").exists():
            return Path(out)
    return None


class PostgresStartError(RuntimeError):
    pass


class PostgresServer:
    """One throwaway PostgreSQL cluster: ``start()``, ``stop()``, ``kill()``, ``url(db)``."""

    def __init__(self, port: int | None = None) -> None:
        bindir = find_pg_bindir()
        if bindir is None:
            raise PostgresStartError(PG_MISSING)
        self.bindir = bindir
        # under /tmp itself, not pytest's tmp_path: that is 0700 root's, where the postgres user cannot go
        self.workdir = Path(tempfile.mkdtemp(prefix="fte-pg-"))
        self.datadir = self.workdir / "data"
        self.sockdir = self.workdir / "sock"
        self.logfile = self.workdir / "postgres.log"
        self.port = port or free_port()
        self._run_as: str | None = "postgres" if os.geteuid() == 0 else None

    # -- plumbing ---------------------------------------------------------------------------------

    def _give(self, path: Path) -> None:
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, user=self._run_as, cwd=str(self.workdir))

    def _init(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self._give(self.workdir)
        for d in (self.datadir, self.sockdir):
            d.mkdir(exist_ok=True)
            self._give(d)
        self.logfile.touch()
        self._give(self.logfile)
        r = self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--no-sync", "--locale=C")
        if r.returncode != 0:
            raise PostgresStartError(f"initdb failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")

    # -- life -------------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> PostgresServer:
        if not (self.datadir / "PG_VERSION").exists():
            self._init()
        opts = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c max_connections=100")
        r = self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", opts, "-w",
                      "-t", str(int(timeout)), "start", timeout=timeout + 10)
        if r.returncode != 0:
            raise PostgresStartError(f"pg_ctl start failed ({r.returncode}): {r.stderr.strip()}\n{self.log_tail()}")
        return self

    def _pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop", timeout=40)

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends go with it); ``start()`` again recovers the cluster."""
        pid = self._pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.05)
            # the backends notice the postmaster's death within moments; the next start checks it
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._backends_alive():
                time.sleep(0.1)

    def _backends_alive(self) -> bool:
        try:
            out = subprocess.run(["pgrep", "-f", f"postgres.*{self.datadir}"], capture_output=True, text=True).stdout
        except OSError:
            return False
        return bool(out.strip())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- databases --------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        r = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        if r.returncode != 0:
            raise PostgresStartError(f"createdb {name} failed: {r.stderr.strip()}")
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.close()
