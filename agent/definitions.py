"""Signed definitions: a template (or any stored definition) carries its creator's Ed25519 signature.

A template lives retained on the broker, where anyone who may publish can replace it; whoever then submits
it signs the transfer with their own key, so without this the submitter would sign an attacker's spec. The
creator signs the definition with their requester key ($FTE_CONFIG_HOME/keys/<requester>.key, the key that
signs their commands), and every reader checks it against the creators it trusts before using it.

What is signed: a domain tag, the definition's kind and its name, then the canonical JSON of the document
without its `signature` (`agent.auth.canonical`). The tag keeps a definition signature and a command
signature (canonical JSON alone) from ever standing in for each other although the same key makes both;
kind and name bind it to where it was meant to be, so a valid signed template `daily` republished as
`nightly` (or as a monitor) does not verify.

Which creators a client trusts: its own requester keys ($FTE_CONFIG_HOME/keys/*.pub) and the lines of
$FTE_CONFIG_HOME/keys/trusted_creators (`<requester> <base64 Ed25519 public key>`), managed with
`fte key trust-creator` / `fte key untrust-creator` / `fte key creators`. See docs/authority.md.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .core.errors import FteError
from .atomic_files import locked, write_atomic
from .auth import REQUESTER_RE, at_line, canonical, is_agent_key_name, key_lines, keys_dir, load_public, public_text

DOMAIN = b"mqtt-fte signed definition v1\n"
KINDS = ("template", "monitor", "schedule")
TRUSTED_CREATORS = "trusted_creators"
# Agents' identity keys are named agent.<NAME> (agent.wire.binding): they bind transfers and never create
# definitions, so such a name is refused as a creator.


class DefinitionTrustError(FteError):
    """A definition that must not be used: unsigned, signed by an untrusted creator, or a bad signature.
    The message is one line saying which and what to do."""


def signed_bytes(kind: str, name: str, document: Mapping[str, Any]) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown definition kind {kind!r}")
    return DOMAIN + kind.encode() + b"\n" + name.encode() + b"\n" + canonical(document)


def sign_definition(kind: str, name: str, document: Mapping[str, Any], creator: str,
                    key: Ed25519PrivateKey) -> dict[str, Any]:
    """`document` with `created_by` = creator and a `signature` over kind, name and the rest."""
    signed = {k: v for k, v in document.items() if k != "signature"}
    signed["created_by"] = creator
    signed["signature"] = base64.b64encode(key.sign(signed_bytes(kind, name, signed))).decode()
    return signed


# --------------------------------------------------------------------------- whom a client trusts


def parse_creators(text: str, path: Path) -> dict[str, list[Ed25519PublicKey]]:
    """Lines `<requester> <base64 Ed25519 public key>`; `#` starts a comment. A name may have several keys."""
    found: dict[str, list[Ed25519PublicKey]] = {}
    for n, (name, pub) in key_lines(text, path, 2, "<requester> <public key>"):
        with at_line(path, n):
            found.setdefault(name, []).append(load_public(pub))
    return found


@dataclass(frozen=True)
class Creator:
    name: str
    key: Ed25519PublicKey
    source: str  # "own key" or "trusted_creators"


class DefinitionTrust:
    """The creators whose definitions this client uses: its own requester keys and trusted_creators."""

    def __init__(self, config_home: Path) -> None:
        self.dir = keys_dir(config_home)

    def creators(self) -> list[Creator]:
        out: list[Creator] = []
        if self.dir.is_dir():
            for pub in sorted(self.dir.glob("*.pub")):
                try:
                    out.append(Creator(pub.stem, load_public(pub.read_text().strip()), "own key"))
                except (OSError, ValueError):
                    continue  # not a key of ours: it cannot vouch for anything
        path = self.dir / TRUSTED_CREATORS
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        for name, keys in parse_creators(text, path).items():
            out += [Creator(name, k, TRUSTED_CREATORS) for k in keys]
        return out

    def verify(self, kind: str, name: str, document: Mapping[str, Any]) -> str:
        """The creator's name if `document` is `kind` `name` signed by a trusted creator; else raises
        DefinitionTrustError (one line: what is wrong and how to fix it)."""
        what = f"{kind} {name}"
        recreate = f"recreate it with: fte-create-{kind} -tn {name} --force" if kind == "template" else \
            f"create it again with fte-create-{kind}"
        creator, signature = document.get("created_by"), document.get("signature")
        if not signature or not creator:
            raise DefinitionTrustError(f"{what} is not signed by its creator (made by an older fte, or by "
                                       f"someone else), so it is not used; {recreate}")
        creator = str(creator)
        if is_agent_key_name(creator):
            raise DefinitionTrustError(f"{what} claims agent identity {creator!r} as its creator; agents do "
                                       f"not create {kind}s, so it is not used; {recreate}")
        keys = [c.key for c in self.creators() if c.name == creator]
        if not keys:
            raise DefinitionTrustError(
                f"{what} was created by {creator!r}, whose key you do not trust, so it is not used; if "
                f"{creator} really made it, add their key (from their fte key show) with: fte key trust-creator "
                f"{creator} KEY")
        try:
            sig = base64.b64decode(str(signature), validate=True)
        except ValueError:
            sig = b""
        data = signed_bytes(kind, name, document)
        for key in keys:
            try:
                key.verify(sig, data)
                return creator
            except InvalidSignature:
                continue
        raise DefinitionTrustError(f"{what} has a bad signature for its creator {creator!r} (changed after it "
                                   f"was signed, published under another name, or forged), so it is not used; "
                                   f"{recreate}")


# --------------------------------------------------------------------------- editing trusted_creators


def _rewrite(path: Path, lines: list[str]) -> None:
    write_atomic(path, ("\n".join(lines) + "\n").encode(), 0o644)


def _lines(path: Path) -> list[str]:
    if path.exists():
        return path.read_text().splitlines()
    return ["# Creators whose templates (and other definitions) this client uses, besides its own keys:",
            "# <requester> <Ed25519 public key, base64>. Manage with: fte key trust-creator / untrust-creator"]


def trust_creator(config_home: Path, name: str, public: str) -> Path:
    """Trust `public` as a key of creator `name` (a line added once; other keys of the name stay)."""
    key = load_public(public)
    if not REQUESTER_RE.match(name):
        raise ValueError(f"requester name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
    if is_agent_key_name(name):
        raise ValueError(f"{name!r} is an agent's identity key name; agents do not create templates")
    # two `fte key trust-creator` at once must not lose each other's line: read-modify-write under the keys
    # directory's lock (agent.atomic_files), and a reader sees the old file or the new one, never half of it
    path = keys_dir(config_home) / TRUSTED_CREATORS
    with locked(path.parent):
        lines = _lines(path)
        text = public_text(key)
        if not any(ln.split("#", 1)[0].split() == [name, text] for ln in lines):
            lines.append(f"{name} {text}")
        _rewrite(path, lines)
    return path


def untrust_creator(config_home: Path, name: str) -> bool:
    """Remove every trusted_creators line of `name`; False if there was none. Own keys are not touched."""
    path = keys_dir(config_home) / TRUSTED_CREATORS
    with locked(path.parent):
        lines = _lines(path)
        kept = [ln for ln in lines if ln.split("#", 1)[0].split()[:1] != [name]]
        if len(kept) == len(lines):
            return False
        _rewrite(path, kept)
    return True
