"""agent.core.program_call by tables: the reference's program-call syntax, successrc, which names may run,
the commandPath/sandbox overlap and the result after post- calls."""

from __future__ import annotations

import pytest

from agent.core import program_call as pc
from agent.core.program_call import Call, ProgramCallError


@pytest.mark.parametrize("text, call", [
    ("mycommand(a,b)", Call("mycommand", ("a", "b"))),
    ("simple", Call("simple")),
    ("executable:simple,1,5", Call("simple", (), 1, 5)),
    ("EXECUTABLE:simple", Call("simple")),
    ("x(),,,!3", Call("x", (), 0, 0, "!3")),
    ("x(a),2,,>2&<7&!5|0|14", Call("x", ("a",), 2, 0, ">2&<7&!5|0|14")),
    (r"x(recfm\(F\,B\),c\\d)", Call("x", ("recfm(F,B)", "c\\d"))),  # escaped ( ) , and \ as the reference
    ("x(a b, c )", Call("x", ("a b", " c "))),  # spaces kept: an argv, no shell splitting
    ("x(,)", Call("x", ("", ""))),
    ("x($(rm -rf /);`id`)", None),  # refused below: unescaped parentheses
    ("/opt/fte/bin/run(a)", Call("/opt/fte/bin/run", ("a",))),  # a path parses; commandPath decides
    ("x(a),0,0,0|1", Call("x", ("a",), 0, 0, "0|1")),
])
def test_good_specs(text: str, call: Call | None) -> None:
    if call is None:
        with pytest.raises(ProgramCallError):
            pc.parse(text, "-presrc")
        return
    assert pc.parse(text, "-presrc") == call


@pytest.mark.parametrize("text, words", [
    ("", "empty program call"),
    ("antscript:myscript(prop1=fred)", "not supported (only executable); see docs/migrating-from-mft.md"),
    ("jcl:MYJCL", "not supported"),
    ("shell:x", "unknown program type 'shell'"),
    ("x(a", "must end with ')'"),
    ("x(a\\)", "must end with ')'"),
    ("x)", "')' without '('"),
    ("x(a(b))", "unescaped '('"),
    ("x(a\\", "ends with a lone backslash"),
    ("x,1,2,0,9", "too many fields"),
    ("x,-1", "retrycount '-1' is not a whole number from 0 to 100"),
    ("x,101", "retrycount '101'"),
    ("x,1,3601", "retrywait '3601'"),
    ("x,,,abc", "successrc 'abc'"),
    ("x,,,>", "successrc '>'"),
    ("x,,,1||2", "successrc '1||2'"),
    ("(a,b)", "no program name"),
    ("x\x00y", "not a file name"),
])
def test_bad_specs_are_refused_naming_the_flag(text: str, words: str) -> None:
    with pytest.raises(ProgramCallError) as exc:
        pc.parse(text, "-postdst")
    assert "-postdst" in str(exc.value) and words in str(exc.value)


@pytest.mark.parametrize("expr, ok", [
    ("0", {0}),
    ("!0", {1, 2, 3, 4, 5, 6, 7, 14, 255}),
    (">2&<7&!5|0|14", {0, 3, 4, 6, 14}),  # the reference's example
    ("<1", {0}),
    ("1|2", {1, 2}),
])
def test_success_rc(expr: str, ok: set[int]) -> None:
    assert {rc for rc in (0, 1, 2, 3, 4, 5, 6, 7, 14, 255) if pc.succeeded(expr, rc)} == ok


@pytest.mark.parametrize("name, path, result", [
    ("tool", "/opt/a:/opt/b", ["/opt/a/tool", "/opt/b/tool"]),
    ("/opt/b/tool", "/opt/a:/opt/b", ["/opt/b/tool"]),
    ("/opt/c/tool", "/opt/a:/opt/b", "not in one of commandPath's directories"),
    ("/opt/a/../c/tool", "/opt/a", "not a path"),
    ("/opt/a/sub/tool", "/opt/a", "not in one of commandPath's directories"),
    ("sub/tool", "/opt/a", "not a path"),
    ("../tool", "/opt/a", "not a path"),
    ("..", "/opt/a", "not a program name"),
    (".", "/opt/a", "not a program name"),
    ("tool", "", "commandPath is empty"),
])
def test_which_names_may_run(name: str, path: str, result: list[str] | str) -> None:
    if isinstance(result, list):
        assert pc.command_candidates(name, pc.split_command_path(path)) == result
    else:
        with pytest.raises(ProgramCallError, match=result):
            pc.command_candidates(name, pc.split_command_path(path))


def test_command_path_must_be_absolute() -> None:
    with pytest.raises(ProgramCallError, match="lists 'bin', which is not an absolute directory"):
        pc.split_command_path("/opt/a:bin")


@pytest.mark.parametrize("command, writes, excluded, hit", [
    (["/opt/bin"], ["/srv/data"], [], None),
    (["/srv/data/bin"], ["/srv/data"], [], ("/srv/data/bin", "/srv/data")),
    (["/srv"], ["/srv/data"], [], ("/srv", "/srv/data")),  # files could arrive below commandPath
    (["/srv/data"], ["/srv/data"], [], ("/srv/data", "/srv/data")),
    (["/srv/data/bin"], ["/srv/data"], ["/srv/data/bin"], None),  # excluded from the sandbox: not written
    (["/srv/database"], ["/srv/data"], [], None),  # a prefix of the name is no parent
])
def test_command_path_overlap(command: list[str], writes: list[str], excluded: list[str],
                              hit: tuple[str, str] | None) -> None:
    assert pc.command_path_overlap(command, writes, excluded) == hit


def test_a_failed_post_call_makes_a_success_failed_and_nothing_else() -> None:
    bad = pc.Outcome("post_destination", "x", "failure", 3)
    good = pc.Outcome("post_source", "y", "success", 0)
    assert pc.result_after_post(0, [good], 40) == 0
    assert pc.result_after_post(0, [good, bad], 40) == 40
    assert pc.result_after_post(20, [bad], 40) == 20  # already not a success: its own code stays


def test_the_environment_holds_the_transfer_and_not_the_agents_secrets() -> None:
    env = pc.program_environment("ab" * 24, "A1", "A2", "job", ["/d/a", "/d/b"], "post_destination",
                                 {"PATH": "/usr/bin", "FTE_BROKER_PASSWORD": "secret", "HOME": "/h"})
    assert env == {"PATH": "/usr/bin", "HOME": "/h", "FTE_TRANSFER_ID": "ab" * 24, "FTE_SOURCE_AGENT": "A1",
                   "FTE_DESTINATION_AGENT": "A2", "FTE_JOB_NAME": "job", "FTE_PROGRAM_CALL": "post_destination",
                   "FTE_DESTINATION_FILES": "/d/a\n/d/b"}


def test_the_output_tail_is_bounded() -> None:
    assert pc.tail(b"x" * 10_000 + b"end") == ("x" * (pc.OUTPUT_TAIL_BYTES - 3)) + "end"
    assert pc.tail(b"\xff ok") == "\ufffd ok"
