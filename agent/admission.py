"""Admission: whether this agent takes a new transfer, and which files it is.

As the source: the agent must be running and be the source named, have room (maxSourceTransfers +
maxQueuedTransfers), know its destination agent (agent.peers), and every source must resolve inside the
sandbox to regular files, walked without following a symbolic link (agent.fsops). The outcome is the
transfer's record, ready to be saved and run (agent.transfers), or a CommandRefused saying why not.
As the destination: whether there is room for one more (maxDestinationTransfers).
"""

from __future__ import annotations

import asyncio
import base64
import glob
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NoReturn

from .wire.binding import agent_requester, new_ephemeral
from .wire.encryption import ENCRYPTION
from .commands import CommandRefused
from .core import results, transfer_trigger
from .core.transfer_trigger import PathFact, TransferTrigger, Verdict
from .core.lifecycle import TransferState as S
from .core.policy import PEER_WAIT
from .core.recovery import effective_recovery_timeout
from .core.text_convert import PLATFORM_ENCODING
from .fileio import os_error_at
from .fsops import ConfinedDirs
from .peers import Peers
from .wire.protocol import Resync, Topics, TransferItem, TransferSpec, new_transfer_id
from .sandbox import Sandbox, SandboxError
from .settings import AgentSettings
from .store import FileRecord, StateStore, TransferRecord

log = logging.getLogger("fte.agent")


MAX_SKIPPED_LISTED = 1000  # entries the started event lists of what a walk left out (the count is whole)


@dataclass
class Walked:
    """What a walk of the sources found besides the files: what it left out, as (path, why), and the empty
    directories of a -r transfer, as destination paths (created by the destination agent)."""

    skipped: list[tuple[str, str]] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)


