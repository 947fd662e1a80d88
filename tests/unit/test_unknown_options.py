"""Unknown flags are named as typed (`-pr`, not click's `-p`), with a suggestion when one is close; MFT flags
fte does not have say so and name docs/migrating-from-mft.md. One place (the frame), every command."""

from __future__ import annotations

import pytest

from cli.app import invoke
from cli.scripts import entry_points  # (and every command registered)
from cli.unknown_options import MFT_UNSUPPORTED, suggestion, typed_flag, unknown_option_text

KNOWN = ["-sa", "--source-agent", "-da", "-df", "--destination-file", "-dd", "-r", "-rt", "-w", "--help"]


@pytest.mark.parametrize("reported, args, typed", [
    ("-p", ["-sa", "A1", "-pr", "3", "x"], "-pr"),
    ("-s", ["-sa", "A1", "-sqgi", "G"], "-sqgi"),
    ("--bandwidth", ["--bandwidth=5M", "x"], "--bandwidth"),
    ("--nope", ["--nope"], "--nope"),
    ("-p", ["--", "-pr"], "-p"),  # after -- nothing is a flag
    ("-x", ["a"], "-x"),  # not found: what click said
])
def test_typed_flag(reported: str, args: list[str], typed: str) -> None:
    assert typed_flag(reported, args, KNOWN) == typed


@pytest.mark.parametrize("flag, hint", [
    ("-SA", "-sa"), ("--sa", "-sa"), ("-source-agent", "--source-agent"), ("--destinaton-file", "--destination-file"),
    ("-pr", None), ("-x", None), ("--completely-different", None),
])
def test_suggestion(flag: str, hint: str | None) -> None:
    assert suggestion(flag, KNOWN) == hint


def test_texts() -> None:
    assert unknown_option_text("-pr", KNOWN) == "no such option -pr"
    assert unknown_option_text("-SA", KNOWN) == "no such option -SA; did you mean -sa?"
    text = unknown_option_text("-sq", KNOWN)
    assert text.startswith("-sq is an IBM MQ MFT flag that mqtt-fte does not support") and "migrating-from-mft.md" in text


def test_no_flag_issue_17_adds_is_listed_as_unsupported() -> None:
    for flag in ("-pr", "--bandwidth", "-t", "-sce", "-dce", "-dle", "-presrc", "-postsrc", "-predst", "-postdst",
                 "-tr"):
        assert flag not in MFT_UNSUPPORTED


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        invoke(list(argv))
    return int(exit_.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["create-transfer", "-sa", "A1", "-da", "A2", "-df", "/o", "-zz", "3", "/i"], "error: no such option -zz"),
    (["create-transfer", "-sa", "A1", "-sqgi", "G", "/i"], "-sqgi is an IBM MQ MFT flag"),
    (["create-transfer", "-dq", "Q@QM", "/i"], "docs/migrating-from-mft.md"),
    (["list-agents", "-p", "OPTS"], "-p is an IBM MQ MFT flag"),
    (["list-agents", "--josn"], "no such option --josn; did you mean --json?"),
    (["create-template", "-tn", "t", "-SD", "delete"], "did you mean -sd?"),
])
def test_through_the_frame(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    assert f"fte-{argv[0]}" in entry_points()
    code, err = _run(capsys, *argv)
    assert code == 1  # a usage error, as every other one (2 is "the wait ran out" for these commands)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], err
    assert "No such option: -" not in err
