"""`scp` and `rsync -e ssh` over loopback, through a private sshd of the benchmark's own.

The sshd (Debian package openssh-server; installed with apt-get when missing and the benchmark runs as
root, else the rows say why they are missing) listens on a free loopback port with its own host key and one
authorized key, both made in a scratch directory; the client trusts nothing and records nothing
(StrictHostKeyChecking=no, UserKnownHostsFile=/dev/null). Each copy is timed together with an fsync of the
written file, as the agents' destination fsyncs a file before reporting it done.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_sshd() -> str | None:
    """None when sshd can be used, else why not (one line for the report)."""
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        return "no ssh client (apt install openssh-client)"
    if os.path.exists(SSHD):
        return None
    if os.geteuid() != 0:
        return "no sshd, and not root to install it (apt install openssh-server)"
    p = subprocess.run(["apt-get", "install", "-y", "-q", "openssh-server"], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if p.returncode != 0 or not os.path.exists(SSHD):
        return f"apt-get install openssh-server failed: {(p.stderr or p.stdout).strip()[-200:]}"
    return None


class PrivateSshd:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = self.dir / "client_key"

    def start(self, timeout: float = 15) -> "PrivateSshd":
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        host_key = self.dir / "host_key"
        for k in (host_key, self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True,
                           capture_output=True)
        auth = self.dir / "authorized_keys"
        auth.write_text((self.key.with_suffix(".pub")).read_text())
        os.chmod(auth, 0o600)
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"AuthorizedKeysFile {auth}",
            f"PidFile {self.dir / 'sshd.pid'}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "PermitRootLogin yes", "Subsystem sftp internal-sftp", ""]))
        # sshd wants its privilege-separation directory even when it never uses it
        Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "sshd.log", "wb"))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-300:]}")
            if subprocess.run(self.ssh_command() + ["true"], capture_output=True, timeout=10).returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError("sshd did not accept a login within {timeout:g} s")

    def ssh_options(self) -> list[str]:
        return ["-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def ssh_command(self) -> list[str]:
        return ["ssh", *self.ssh_options(), "-p", str(self.port), f"{getpass.getuser()}@127.0.0.1"]

    def remote(self, path: Path) -> str:
        return f"{getpass.getuser()}@127.0.0.1:{path}"

    def scp(self, src: Path, dst: Path) -> list[str]:
        return ["scp", "-q", *self.ssh_options(), "-P", str(self.port), str(src), self.remote(dst)]

    def rsync(self, src: Path, dst: Path) -> list[str]:
        ssh = " ".join(["ssh", *self.ssh_options(), "-p", str(self.port)])
        return ["rsync", "-a", "-e", ssh, str(src), self.remote(dst)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def timed_copy_with_fsync(cmd: list[str], written: Path, timeout: float = 1800) -> float:
    """Seconds of `cmd` plus an fsync of the file it wrote."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} -> {p.returncode}: {p.stderr.strip()[:300]}")
    fd = os.open(written, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0
