"""A fan-out through the other ways a transfer starts, and its source disposition, through the console scripts on
a real Mosquitto with agents as processes (docs/protocol.md#fan-out): a transfer template with `-da A2,A3`, a
resource monitor with `-da A2,A3`, and `-sd delete`, which deletes the source only once every destination has it."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_fanout import create_fanout_agents
from tests.support.agents import FteEnv, wait_until

pytestmark = pytest.mark.timeout(240)

DESTS = ("A2", "A3")


@pytest.fixture
def fan(tmp_path: Path, mosquitto) -> Iterator[tuple[FteEnv, dict[str, Path]]]:
    env = FteEnv(tmp_path / "home", mosquitto.ensure_running().url)
    try:
        roots = create_fanout_agents(env, tmp_path / "data", DESTS)
        for name in ("A1", *DESTS):
            env.start_agent(name)
        yield env, roots
    finally:
        env.stop_all()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _logs(env: FteEnv) -> str:
    return "\n".join(f"--- {n} ---\n{a.log_tail(40)}" for n, a in env.agents.items())


def test_a_template_with_a_destination_list_is_one_fan_out(fan) -> None:
    env, roots = fan
    src = roots["A1"] / "templ.bin"
    src.write_bytes(secrets.token_bytes(300_000))
    name = f"fan-{secrets.token_hex(4)}"
    r = env.run("create-template", "-tn", name, "-sa", "A1", "-da", ",".join(DESTS), "-df", "out/templ.bin", str(src))
    assert r.returncode == 0, str(r)
    try:
        r = env.run("create-transfer", "-tn", name, "-w", "120", "--json", timeout=180)
        assert r.returncode == 0, f"{r}\n{_logs(env)}"
        done = r.json()
        assert done["result_code"] == 0 and [d["agent"] for d in done["destinations"]] == list(DESTS), done
        for d in DESTS:
            assert _digest(roots[d] / "out" / "templ.bin") == _digest(src), d
    finally:
        env.run("delete-templates", name)


def test_a_monitor_with_a_destination_list_delivers_a_dropped_file_to_every_destination(fan) -> None:
    env, roots = fan
    watch = roots["A1"] / "watch"
    watch.mkdir()
    r = env.run("create-monitor", "-ma", "A1", "-mn", "FANMON", "-md", str(watch), "-tr", "match,*.bin",
                "-pi", "1", "-pu", "seconds", "-da", ",".join(DESTS), "-df", "out/${FileName}")
    assert r.returncode == 0, str(r)
    try:
        dropped = watch / "drop.bin"
        dropped.write_bytes(secrets.token_bytes(200_000))
        for d in DESTS:
            got = roots[d] / "out" / "drop.bin"
            wait_until(lambda: got.exists() and got.stat().st_size == 200_000, 60,
                       f"the dropped file at {d}\n{_logs(env)}")
            assert _digest(got) == _digest(dropped), d
    finally:
        env.run("delete-monitor", "-ma", "A1", "-mn", "FANMON")


def test_source_delete_waits_for_every_destination(fan) -> None:
    env, roots = fan
    src = roots["A1"] / "del.bin"
    src.write_bytes(secrets.token_bytes(250_000))
    r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTS), "-df", "out/del.bin", "-sd", "delete",
                "-w", "120", "--json", str(src), timeout=180)
    assert r.returncode == 0, f"{r}\n{_logs(env)}"
    assert not src.exists(), "every destination has it: the source is deleted"
    for d in DESTS:
        assert (roots[d] / "out" / "del.bin").stat().st_size == 250_000, d

    # one destination refuses the file (it exists there, -de error): the other gets it, the source stays
    src.write_bytes(secrets.token_bytes(250_000))
    (roots["A2"] / "out" / "del.bin").unlink()
    r = env.run("create-transfer", "-sa", "A1", "-da", ",".join(DESTS), "-df", "out/del.bin", "-sd", "delete",
                "-w", "120", "--json", str(src), timeout=180)
    done = r.json()
    assert r.returncode == 20 and done["result_code"] == 20, f"{r}\n{_logs(env)}"
    assert [(e["agent"], e["result_code"] == 0) for e in done["destinations"]] == [("A2", True), ("A3", False)], done
    assert _digest(roots["A2"] / "out" / "del.bin") == _digest(src)
    assert src.exists(), "a destination does not have it: the source must stay"
