"""Who may command an agent: Ed25519-signed commands checked against the agent's trusted keys.

A requester (a person or a program) holds a private key in $FTE_CONFIG_HOME/keys/<requester>.key.
Every command it sends carries `requester`, `target` (the agent it is for), `nonce`, `sent_at` and a
`signature` over the canonical JSON of everything else. An agent with authorityChecking=true accepts a
command only when: the requester is not an agent's identity key (`agent.<NAME>`), is in its
authorized_requesters file, the signature verifies, sent_at is within MAX_SKEW of its clock, the signed
target is this agent and the signed kind the command it runs, the nonce was never seen before (replay;
remembered in the agent's state store, so also across restarts), and the requester holds the permission
the command needs. Otherwise: result 53, a log event, and nothing happens.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .core.errors import FteError
from .atomic_files import locked, write_atomic

# A command older or newer than this (seconds) is refused: with the nonce cache, this stops replays.
MAX_SKEW = 300
PERMISSIONS = ("transfer", "cancel", "monitor", "admin")
# What each command needs; commands that only read need nothing beyond being a trusted requester.
REQUIRED = {"create_transfer": "transfer", "cancel_transfer": "cancel", "stop_agent": "admin",
            "ping": None, "query_transfer": None, "list_transfers": None,
            "create_monitor": "monitor", "delete_monitor": "monitor", "stop_monitor": "monitor",
            "start_monitor": "monitor", "list_monitors": None,
            "create_schedule": "transfer", "delete_schedule": "transfer", "list_schedules": None}
REQUESTER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
TRUST_FILE = "authorized_requesters"
# Names of agents' identity keys in a trust file (agent.wire.binding.agent_requester). They bind transfers and
# are never requesters: a command signed by one is refused, and no requester key may take such a name.
AGENT_KEY_PREFIX = "agent."
# The only permission an agent identity key may be trusted with (to offer and accept transfers).
AGENT_KEY_PERMISSION = "transfer"


class AuthError(FteError):
    """A command that must not be executed; the message says why (it goes into the reply and the log)."""


def requester_name(env: Mapping[str, str] = os.environ) -> str:
    name = env.get("FTE_REQUESTER") or getpass.getuser()
    name = re.sub(r"[^A-Za-z0-9_.@-]", "_", name)[:64]
    return name or "requester"


def is_agent_key_name(name: str) -> bool:
    """Whether `name` is in the namespace of agents' identity keys (any case, so `Agent.A1` is too)."""
    return name.lower().startswith(AGENT_KEY_PREFIX)


