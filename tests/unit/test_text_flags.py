"""-t, -sce, -dce and -dle as the commands build them (cli/transfer_request.py, cli/templates.py): checked once,
the encodings kept by their Python names, carried by templates (and overridden), by request files and by a
monitor's task."""

from __future__ import annotations

import pytest

from agent.monitor import MonitorSpec
from agent.wire.protocol import TransferSpec
from cli.main import app  # first: the commands registered in their own order (docs/gen_commands.py lists them so)
from cli.templates import Overrides, TemplateError, TemplateSpec, merge, template_spec
from cli.transfer_request import TransferRequestError, text_fields, transfer_spec


def spec(**text: str) -> TransferSpec:
    return transfer_spec("A1", "A2", ["/out/a.txt"], "/in/a.txt", None, "error", "leave", "sha256", **text)


def test_the_flags_set_the_fields_with_canonical_names() -> None:
    s = spec(mode="TEXT", source_encoding="Latin-1", destination_encoding="UTF8", destination_line_ending="crlf")
    assert (s.mode, s.source_encoding, s.destination_encoding, s.destination_line_ending) == \
        ("text", "iso8859-1", "utf-8", "CRLF")
    assert spec().mode == "binary" and spec().source_encoding is None


@pytest.mark.parametrize("text,words", [
    ({"mode": "text", "source_encoding": "klingon"}, "-sce 'klingon' is not an encoding Python knows"),
    ({"mode": "text", "destination_encoding": "zlib"}, "-dce 'zlib' is not a text encoding"),
    ({"mode": "text", "destination_line_ending": "LFCR"}, "-dle 'LFCR' is not one of: LF, CRLF"),
    ({"mode": "ascii"}, "-t 'ascii' is not one of: binary, text"),
    ({"destination_line_ending": "CRLF"}, "-dle only apply to text transfers: add -t text"),
    ({"mode": "binary", "source_encoding": "latin-1", "destination_encoding": "utf-8"},
     "-sce, -dce only apply to text transfers"),
])
def test_a_wrong_flag_is_named(text: dict[str, str], words: str) -> None:
    with pytest.raises(TransferRequestError, match=words):
        spec(**text)


def test_the_agent_checks_the_encodings_again() -> None:
    """A command is untrusted: a name the CLI would have refused is refused by the model too."""
    base = {"source_agent": "A1", "destination_agent": "A2",
            "items": [{"source": "/a", "destination": "/b", "destination_type": "file"}], "mode": "text"}
    for field, value in (("source_encoding", "no-such-codec"), ("destination_encoding", "base64"),
                         ("destination_line_ending", "CR")):
        with pytest.raises(ValueError, match=field):
            TransferSpec.model_validate({**base, field: value})


def test_a_template_carries_the_text_flags_and_a_submission_overrides_them() -> None:
    tpl = template_spec(Overrides(source_agent="A1", destination_agent="A2", dest_dir="/in", sources=["/out/a"],
                                  text=text_fields("text", "cp1252", None, "CRLF")))
    assert (tpl.mode, tpl.source_encoding, tpl.destination_line_ending) == ("text", "cp1252", "CRLF")
    kept = merge(TemplateSpec.model_validate(tpl.model_dump()), Overrides())
    assert (kept.mode, kept.source_encoding, kept.destination_line_ending) == ("text", "cp1252", "CRLF")
    changed = merge(tpl, Overrides(text=text_fields(None, "latin-1", None, None)))
    assert (changed.mode, changed.source_encoding) == ("text", "iso8859-1")
    with pytest.raises(TemplateError, match="only apply to text transfers"):
        merge(tpl, Overrides(text=text_fields("binary", None, None, None)))


def test_a_template_without_text_flags_stays_binary() -> None:
    tpl = template_spec(Overrides(source_agent="A1", destination_agent="A2", dest_dir="/in", sources=["/out/a"]))
    assert tpl.mode is None and "mode" not in tpl.model_dump(exclude_none=True)
    assert merge(tpl, Overrides()).mode == "binary"


def test_a_monitor_task_carries_the_text_flags() -> None:
    task = transfer_spec("A1", "A2", ["${FilePath}"], None, "/in", "error", "leave", "sha256", mode="text",
                         source_encoding="latin-1", destination_line_ending="CRLF").model_dump()
    m = MonitorSpec(name="M", agent="A1", directory="/out", trigger="match,*.txt", task=task)
    assert (m.task.mode, m.task.source_encoding, m.task.destination_line_ending) == ("text", "iso8859-1", "CRLF")


def test_the_three_commands_take_the_text_flags() -> None:
    import typer.main

    group = typer.main.get_command(app)
    for verb in ("create-transfer", "create-template", "create-monitor"):
        command = group.commands[verb]  # type: ignore[attr-defined]
        options = {o for p in command.params for o in p.opts}
        assert {"-t", "-sce", "-dce", "-dle"} <= options, verb