def _is_link(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


class Admission:
    """`admit` a transfer this agent is to send; `destination_room` for one it is offered."""

    def __init__(self, name: str, settings: AgentSettings, topics: Topics, store: StateStore, sandbox: Sandbox,
                 peers: Peers, *, stopping: Callable[[], bool], sources: Callable[[], int]) -> None:
        self._name = name
        self._settings = settings
        self._topics = topics
        self._store = store
        self._sandbox = sandbox
        self._peers = peers
        self._stopping = stopping
        self._sources = sources  # source transfers this agent holds (running and queued)

    async def admit(self, spec: TransferSpec, tid: str | None = None, sent_at: str | None = None,
                    originator: str | None = None) -> TransferRecord | str:
        """The record of a new transfer (not saved yet), or the id of the one already made under `tid` (a
        resubmission after a lost reply). Raises CommandRefused."""
        name, settings = self._name, self._settings
        if self._stopping():
            raise CommandRefused(f"agent {name} is stopping and accepts no new transfers")
        if spec.source_agent != name:
            raise CommandRefused(f"this is agent {name}, not the source agent {spec.source_agent}")
        tid = tid or new_transfer_id()
        if self._store.load_transfer(tid, "source", files=False) is not None:
            return tid
        if settings.maxSourceTransfers == 0:
            raise CommandRefused(f"agent {name} does not send files (maxSourceTransfers=0)", 51)
        room = settings.maxSourceTransfers + settings.maxQueuedTransfers
        if self._sources() >= room:
            raise CommandRefused(f"agent {name} has too many transfers (maxSourceTransfers + maxQueuedTransfers = "
                                 f"{room}); retry later")
        await self._destinations_known(spec.destination_agents or [spec.destination_agent])
        try:
            rt = effective_recovery_timeout(spec.recovery_timeout, settings.transferRecoveryTimeout)
        except ValueError as exc:
            raise CommandRefused(str(exc)) from None
        verdict = self.check_trigger(spec.trigger) if spec.trigger is not None else None
        walked = Walked()
        files = self.resolve_sources(spec, walked) if verdict is None or verdict.met else []
        header = {"source_agent": name, "destination_agent": spec.destination_agent, "exist": spec.exist,
                  "disposition": spec.disposition, "checksum": spec.checksum, "job_name": spec.job_name,
                  "metadata": dict(spec.metadata), "recovery_timeout_requested": spec.recovery_timeout,
                  "requested_at": sent_at, "originator": originator,
                  "priority": spec.priority or 0, "bandwidth": spec.bandwidth}
        if spec.destination_agents is not None:  # a fan-out (-da A2,A3,...): destination_agent is the first
            header["destination_agents"] = list(spec.destination_agents)
        if spec.mode == "text":  # -sce left out: this (the source) agent's platform encoding
            header["text"] = {"source_encoding": spec.source_encoding or PLATFORM_ENCODING,
                              "destination_encoding": spec.destination_encoding,
                              "line_ending": spec.destination_line_ending}
        if spec.programs is not None:  # run by the transfer (agent.programs), kept across restarts
            header["programs"] = spec.programs.model_dump(mode="json", exclude_none=True)
        if walked.skipped:
            header["skipped"] = [{"source": p, "reason": why} for p, why in walked.skipped[:MAX_SKIPPED_LISTED]]
            header["skipped_count"] = len(walked.skipped)
        if walked.directories:
            header["directories"] = walked.directories
        kx_private, kx_public = new_ephemeral()  # our half of the transfer key exchange (agent.wire.binding)
        header.update(kx_private=base64.b64encode(kx_private).decode(), kx_public=kx_public)
        if verdict is not None and not verdict.met:
            # ended before it began: agent.transfers logs trigger_not_met and runs nothing
            header.update(trigger=spec.trigger, trigger_reason=verdict.reason)
            return TransferRecord(tid, "source", S.FAILED.value, spec.destination_agent, header,
                                  result_code=transfer_trigger.RESULT_CODE, recovery_timeout=rt)
        if settings.agentEncryption:
            header.update(encryption=ENCRYPTION, peer_offer_key=self._offer_key(spec.destination_agent))
        return TransferRecord(tid, "source", S.QUEUED.value, spec.destination_agent, header, recovery_timeout=rt,
                              files=files)

    def _offer_key(self, agent: str) -> str:
        """The destination's offer key, to encrypt the transfer to (refused, saying so, when it has none)."""
        key = self._peers.offer_keys.get(agent)
        if key is None:
            raise CommandRefused(
                f"destination agent {agent!r} cannot receive encrypted transfers (its status offers no encryption "
                f"key: an older version); upgrade it, or set agentEncryption=false on agent {self._name} to send "
                f"in the clear", results.FAILED)
        return key

    async def _destinations_known(self, agents: list[str]) -> None:
        """Every destination agent known and trusted (all waited for at once); else refused with result 40,
        naming the first that is not, in the order given."""
        known = await asyncio.gather(*(self._peers.wait(agent, PEER_WAIT) for agent in agents))
        for agent, ok in zip(agents, known):
            if not ok:
                self._unknown_destination(agent)

    def _unknown_destination(self, agent: str) -> NoReturn:
        if self._peers.untrusted(agent):
            raise CommandRefused(
                f"destination agent {agent!r} is on the broker, but agent {self._name} does not trust its key (its "
                f"status cannot be verified); trust it with: fte key trust {self._name} {agent_requester(agent)} KEY "
                f"-p transfer", results.FAILED)
        raise CommandRefused(
            f"destination agent {agent!r} is not known on this broker (no status on "
            f"{self._topics.agent_status(agent)}); check the name with fte-list-agents", results.FAILED)

    def destination_room(self, msg: Resync, active: int) -> bool:
        """Room for the transfer `msg` offers, with `active` destination transfers running? If not, it gets no
        answer, so that its source keeps negotiating (it waits, like the reference's
        WaitingForDestinationCapacity); with maxDestinationTransfers=0 it never gets one."""
        limit = self._settings.maxDestinationTransfers
        if limit and active < limit:
            return True
        log.warning("transfer %s from %s deferred: %d of maxDestinationTransfers=%d in use",
                    msg.transfer_id, msg.source_agent, active, limit)
        return False

    # ------------------------------------------------------------------ the trigger (-tr)

    def check_trigger(self, text: str) -> Verdict:
        """Whether the transfer's trigger condition holds now, on what is at its paths in the sandbox (a link
        is not followed). Raises CommandRefused for a path the agent may not look at, as for a source."""
        trigger = TransferTrigger.parse(text)  # checked by the TransferSpec already
        dirs = ConfinedDirs(self._sandbox)
        try:
            facts = {p: self._path_fact(p, dirs) for p in trigger.paths}
        except SandboxError as exc:
            raise CommandRefused(f"trigger refused: {exc}") from None
        except OSError as exc:
            raise CommandRefused(f"cannot evaluate the trigger on agent {self._name}: {os_error_at(exc)}") from None
        finally:
            dirs.close()
        return trigger.evaluate(facts)

    def _path_fact(self, path: str, dirs: ConfinedDirs) -> PathFact:
        self._sandbox.resolve(path, write=False)  # '..', NUL, too long, outside the sandbox: refused
        raw = os.path.expanduser(path)
        parent, name = os.path.split(os.path.join(str(self._sandbox.base), raw).rstrip("/") or "/")
        if not name:  # "/" itself
            return PathFact("directory")
        # the parent resolved, the leaf as it is (lstat relative to the parent's descriptor: never followed)
        st = dirs.lstat(os.path.join(str(self._sandbox.resolve(parent, write=False)), name))
        if st is None:
            return PathFact("missing")
        if stat.S_ISLNK(st.st_mode):
            return PathFact("link")
        if stat.S_ISREG(st.st_mode):
            return PathFact("file", st.st_size)
        return PathFact("directory" if stat.S_ISDIR(st.st_mode) else "other")

    # ------------------------------------------------------------------ the sources

    def resolve_sources(self, spec: TransferSpec, walked: "Walked | None" = None) -> list[FileRecord]:
        """The files of `spec`, in the order they are sent; what was left out and the empty directories go in
        `walked`. Raises CommandRefused."""
        dirs = ConfinedDirs(self._sandbox)
        try:
            return self._walk(spec, dirs, walked if walked is not None else Walked())
        except SandboxError as exc:
            raise CommandRefused(f"source refused: {exc}") from None
        except OSError as exc:  # unreadable, vanished while walking, name too long...
            raise CommandRefused(f"cannot read the sources on agent {self._name}: {os_error_at(exc)}") from None
        finally:
            dirs.close()

    def _walk(self, spec: TransferSpec, dirs: ConfinedDirs, walked: "Walked") -> list[FileRecord]:
        pairs: list[tuple[str, str]] = []
        stats: dict[str, os.stat_result] = {}
        for item in spec.items:
            before = len(pairs)
            self._walk_item(item, pairs, dirs, stats, walked)
            if item.destination_type == "file" and len(pairs) - before > 1:
                # one -df names one file (a monitor batch has one -df item per file, which is fine)
                raise CommandRefused(f"-df {item.destination} names one destination file but {item.source} is "
                                     f"{len(pairs) - before} files; use -dd DIR")
        seen: set[str] = set()
        for _, d in pairs:
            if d in seen:
                raise CommandRefused(f"two sources would land on the same destination file {d} (-df names one "
                                     "file: for several sources use -dd DIR)")
            seen.add(d)
        if not pairs:
            left = f" ({len(walked.skipped)} left out, e.g. {walked.skipped[0][0]}: {walked.skipped[0][1]})" \
                if walked.skipped else ""
            raise CommandRefused(f"the sources contain no files{left}")
        files = []
        for i, (p, dest) in enumerate(pairs):
            st = stats.get(p) or (os.stat(p) if not self._sandbox.enabled else dirs.lstat(p))
            if st is None:
                raise FileNotFoundError(f"source {p!r} vanished while it was being listed")
            files.append(FileRecord(i, p, dest, st.st_size, st.st_mtime))
        return files

    def _walk_item(self, item: TransferItem, pairs: list[tuple[str, str]], dirs: ConfinedDirs,
                   stats: dict[str, os.stat_result], walked: "Walked") -> None:
        """Append (source path, destination) for every file one source specification names."""
        literal = os.path.expanduser(item.source)
        # a name that exists is itself, even if it contains wildcard characters ("report[final].csv")
        matches = sorted(glob.glob(literal)) if any(c in item.source for c in "*?[") \
            and not os.path.lexists(literal) else [literal]
        if not matches:
            raise CommandRefused(f"source {item.source!r} matches no file on agent {self._name}")
        for m in matches:
            if _is_link(os.path.join(str(self._sandbox.base), m)):
                # never followed: left out (and said) when a wildcard found it, refused when it was named
                if len(matches) > 1 or m != literal:
                    walked.skipped.append((m, "a symbolic link, not followed"))
                    continue
                raise CommandRefused(f"source {m!r} is a symbolic link, which is not followed: name the file or "
                                     "directory it points to")
            try:
                real = self._sandbox.resolve(m, write=False)
            except SandboxError as exc:
                raise CommandRefused(f"source refused: {exc}") from None
            if real.is_dir():
                if item.destination_type != "directory":
                    raise CommandRefused(f"source {m!r} is a directory: give a destination directory with -dd")
                # `real` is resolved and no symbolic link is followed below it: each p is its own real path,
                # and "<destination>/<the directory's name>/<p below it>" its destination
                top = str(real)
                base = os.path.join(str(Path(item.destination)), real.name)
                empty: list[str] = []
                for p in _regular_files(top, item.recursive, dirs, stats, walked.skipped, empty):
                    pairs.append((p, base + p[len(top):]))
                walked.directories += [base + d[len(top):] for d in sorted(empty, key=lambda p: p.split("/"))]
            elif real.is_file():
                dest = item.destination if item.destination_type == "file" else str(Path(item.destination) / real.name)
                pairs.append((str(real), dest))
            else:
                raise CommandRefused(f"source {m!r} does not exist on agent {self._name}")


def _regular_files(root: str, recursive: bool, dirs: ConfinedDirs, stats: dict[str, os.stat_result],
                   skipped: list[tuple[str, str]], empty: list[str]) -> list[str]:
    """The regular files in `root` (and below it, if `recursive`), sorted by path; symbolic links are
    neither followed nor listed, and each directory is opened relative to its parent without following a
    link (agent/fsops.py), so that a directory swapped for a link during the walk lists nothing outside.
    Their lstat goes in `stats`. Strings, not Paths: a Path per file cost more than the walk itself."""
    found: list[str] = []
    for p, st in dirs.regular_files(root, recursive, skipped, empty):
        found.append(p)
        stats[p] = st
    # sorted as Paths were (component by component: "a/b" before "a-c"), so the send order is unchanged
    return sorted(found, key=lambda p: p.split("/"))
