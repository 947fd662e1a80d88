"""A fan-out request (`-da A2,A3,...`) through the console scripts, before any byte moves: a wrong list is one
clear line without a broker, and real agents over Mosquitto refuse a fan-out naming its unknown destination
(result 40) and send nothing. (Fan-outs that run are tested end to end with the source and destination sides.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agents import FteEnv, Result, running_agents, sandbox_dir
from tests.support.brokers import MosquittoProcess, free_port

pytestmark = pytest.mark.timeout(180)


def one_line(r: Result, *needles: str) -> str:
    assert r.returncode != 0, str(r)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr:\n{r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in the error line:\n{r}"
    for raw in ("Traceback", "validation error", "pydantic", "Input should be", "type="):
        assert raw not in r.stderr, f"raw text {raw!r} on stderr:\n{r}"
    return lines[0]


@pytest.mark.parametrize("da,words", [
    ("A2,A3,A2", "destination agent A2 is listed more than once"),
    ("A2,A1", "the source agent A1 cannot also be a destination agent"),
    ("A2,,A3", "an agent name is empty"),
    (",".join(f"B{i}" for i in range(17)), "at most 16 destination agents, not 17"),
])
def test_a_wrong_list_is_one_line_before_any_broker(tmp_path: Path, da: str, words: str) -> None:
    env = FteEnv(tmp_path / "home", f"mqtt://127.0.0.1:{free_port()}")  # nothing listens: never reached
    r = env.run("create-transfer", "-sa", "A1", "-da", da, "-df", "/in/a", "-w", "/out/a", timeout=60)
    assert r.returncode == 1, str(r)
    one_line(r, f"-da '{da}'", words)


def test_the_source_agent_names_the_unknown_destination(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    data = sandbox_dir(tmp_path, "in", "out")
    (data / "out" / "a.txt").write_text("alpha")
    with running_agents(tmp_path / "home", mosquitto.ensure_running().url, data) as env:
        r = env.run("create-transfer", "-sa", "A1", "-da", "A2,A9", "-df", str(data / "in" / "a.txt"), "-w", "30",
                    str(data / "out" / "a.txt"))
        assert r.returncode == 40, str(r)
        one_line(r, "destination agent 'A9' is not known on this broker")
        assert not (data / "in" / "a.txt").exists()
