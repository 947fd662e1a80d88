"""The OpenAPI 3 document of the REST API (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

CHECKSUMS = ["sha256", "md5", "none"]
WHEN = ["pre_source", "post_source", "pre_destination", "post_destination"]
ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list(ref: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}}


def openapi_document() -> dict[str, Any]:
    tid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    q = [{"name": n, "in": "query", "required": False, "schema": {"type": "string", **extra}, "description": d}
         for n, extra, d in (("agent", {}, "source or destination agent"),
                             ("since", {"format": "date-time"}, "started at or after (ISO-8601)"),
                             ("state", {}, "queued, negotiating, in_progress, recovering, resynchronising, complete, partial, failed, cancelled, recovery_timed_out"),
                             ("job_name", {}, "the job name (-jn)"),
                             ("limit", {}, "at most this many (1..10000, default 1000)"))]
    errors = {"400": ERR, "401": ERR, "404": ERR}
    return {
        "openapi": "3.0.3",
        "info": {"title": "mqtt-fte REST API", "version": "1",
                 "description": "Agents, transfers (live and history), monitors and templates; commands are signed "
                                "with the key of the user who runs `fte web`. See docs/api.md."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/agents": {"get": {"summary": "Agents and their status", "responses": {
                "200": _ok(_list("Agent")), "401": ERR}}},
            "/api/v1/transfers": {
                "get": {"summary": "Transfers, live and from the history, newest first", "parameters": q,
                        "responses": {"200": _ok(_list("Transfer")), **errors}},
                "post": {"summary": "Submit a transfer request (as fte-create-transfer -gt FILE writes it)",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/TransferRequest"}}}},
                         "responses": {"201": _ok({"type": "object", "required": ["transfer_id"], "properties": {
                             "transfer_id": {"type": "string"}, "state": {"type": "string"}}}, "submitted"),
                             **errors, "409": ERR, "413": ERR}}},
            "/api/v1/transfers/{id}": {"get": {"summary": "One transfer with its events", "parameters": [tid],
                                               "responses": {"200": _ok({"$ref": "#/components/schemas/Transfer"}),
                                                             **errors}}},
            "/api/v1/transfers/{id}/cancel": {"post": {
                "summary": "Cancel a transfer (optional body {\"agent\": NAME}, else its source agent)",
                "parameters": [tid],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"agent": {"type": "string"}}}}}},
                "responses": {"200": _ok({"type": "object"}), **errors, "409": ERR}}},
            "/api/v1/monitors": {"get": {"summary": "Resource monitors as their agents report them",
                                         "responses": {"200": _ok({"type": "array", "items": {"type": "object"}}),
                                                       "401": ERR}}},
            "/api/v1/templates": {"get": {"summary": "Transfer templates on the broker, with their verdict",
                                          "responses": {"200": _ok({"type": "array", "items": {"type": "object"}}),
                                                        "401": ERR}}},
            "/api/v1/events": {"get": {"summary": "Server-Sent Events: agent, transfer, event, broker",
                                       "responses": {"200": {"description": "text/event-stream",
                                                             "content": {"text/event-stream": {
                                                                 "schema": {"type": "string"}}}}, "401": ERR}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": _ok({"type": "object"})}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Agent": {"type": "object", "required": ["name", "status"], "properties": {
                    "name": {"type": "string"}, "status": {"type": "string"}, "host": {"type": "string"},
                    "verified": {"type": "boolean"}, "time": {"type": "string"}}},
                "Transfer": {"type": "object", "required": ["transfer_id", "state", "result_code"], "properties": {
                    "transfer_id": {"type": "string"}, "state": {"type": "string", "nullable": True},
                    "result_code": {"type": "integer", "nullable": True},
                    "source_agent": {"type": "string"}, "destination_agent": {"type": "string"},
                    "job_name": {"type": "string", "nullable": True},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "files": {"type": "array", "items": {"$ref": "#/components/schemas/TransferFile"}},
                    "message": {"type": "string", "nullable": True},
                    "bytes_total": {"type": "integer"}, "bytes_done": {"type": "integer"},
                    "rate_bytes_per_second": {"type": "integer"}, "recoveries": {"type": "integer"},
                    "last_stall": {"type": "string", "nullable": True}, "verified": {"type": "boolean"},
                    "live": {"type": "boolean"},
                    "destinations": {"type": "array", "nullable": True,
                                     "items": {"$ref": "#/components/schemas/TransferDestination"},
                                     "description": "only of a fan-out: each destination ({agent} from the started "
                                                    "event; while it runs, its live progress figures: state, "
                                                    "bytes_done, files_done, recoveries, bytes_resent; its "
                                                    "outcome, as the completed event's destinations items, once "
                                                    "it ended); null otherwise"},
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}},
                "TransferDestination": {"type": "object", "required": ["agent"], "description": "One destination "
                                        "of a fan-out: what is known of it (the started event: its agent; the "
                                        "live progress: its figures; the completed event: its outcome)",
                                        "properties": {
                    "agent": {"type": "string"}, "state": {"type": "string"},
                    "result_code": {"type": "integer", "nullable": True},
                    "files_done": {"type": "integer"}, "files_failed": {"type": "integer"},
                    "bytes_done": {"type": "integer"}, "recoveries": {"type": "integer"},
                    "bytes_resent": {"type": "integer"}, "supplement": {"type": "string", "nullable": True}}},
                "TransferFile": {"type": "object", "description": "A file of a transfer (the history's row: "
                                 "`result`; the events' file reports: `result_code`)", "properties": {
                    "index": {"type": "integer"}, "source": {"type": "string"}, "destination": {"type": "string"},
                    "size": {"type": "integer"}, "checksum_method": {"type": "string", "enum": CHECKSUMS},
                    "digest": {"type": "string", "nullable": True,
                               "description": "over the bytes the destination received (hex)"},
                    "written_digest": {"type": "string", "nullable": True,
                                       "description": "-t text only: of the converted file the destination wrote"},
                    "result": {"type": "integer", "nullable": True}, "result_code": {"type": "integer"},
                    "supplement": {"type": "string", "nullable": True}}},
                "Event": {"type": "object", "additionalProperties": True,
                          "description": "A log event (docs/log-events.md, docs/log-event.schema.json) with "
                                         "`verified` and, when not verified, `problem`", "properties": {
                    "event_id": {"type": "string"}, "transfer_id": {"type": "string"},
                    "action": {"type": "string"}, "state": {"type": "string"}, "time": {"type": "string"},
                    "agent": {"type": "string"}, "agent_role": {"type": "string", "enum": ["source", "destination"]},
                    "source_agent": {"type": "string"}, "destination_agent": {"type": "string"},
                    "job_name": {"type": "string", "nullable": True},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "message": {"type": "string", "nullable": True}, "message_id": {"type": "string"},
                    "result_code": {"type": "integer"},
                    "result": {"type": "string"}, "originator": {"type": "string", "nullable": True},
                    "recovery_timeout": {"type": "integer"},
                    "files": {"type": "array", "items": {"$ref": "#/components/schemas/TransferFile"}},
                    "files_omitted": {"type": "integer"},
                    "skipped": {"type": "array", "description": "started: sources the walk left out",
                                "items": {"type": "object", "properties": {"source": {"type": "string"},
                                                                           "reason": {"type": "string"}}}},
                    "skipped_count": {"type": "integer"},
                    "destination_agents": {"type": "array", "items": {"type": "string"},
                                           "description": "started: only of a fan-out, every destination agent "
                                                          "in the order of the request (the first is "
                                                          "destination_agent)"},
                    "directories": {"type": "array", "items": {"type": "string"},
                                    "description": "started: the (empty) directories created at the destination"},
                    "encryption": {"type": "string", "enum": ["aes-256-gcm", "none"],
                                   "description": "started, completed: absent in the events of older agents"},
                    "programs": {"type": "array", "items": {"$ref": "#/components/schemas/ProgramReport"},
                                 "description": "completed: only when the transfer has program calls"},
                    "destinations": {"type": "array", "description": "completed: a fan-out's outcome at each "
                                     "destination, in the order of the request (docs/log-events.md)",
                                     "items": {"type": "object", "properties": {
                                         "agent": {"type": "string"}, "state": {"type": "string"},
                                         "result_code": {"type": "integer", "nullable": True},
                                         "files_done": {"type": "integer"}, "files_failed": {"type": "integer"},
                                         "bytes_done": {"type": "integer"}, "recoveries": {"type": "integer"},
                                         "supplement": {"type": "string", "nullable": True}}}},
                    "statistics": {"type": "object", "properties": {n: {"type": "integer"} for n in (
                        "files", "files_succeeded", "files_failed", "bytes", "recoveries", "bytes_resent")} | {
                        "seconds": {"type": "number"}}},
                    "verified": {"type": "boolean"}, "problem": {"type": "string"}}},
                "ProgramReport": {"type": "object", "properties": {
                    "when": {"type": "string", "enum": [*WHEN, "monitor"]}, "name": {"type": "string"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "outcome": {"type": "string", "enum": ["success", "failure", "refused", "timed_out"]},
                    "return_code": {"type": "integer", "nullable": True}, "attempts": {"type": "integer"},
                    "output": {"type": "string"}, "message": {"type": "string"},
                    "agent": {"type": "string", "description": "only of a fan-out transfer: the agent that ran "
                                                               "the call (docs/configuration.md#program-calls)"}}},
                "TransferRequest": {"type": "object", "required": ["spec"], "properties": {
                    "version": {"type": "integer", "enum": [1]},
                    "spec": {"$ref": "#/components/schemas/TransferSpec"}}},
                "TransferSpec": {"type": "object", "additionalProperties": False,
                                 "required": ["source_agent", "destination_agent", "items"], "properties": {
                    "source_agent": {"type": "string"}, "destination_agent": {"type": "string"},
                    "destination_agents": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 16,
                                           "nullable": True, "description": "a fan-out: every destination, the "
                                           "first being destination_agent (docs/protocol.md#fan-out)"},
                    "items": {"type": "array", "minItems": 1, "maxItems": 10000,
                              "items": {"$ref": "#/components/schemas/TransferItem"}},
                    "exist": {"type": "string", "enum": ["error", "overwrite"], "default": "error"},
                    "disposition": {"type": "string", "enum": ["leave", "delete"], "default": "leave"},
                    "checksum": {"type": "string", "enum": CHECKSUMS, "default": "sha256"},
                    "recovery_timeout": {"type": "integer", "minimum": -1, "nullable": True},
                    "job_name": {"type": "string", "maxLength": 256, "nullable": True},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "mode": {"type": "string", "enum": ["binary", "text"], "default": "binary"},
                    "source_encoding": {"type": "string", "nullable": True, "description": "-t text: e.g. utf-8"},
                    "destination_encoding": {"type": "string", "nullable": True},
                    "destination_line_ending": {"type": "string", "enum": ["LF", "CRLF"], "nullable": True},
                    "programs": {"type": "object", "nullable": True, "additionalProperties": False,
                                 "properties": {w: {"$ref": "#/components/schemas/ProgramCall"} for w in WHEN}},
                    "priority": {"type": "integer", "minimum": 0, "maximum": 9, "nullable": True},
                    "bandwidth": {"type": "integer", "minimum": 1, "nullable": True,
                                  "description": "bytes a second at most"},
                    "trigger": {"type": "string", "nullable": True,
                                "description": "file=exist,PATH[,...] | file!=exist,PATH[,...] | "
                                               "filesize>=SIZE,PATH[,...]"}}},
                "TransferItem": {"type": "object", "additionalProperties": False,
                                 "required": ["source", "destination", "destination_type"], "properties": {
                    "source": {"type": "string"}, "destination": {"type": "string"},
                    "destination_type": {"type": "string", "enum": ["file", "directory"]},
                    "recursive": {"type": "boolean", "default": False}}},
                "ProgramCall": {"type": "object", "additionalProperties": False, "required": ["name"],
                                "properties": {
                    "type": {"type": "string", "enum": ["executable"]}, "name": {"type": "string"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "retry_count": {"type": "integer", "minimum": 0}, "retry_wait": {"type": "integer", "minimum": 0},
                    "success_rc": {"type": "string", "default": "0"}}},
            },
        },
    }