def check_requester_name(name: str) -> None:
    """A name a requester key may have: raise ValueError saying why not."""
    if not REQUESTER_RE.match(name):
        raise ValueError(f"requester name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
    if is_agent_key_name(name):
        raise ValueError(f"requester name {name!r} is taken: names starting with {AGENT_KEY_PREFIX!r} are agents' "
                         "identity keys (fte key show --agent NAME), never requesters; choose another name")


def check_trust_entry(name: str, permissions: str) -> None:
    """What `fte key trust` may add: an agent's identity key (`agent.<NAME>`) only with the transfer permission,
    which lets it take part in transfers and command nothing. Raise ValueError saying why not."""
    if not REQUESTER_RE.match(name):
        raise ValueError(f"requester name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
    if is_agent_key_name(name) and permissions != AGENT_KEY_PERMISSION:
        raise ValueError(f"{name} names an agent's identity key, which is trusted only to take part in transfers: "
                         f"use -p {AGENT_KEY_PERMISSION} (an agent key never commands an agent)")


def keys_dir(config_home: Path) -> Path:
    return config_home / "keys"


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(_public_raw(key)).decode()


def load_public(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except Exception:
        raise ValueError(f"{text[:20]!r}... is not a base64 Ed25519 public key") from None


def generate_key(config_home: Path, name: str, overwrite: bool = False) -> Path:
    """Create the requester's key pair; the private key file is readable by its owner only.

    Under the keys directory's lock, each file written whole (agent.atomic_files): two processes creating
    the same key at once never overwrite each other, and nobody reads a half-written key."""
    check_requester_name(name)
    d = keys_dir(config_home)
    path = d / f"{name}.key"
    with locked(d):
        if path.exists() and not overwrite:
            raise FileExistsError(f"a key for {name} already exists: {path}")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            write_atomic(path, pem, 0o600, replace=overwrite)
        except FileExistsError:
            raise FileExistsError(f"a key for {name} already exists: {path}") from None
        write_atomic(d / f"{name}.pub", (public_text(key.public_key()) + "\n").encode(), 0o644)
    return path


def load_private(config_home: Path, name: str) -> Ed25519PrivateKey | None:
    path = keys_dir(config_home) / f"{name}.key"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def ensure_key(config_home: Path, name: str) -> Ed25519PrivateKey:
    key = load_private(config_home, name)
    if key is None:
        try:
            generate_key(config_home, name)
        except FileExistsError:
            pass  # another process created it a moment ago: use that one
        key = load_private(config_home, name)
    assert key is not None
    return key


# --------------------------------------------------------------------------- signing


def canonical(command: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in command.items() if k != "signature" and v is not None}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(command: dict[str, Any], requester: str, key: Ed25519PrivateKey, *, target: str) -> dict[str, Any]:
    """Add requester, target, nonce, sent_at and signature to a command (a JSON-ready dict).

    `target` is the agent the command is for: signed with the rest, so that the same bytes published on another
    agent's command topic are refused there (the command's `kind` is signed too)."""
    signed = dict(command)
    signed["requester"] = requester
    signed["target"] = target
    signed["nonce"] = secrets.token_hex(16)
    signed.setdefault("sent_at", datetime.now().astimezone().isoformat())
    signed.pop("signature", None)
    signed["signature"] = base64.b64encode(key.sign(canonical(signed))).decode()
    return signed


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class TrustedRequester:
    name: str
    key: Ed25519PublicKey
    permissions: frozenset[str]


def key_lines(text: str, path: Path, fields: int, expected: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each line of a key-list file (trusted_requesters, trusted_creators,
    trusted_agents): `#` starts a comment, blank lines are skipped, and a line of other than `fields` fields
    is a ValueError `path:line: expected '<expected>'`."""
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) != fields:
            raise ValueError(f"{path}:{n}: expected '{expected}'")
        yield n, parts


@contextmanager
def at_line(path: Path, n: int) -> Iterator[None]:
    """A ValueError raised inside (a key that does not load, a bad name) says where: `path:line: reason`."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"{path}:{n}: {exc}") from None


def parse_trust_file(text: str, path: Path) -> dict[str, TrustedRequester]:
    """Lines: `<requester> <base64 public key> <permission,...|all>`; `#` starts a comment."""
    trusted: dict[str, TrustedRequester] = {}
    for n, (name, pub, perms) in key_lines(text, path, 3, "<requester> <public key> <permissions>"):
        wanted = set(PERMISSIONS) if perms == "all" else set(perms.split(","))
        unknown = wanted - set(PERMISSIONS)
        if unknown:
            raise ValueError(f"{path}:{n}: unknown permission(s) {', '.join(sorted(unknown))}; "
                             f"use {', '.join(PERMISSIONS)} or all")
        with at_line(path, n):
            key = load_public(pub)
        trusted[name] = TrustedRequester(name, key, frozenset(wanted))
    return trusted


def _raw_key(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


def _local_agent_keys(agents_dir: Path) -> dict[bytes, str]:
    """raw public key -> name of each agent configured beside (agents/<NAME>/agent.key); unreadable ones skipped."""
    found: dict[bytes, str] = {}
    try:
        homes = sorted(agents_dir.iterdir())
    except OSError:
        return found
    for home in homes:
        try:
            key = serialization.load_pem_private_key((home / "agent.key").read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            continue
        if isinstance(key, Ed25519PrivateKey):
            found[_public_raw(key.public_key())] = home.name
    return found


def check_key_namespace(name: str, public: str, lines: list[str], agents_dir: Path) -> None:
    """An agent's identity key never becomes a requester under another name (it would command every agent that
    trusts it), nor a requester's key an agent's: raise ValueError when `public`, to be trusted as `name`, is
    already trusted in the other namespace in `lines` (the trust file), or, for a requester, is the identity
    key of an agent configured in `agents_dir`."""
    raw = _raw_key(public)
    as_agent = is_agent_key_name(name)
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2 or parts[0] == name or _raw_key(parts[1]) != raw:
            continue
        if is_agent_key_name(parts[0]) and not as_agent:
            raise ValueError(f"this key is trusted here as {parts[0]}, an agent's identity key, which only takes "
                             f"part in transfers and never commands an agent: it cannot be requester {name!r}; "
                             "trust the requester's own key (its fte key show)")
        if not is_agent_key_name(parts[0]) and as_agent:
            raise ValueError(f"this key is trusted here as requester {parts[0]!r}, not an agent's identity key: "
                             f"it cannot be {name}; trust the agent's key (fte key show --agent NAME where the "
                             "agent is configured)")
    if not as_agent:
        owner = _local_agent_keys(agents_dir).get(raw or b"")
        if owner is not None:
            raise ValueError(f"this key is the identity key of agent {owner} (agents/{owner}/agent.key), which "
                             f"only takes part in transfers and never commands an agent: it cannot be requester "
                             f"{name!r}; trust the requester's own key (its fte key show)")


def trust(agent_dir: Path, name: str, public: str, permissions: str = "all") -> Path:
    """Add (or replace) a requester in an agent's trust file (an agent key only with the transfer permission;
    never the same key in both namespaces: check_key_namespace)."""
    load_public(public)
    check_trust_entry(name, permissions)
    path = agent_dir / TRUST_FILE
    # read, change and write back under the agent directory's lock: two processes adding a requester
    # at once (fte-create-agent run in parallel) must both find their line in the file afterwards
    with locked(agent_dir):
        lines = path.read_text().splitlines() if path.exists() else [
            "# Requesters this agent obeys: <requester> <Ed25519 public key, base64> <permissions>",
            f"# permissions: {','.join(PERMISSIONS)} or all. Manage with: fte key trust / fte key untrust"]
        check_key_namespace(name, public, lines, agent_dir.parent)
        lines = [ln for ln in lines if ln.split("#", 1)[0].split()[:1] != [name]]
        lines.append(f"{name} {public} {permissions}")
        write_atomic(path, ("\n".join(lines) + "\n").encode(), _mode_of(path, 0o644))
    return path


def untrust(agent_dir: Path, name: str) -> bool:
    """Remove a requester (or an agent key, agent.NAME) from an agent's trust file; False if it was not there.
    Under the same lock as trust(); the agent re-reads the file when it changes, so it obeys no more at once."""
    path = agent_dir / TRUST_FILE
    with locked(agent_dir):
        if not path.exists():
            return False
        lines = path.read_text().splitlines()
        kept = [ln for ln in lines if ln.split("#", 1)[0].split()[:1] != [name]]
        if len(kept) == len(lines):
            return False
        write_atomic(path, ("\n".join(kept) + "\n").encode(), _mode_of(path, 0o644))
    return True


class NonceLedger(Protocol):
    """Where an agent remembers the nonces of the commands it accepted, until they expire."""

    def claim_nonce(self, nonce: str, expires: float, now: float) -> bool:
        """Record `nonce` until `expires`; False if it is already recorded (and not expired at `now`)."""
        ...


class MemoryNonces:
    """A NonceLedger that forgets at restart: for tests and tools; an agent uses its state store."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def claim_nonce(self, nonce: str, expires: float, now: float) -> bool:
        self._seen = {n: t for n, t in self._seen.items() if t > now}
        if nonce in self._seen:
            return False
        self._seen[nonce] = expires
        return True


def sent_when(delta: float) -> str:
    """`delta` seconds (now - sent_at) in words: "301 s ago", "301 s in the future"."""
    return f"{delta:.0f} s ago" if delta >= 0 else f"{-delta:.0f} s in the future"


def _mode_of(path: Path, default: int) -> int:
    """The permission bits `path` has (kept when it is rewritten), or `default` for a new file."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return default


class Authority:
    """An agent's check of incoming commands (used only when authorityChecking=true)."""

    def __init__(self, trust_path: Path, clock: Any = time.time, nonces: NonceLedger | None = None) -> None:
        self.trust_path = trust_path
        self._clock = clock
        # a nonce is kept for twice the freshness window: any copy of the command that is still fresh is refused
        self._nonces: NonceLedger = nonces if nonces is not None else MemoryNonces()
        self._mtime = -1.0
        self._trusted: dict[str, TrustedRequester] = {}
        self._agent_keys: dict[bytes, str] = {}  # raw public key -> agent.<NAME> entry with that key

    def trusted(self) -> dict[str, TrustedRequester]:
        # re-read when the file changes, so `fte key trust` takes effect without a restart
        try:
            mtime = self.trust_path.stat().st_mtime
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            self._trusted = parse_trust_file(self.trust_path.read_text(), self.trust_path)
            self._agent_keys = {_public_raw(t.key): n for n, t in self._trusted.items() if is_agent_key_name(n)}
            self._mtime = mtime
        return self._trusted

    def check(self, raw: Mapping[str, Any], *, agent: str, kind: str) -> str:
        """Return the requester's name, or raise AuthError saying why the command is refused.

        `raw` is the command as received (its JSON object); `agent` the name of the agent checking it and `kind`
        the command it is about to run (as parsed): the signed `target` and `kind` must be these."""
        requester, signature, nonce = raw.get("requester"), raw.get("signature"), raw.get("nonce")
        if not requester or not signature or not nonce:
            raise AuthError("the command is not signed (authority checking is on); "
                            "create a key with: fte key generate, and ask the agent's owner to trust it")
        if is_agent_key_name(str(requester)):
            raise AuthError(f"requester {requester!r} is an agent's identity key, which only binds transfers and "
                            "never commands an agent; sign with a requester key (fte key generate)")
        entry = self.trusted().get(str(requester))
        if entry is None:
            raise AuthError(f"requester {requester!r} is not trusted by this agent")
        try:
            entry.key.verify(base64.b64decode(str(signature), validate=True), canonical(raw))
        except (InvalidSignature, ValueError):
            raise AuthError(f"bad signature for requester {requester!r}") from None
        # a trust file edited by hand may list an agent's identity key under a requester's name (fte key trust
        # refuses that): such a key still commands nothing
        as_agent = self._agent_keys.get(_public_raw(entry.key))
        if as_agent is not None:
            raise AuthError(f"requester {requester!r} has the key of {as_agent}, an agent's identity key, which only "
                            "binds transfers and never commands an agent; remove the line of "
                            f"{str(requester)!r} from {self.trust_path}")
        try:
            sent = datetime.fromisoformat(str(raw.get("sent_at")).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise AuthError("the command has no valid sent_at time") from None
        now = self._clock()
        if abs(now - sent) > MAX_SKEW:
            raise AuthError(f"the command was sent {sent_when(now - sent)} (more than {MAX_SKEW} s "
                            "apart: a replay, or clocks out of sync)")
        target = raw.get("target")
        if target is None:
            # signed by an fte older than target binding: such bytes are valid on every agent's topic
            raise AuthError("the command does not name the agent it is for (no signed 'target': sent by an older "
                            "fte?); upgrade the command's fte")
        if target != agent:
            raise AuthError(f"the command is addressed to agent {str(target)[:64]!r}, not to {agent!r} "
                            "(a copy republished on another agent's topic)")
        if raw.get("kind") != kind:
            raise AuthError(f"the signed command is {str(raw.get('kind'))[:64]!r}, not {kind!r}")
        if not self._nonces.claim_nonce(str(nonce), now + 2 * MAX_SKEW, now):
            raise AuthError("the command was already received once (a replay)")
        needed = REQUIRED.get(kind, "admin")
        if needed and needed not in entry.permissions:
            raise AuthError(f"requester {requester!r} lacks the {needed!r} permission for {kind}")
        return str(requester)
