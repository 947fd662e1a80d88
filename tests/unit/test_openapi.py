"""The OpenAPI document of the REST API (ops.web.openapi) says what the API takes and returns: its schemas name
every field of the models they describe, so that a new spec or event field is not forgotten there."""

from __future__ import annotations

from typing import Any, Iterator

from agent.wire.events import Completed, FileReport, ProgramReport, Started
from agent.wire.programs import ProgramCall, ProgramCalls
from agent.wire.protocol import TransferItem, TransferSpec
from ops.history import fold_event
from ops.web.openapi import openapi_document
from tests.support import history_events as ev

DOC = openapi_document()
SCHEMAS = DOC["components"]["schemas"]


def props(name: str) -> set[str]:
    return set(SCHEMAS[name]["properties"])


def fields(*models: Any) -> set[str]:
    return {f for m in models for f in m.model_fields} - {"signature"}


def test_the_request_schemas_have_exactly_the_models_fields() -> None:
    assert props("TransferSpec") == fields(TransferSpec)
    assert props("TransferItem") == fields(TransferItem)
    assert props("ProgramCall") == fields(ProgramCall)
    assert set(SCHEMAS["TransferSpec"]["properties"]["programs"]["properties"]) == fields(ProgramCalls)


def test_the_event_schema_names_every_field_of_the_started_and_completed_events() -> None:
    assert fields(Started, Completed) <= props("Event"), fields(Started, Completed) - props("Event")
    assert fields(FileReport) <= props("TransferFile"), fields(FileReport) - props("TransferFile")
    assert fields(ProgramReport) <= props("ProgramReport")
    assert {"encryption", "programs", "skipped", "directories", "destination_agents"} <= props("Event")


def test_a_history_row_is_described() -> None:
    text = ev.completed()
    text["files"][0]["written_digest"] = "cd" * 32
    row = fold_event(fold_event(None, ev.started(), True), text, True)
    assert row is not None
    assert set(row["files"][0]) <= props("TransferFile")
    for key in ("transfer_id", "state", "result_code", "source_agent", "destination_agent", "job_name",
                "metadata", "files", "message", "recoveries", "verified"):
        assert key in props("Transfer"), key


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_every_reference_resolves() -> None:
    refs = set(_refs(DOC))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in SCHEMAS, ref


def test_a_fanout_destination_of_a_live_transfer_is_described() -> None:
    from agent.wire.events import DestinationOutcome, DestinationProgress

    items = SCHEMAS["Transfer"]["properties"]["destinations"]["items"]
    assert items == {"$ref": "#/components/schemas/TransferDestination"}
    assert fields(DestinationProgress, DestinationOutcome) == props("TransferDestination")
