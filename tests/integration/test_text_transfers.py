"""Text transfers (-t text, -sce, -dce, -dle) end to end: console scripts, agents as processes, a real broker.

The source sends the bytes unchanged; the destination verifies them, converts them into a temporary file and
renames that into place. The `completed` event (printed by `fte-create-transfer -w --json`) carries both
digests: `digest` over what the source sent, `written_digest` over what the destination wrote. A file the
encodings cannot convert fails with FTEIO0004E and leaves nothing at the destination.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import FteEnv, running_agents, sandbox_dir, wait_until
from tests.support.brokers import AmqttProcess

pytestmark = pytest.mark.timeout(120)

AGENT_PROPERTIES = {"agentChunkSize": 65536, "agentWindowSize": 4, "transferAckTimeout": 2000,
                    "transferAckTimeoutRetries": 3}
WAIT = "60"
# latin-1 text with CRLF line endings; big enough to travel in many chunks (not as one bundle of small files)
LATIN1_LINE = "Zürich, Genève, Málaga: 5 × 3 ½ café\r\n"
LATIN1_CRLF = (LATIN1_LINE * 6000).encode("latin-1")


@pytest.fixture
def fte(tmp_path: Path, amqtt_broker: AmqttProcess) -> Iterator[FteEnv]:
    with running_agents(tmp_path / "fte_home", amqtt_broker.ensure_running().url, sandbox_dir(tmp_path),
                        **AGENT_PROPERTIES) as env:
        yield env


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    return d


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def transfer(fte: FteEnv, *args: str) -> tuple[int, dict[str, Any]]:
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "--json", "-w", WAIT, *args)
    assert r.stdout.strip(), str(r)
    return r.returncode, r.json()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_latin1_crlf_arrives_as_utf8_lf_with_both_digests(fte: FteEnv, data: Path) -> None:
    src = data / "out" / "report.txt"
    src.parent.mkdir()
    src.write_bytes(LATIN1_CRLF)
    dest = data / "in" / "report.txt"
    code, result = transfer(fte, "-t", "text", "-sce", "latin-1", "-dce", "utf-8", "-dle", "LF", "-df", str(dest),
                            str(src))
    assert code == 0, result
    expected = (LATIN1_LINE.replace("\r\n", "\n") * 6000).encode("utf-8")
    assert dest.read_bytes() == expected
    [f] = result["files"]
    assert f["result_code"] == 0
    assert f["digest"] == sha256(LATIN1_CRLF)  # what the source sent, checked before the conversion
    assert f["written_digest"] == sha256(expected)  # what the destination wrote
    assert leftovers(dest.parent) == ["report.txt"]  # no part file, no temporary file


def test_small_files_of_a_bundle_are_converted_too(fte: FteEnv, data: Path) -> None:
    out = data / "out"
    out.mkdir()
    texts = {f"f{i}.txt": f"line {i}\nzweite Zeile ü\n".encode() for i in range(5)}
    for name, body in texts.items():
        (out / name).write_bytes(body)
    code, result = transfer(fte, "-t", "text", "-dle", "CRLF", "-dd", str(data / "in"), str(out / "*.txt"))
    assert code == 0, result
    for name, body in texts.items():
        assert (data / "in" / name).read_bytes() == body.replace(b"\n", b"\r\n")
    by_name = {Path(f["destination"]).name: f for f in result["files"]}
    for name, body in texts.items():
        assert by_name[name]["digest"] == sha256(body)
        assert by_name[name]["written_digest"] == sha256(body.replace(b"\n", b"\r\n"))
    assert leftovers(data / "in") == sorted(texts)


def test_undecodable_file_fails_with_the_supplement_and_leaves_nothing(fte: FteEnv, data: Path) -> None:
    src = data / "out" / "report.txt"
    src.parent.mkdir()
    src.write_bytes(LATIN1_CRLF)  # not UTF-8: the default -sce
    dest = data / "in" / "report.txt"
    code, result = transfer(fte, "-t", "text", "-df", str(dest), str(src))
    assert code == 40, result
    [f] = result["files"]
    assert f["result_code"] == 1
    supplement = f["supplement"]
    offset = LATIN1_CRLF.index("ü".encode("latin-1"))
    for words in ("FTEIO0004E", "not utf-8 text", f"offset {offset}", "-sce", "-t binary"):
        assert words in supplement, supplement
    assert "written_digest" not in f
    assert leftovers(dest.parent) == []  # neither the file, nor its part file, nor the temporary file


def test_unencodable_file_leaves_the_existing_destination_untouched(fte: FteEnv, data: Path) -> None:
    src = data / "out" / "note.txt"
    src.parent.mkdir()
    src.write_text("plain ascii\r\nthen café\r\n", encoding="utf-8")
    dest = data / "in" / "note.txt"
    dest.parent.mkdir()
    dest.write_bytes(b"the file that was there\n")
    code, result = transfer(fte, "-t", "text", "-dce", "ascii", "-de", "overwrite", "-df", str(dest), str(src))
    assert code == 40, result
    supplement = result["files"][0]["supplement"]
    for words in ("FTEIO0004E", "U+00E9", "ascii", "byte offset 21", "-dce"):
        assert words in supplement, supplement
    assert dest.read_bytes() == b"the file that was there\n"
    assert leftovers(dest.parent) == ["note.txt"]


def test_binary_is_the_default_and_unchanged(fte: FteEnv, data: Path) -> None:
    src = data / "out" / "report.txt"
    src.parent.mkdir()
    src.write_bytes(LATIN1_CRLF)
    dest = data / "in" / "report.txt"
    code, result = transfer(fte, "-df", str(dest), str(src))
    assert code == 0, result
    assert dest.read_bytes() == LATIN1_CRLF
    [f] = result["files"]
    assert f["digest"] == sha256(LATIN1_CRLF) and "written_digest" not in f


def test_a_template_carries_the_text_flags(fte: FteEnv, data: Path) -> None:
    name = f"text-{secrets.token_hex(4)}"
    src = data / "out" / "a.txt"
    src.parent.mkdir()
    src.write_bytes("eins\nzwei ü\n".encode("cp1252"))
    r = fte.run("create-template", "-tn", name, "-sa", "A1", "-da", "A2", "-dd", str(data / "in"), "-t", "text",
                "-sce", "cp1252", "-dle", "CRLF", str(src))
    assert r.returncode == 0, str(r)
    try:
        r = fte.run("list-templates", "-v", name)
        assert "-t text -sce cp1252 -dle CRLF" in r.stdout, str(r)
        r = fte.run("create-transfer", "-tn", name, "--json", "-w", WAIT)
        assert r.returncode == 0, str(r)
        assert (data / "in" / "a.txt").read_bytes() == "eins\r\nzwei ü\r\n".encode()
    finally:
        fte.run("delete-templates", name)


def test_a_monitor_task_carries_the_text_flags(fte: FteEnv, data: Path) -> None:
    watch, out = data / "watch", data / "in"
    watch.mkdir()
    name = f"text-{secrets.token_hex(4)}"
    r = fte.run("create-monitor", "-ma", "A1", "-mn", name, "-md", str(watch), "-tr", "match,*.txt", "-pi", "1",
                "-pu", "seconds", "-da", "A2", "-dd", str(out), "-t", "text", "-sce", "latin-1", "-dle", "LF")
    assert r.returncode == 0, str(r)
    try:
        (watch / "a.txt").write_bytes(LATIN1_CRLF)
        expected = (LATIN1_LINE.replace("\r\n", "\n") * 6000).encode("utf-8")
        wait_until(lambda: (out / "a.txt").is_file() and (out / "a.txt").read_bytes() == expected, 30,
                   "the monitor's transfer delivers the file converted", interval=0.1)
    finally:
        fte.run("delete-monitor", "-ma", "A1", "-mn", name)


@pytest.mark.parametrize("args,words", [
    (("-t", "text", "-sce", "klingon"), ("-sce 'klingon' is not an encoding",)),
    (("-t", "text", "-dce", "base64"), ("-dce 'base64' is not a text encoding",)),
    (("-t", "text", "-dle", "CR"), ("-dle 'CR' is not one of: LF, CRLF",)),
    (("-t", "ebcdic"), ("-t 'ebcdic' is not one of: binary, text",)),
    (("-sce", "latin-1"), ("-sce only apply to text transfers: add -t text",)),
], ids=["unknown-sce", "not-a-text-dce", "bad-dle", "bad-t", "sce-without-text"])
def test_bad_text_flags_are_one_clear_line(fte: FteEnv, data: Path, args: tuple[str, ...],
                                           words: tuple[str, ...]) -> None:
    src = data / "a.txt"
    src.write_text("x\n")
    r = fte.run("create-transfer", "-sa", "A1", "-da", "A2", "-df", str(data / "in" / "a.txt"), *args, str(src))
    assert r.returncode != 0, str(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, str(r)
    for w in words:
        assert w in lines[0], str(r)
    assert not (data / "in").exists()
