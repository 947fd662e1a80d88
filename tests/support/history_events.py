"""Log events as the agents publish them (docs/log-events.md), for the history's tests."""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count(1)
TID = "414d5120514d312020202020202020206a1c4f6520000b07"
TID2 = "414d5120514d312020202020202020206a1c4f6520000c12"


def _head(action: str, state: str, time: str, tid: str = TID, agent: str = "A1", role: str = "source",
          job_name: str | None = "nightly", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"{next(_ids):032x}", "transfer_id": tid, "action": action, "state": state, "time": time,
            "agent": agent, "agent_role": role, "source_agent": "A1", "destination_agent": "A2",
            "job_name": job_name, "metadata": {"batch": "42"}, **extra}


def file_report(index: int = 0, result: int = 0, digest: str | None = "ab" * 32) -> dict[str, Any]:
    return {"index": index, "source": f"/out/f{index}", "destination": f"/in/f{index}", "size": 10,
            "checksum_method": "sha256", "digest": digest, "result_code": result,
            "supplement": None if result == 0 else "BFGIO0006E: exists"}


def started(time: str = "2025-03-14T09:26:53.589Z", **kw: Any) -> dict[str, Any]:
    return _head("started", "queued", time, recovery_timeout=-1, originator="alice",
                 files=[{"index": 0, "source": "/out/f0", "destination": "/in/f0", "size": 10}],
                 message="transfer of 1 file(s)", **kw)


def progress(time: str = "2025-03-14T09:26:53.700Z", **kw: Any) -> dict[str, Any]:
    return _head("progress", "in_progress", time, files=[file_report()], **kw)


def recovering(time: str = "2025-03-14T09:26:54.000Z", n: int = 1, **kw: Any) -> dict[str, Any]:
    return _head("recovering", "recovering", time, message_id="BFGTR0081I", message="BFGTR0081I: entered recovery",
                 reason="lost the connection to the broker", trigger="broker_connection", peer="A2",
                 recovery_timeout=-1, source_agent_time=time, recoveries=n, **kw)


def completed(time: str = "2025-03-14T09:26:55.000Z", state: str = "complete", code: int = 0,
              recoveries: int = 1, **kw: Any) -> dict[str, Any]:
    return _head("completed", state, time, result_code=code, result="success",
                 files=[file_report(result=0 if code == 0 else 1, digest="ab" * 32 if code == 0 else None)],
                 statistics={"files": 1, "files_succeeded": 1 if code == 0 else 0, "files_failed": 0 if code == 0
                             else 1, "bytes": 10, "seconds": 1.5, "recoveries": recoveries, "bytes_resent": 0},
                 **kw)


def cleaned_up(time: str = "2025-03-14T09:27:00.000Z", code: int = 40, state: str = "failed",
               **kw: Any) -> dict[str, Any]:
    return _head("cleaned_up", state, time, agent="A2", role="destination", result_code=code,
                 message="removed 1 part file(s)", part_files_removed=["/in/f0.part"], **kw)


def monitor_fired() -> dict[str, Any]:
    return {"agent": "A1", "action": "fired", "time": "2025-03-14T09:30:00.000Z", "monitor": "M1",
            "message": "monitor M1 fired", "result_code": 0, "files": ["/out/x"], "transfer_id": TID2}


def refusal() -> dict[str, Any]:
    return {"action": "not_authorized", "time": "2025-03-14T11:00:00.000Z", "agent": "A1",
            "command": "cancel_transfer", "request_id": "9f1c2b7e44d0a3e1", "requester": "mallory",
            "transfer_id": TID, "result_code": 53, "message": "refused", "suppressed": 0, "dropped": 0}


TID3 = "414d5120514d312020202020202020206a1c4f6520000d44"
FANOUT = ["A2", "A3"]


def fanout_started(**kw: Any) -> dict[str, Any]:
    """A fan-out's started event (-da A2,A3): destination_agent is the first, destination_agents the list."""
    return started(tid=TID3, destination_agents=FANOUT, **kw)


def fanout_completed(**kw: Any) -> dict[str, Any]:
    """A fan-out that reached A2 and not A3 (result 20)."""
    entries = [{"agent": "A2", "state": "complete", "result_code": 0, "files_done": 1, "files_failed": 0,
                "bytes_done": 10, "recoveries": 0, "supplement": None},
               {"agent": "A3", "state": "failed", "result_code": 40, "files_done": 0, "files_failed": 1,
                "bytes_done": 0, "recoveries": 0, "supplement": "BFGIO0006E: exists"}]
    return completed(tid=TID3, code=20, destinations=entries, **kw)
