"""The transfer trigger (-tr): parsing the reference's syntax, and evaluating it on file facts, by tables."""

from __future__ import annotations

import pytest

from agent.core.transfer_trigger import (MAX_TRIGGER_PATHS, PathFact, TransferTrigger, TransferTriggerError,
                                         check_trigger_text)

KB, MB = 1024, 1024**2


@pytest.mark.parametrize("text, condition, paths, size", [
    ("file=exist,/in/ready", "exist", ("/in/ready",), 0),
    ("file=exist,/in/a,/in/b", "exist", ("/in/a", "/in/b"), 0),
    ("file!=exist,/in/lock", "noexist", ("/in/lock",), 0),
    ("file=noexist,/in/lock", "noexist", ("/in/lock",), 0),
    ("FILE=EXIST, /in/a , b", "exist", ("/in/a", "b"), 0),
    ("filesize>=10MB,/in/big", "filesize", ("/in/big",), 10 * MB),
    ("filesize>=1kb,/in/x", "filesize", ("/in/x",), KB),
    ("fileSize>=512,/in/x", "filesize", ("/in/x",), 512),
    ("filesize>=0B,/in/x", "filesize", ("/in/x",), 0),
    ("filesize>=2GB,x", "filesize", ("x",), 2 * 1024**3),
    ("file=exist,/in/report[1].csv", "exist", ("/in/report[1].csv",), 0),  # a name, not a pattern
])
def test_parse(text: str, condition: str, paths: tuple[str, ...], size: int) -> None:
    t = TransferTrigger.parse(text)
    assert (t.condition, t.paths, t.size) == (condition, paths, size)
    assert TransferTrigger.parse(t.text()) == t
    assert check_trigger_text(text) == text


@pytest.mark.parametrize("text, words", [
    ("file=exist", "CONDITION,PATH"),
    ("file=exist,", "CONDITION,PATH"),
    ("file=exist,/a,,/b", "CONDITION,PATH"),
    ("exists,/a", "unknown"),
    ("file==exist,/a", "unknown"),
    ("filesize>=lots,/a", "size"),
    ("filesize>=-1,/a", "size"),
    ("filesize>10,/a", "unknown"),
    ("file=exist," + ",".join(f"/p{i}" for i in range(MAX_TRIGGER_PATHS + 1)), "at most"),
    ("file=exist,/" + "a" * 20_000, "too long"),
    ("file=exist,/a\x00b", "NUL"),
])
def test_parse_errors(text: str, words: str) -> None:
    with pytest.raises(TransferTriggerError, match=words):
        TransferTrigger.parse(text)


MISSING, DIR, LINK, OTHER = PathFact("missing"), PathFact("directory"), PathFact("link"), PathFact("other")


def file(size: int) -> PathFact:
    return PathFact("file", size)


@pytest.mark.parametrize("text, facts, met, reason", [
    ("file=exist,/a", {"/a": file(0)}, True, "/a exists"),
    ("file=exist,/a", {"/a": DIR}, True, "/a exists"),
    ("file=exist,/a", {"/a": MISSING}, False, "/a does not exist"),
    ("file=exist,/a", {}, False, "/a does not exist"),  # no fact: missing
    ("file=exist,/a", {"/a": LINK}, False, "/a is a symbolic link (not followed)"),
    ("file=exist,/a", {"/a": OTHER}, False, "neither a file nor a directory"),
    ("file=exist,/a,/b", {"/a": MISSING, "/b": file(3)}, True, "/b exists"),  # at least one
    ("file=exist,/a,/b", {}, False, "/a does not exist; /b does not exist"),
    ("file!=exist,/a", {"/a": MISSING}, True, "/a does not exist"),
    ("file!=exist,/a", {"/a": file(1)}, False, "/a exists"),
    ("file!=exist,/a", {"/a": DIR}, False, "/a exists"),
    ("file!=exist,/a", {"/a": LINK}, False, "symbolic link"),  # a link is no free name either
    ("file=noexist,/a,/b", {"/a": file(1), "/b": MISSING}, True, "/b does not exist"),
    ("filesize>=1KB,/a", {"/a": file(1024)}, True, "/a is 1024 bytes, at least 1024"),
    ("filesize>=1KB,/a", {"/a": file(1023)}, False, "/a is 1023 bytes, less than 1024"),
    ("filesize>=1KB,/a", {"/a": MISSING}, False, "/a does not exist"),
    ("filesize>=1KB,/a", {"/a": DIR}, False, "/a is not a file"),
    ("filesize>=1KB,/a", {"/a": LINK}, False, "symbolic link"),
    ("filesize>=0,/a", {"/a": file(0)}, True, "at least 0"),
    ("filesize>=10,/a,/b", {"/a": file(5), "/b": file(10)}, True, "/b is 10 bytes"),
])
def test_evaluate(text: str, facts: dict[str, PathFact], met: bool, reason: str) -> None:
    verdict = TransferTrigger.parse(text).evaluate(facts)
    assert verdict.met is met
    assert reason in verdict.reason
    if not met:
        assert verdict.reason.startswith("trigger condition not met: ")


@pytest.mark.parametrize("text", ["file=exist,/a", "File = Exist ,/a,b", "file!=exist,/a", "file=noexist,/a",
                                  "filesize>=10MB,/a", "filesize >= 3 kb,/a", "file=exist,/a\x00b", "file=exist, ",
                                  "file!=noexist,/a", "filesize>=x,/a", "file=exist," + ",".join("p" * 65)])
def test_the_wire_pattern_admits_what_parse_takes(text: str) -> None:
    import re

    from agent.core.transfer_trigger import TRIGGER_PATTERN
    try:
        TransferTrigger.parse(text)
        parsed = True
    except TransferTriggerError:
        parsed = False
    assert bool(re.match(TRIGGER_PATTERN, text)) is parsed


def test_templates_carry_the_trigger_and_the_command_line_overrides_it() -> None:
    from cli.templates import Overrides, merge, template_spec

    base = template_spec(Overrides(source_agent="A1", destination_agent="A2", dest_dir="/in", sources=["/out/f"],
                                   trigger="file=exist,/out/ready"))
    assert base.trigger == "file=exist,/out/ready"
    assert merge(base, Overrides()).trigger == "file=exist,/out/ready"
    assert merge(base, Overrides(trigger="filesize>=1KB,/out/f")).trigger == "filesize>=1KB,/out/f"


def test_the_command_line_refuses_a_bad_trigger_in_the_agents_words() -> None:
    from cli.transfer_request import TransferRequestError, transfer_spec

    spec = transfer_spec("A1", "A2", ["/out/f"], None, "/in", "error", "leave", "sha256", trigger="file=exist,/r")
    assert spec.trigger == "file=exist,/r"
    with pytest.raises(TransferRequestError, match="-tr condition 'exists' is unknown"):
        transfer_spec("A1", "A2", ["/out/f"], None, "/in", "error", "leave", "sha256", trigger="exists,/r")
