"""The OpenAPI 3 document of the REST API (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

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
                    "bytes_total": {"type": "integer"}, "bytes_done": {"type": "integer"},
                    "rate_bytes_per_second": {"type": "integer"}, "recoveries": {"type": "integer"},
                    "last_stall": {"type": "string", "nullable": True}, "verified": {"type": "boolean"},
                    "live": {"type": "boolean"},
                    "events": {"type": "array", "items": {"type": "object"}}}},
                "TransferRequest": {"type": "object", "required": ["spec"], "properties": {
                    "version": {"type": "integer", "enum": [1]},
                    "spec": {"type": "object", "description": "source_agent, destination_agent, items "
                             "[{source, destination, destination_type, recursive}], exist, disposition, "
                             "checksum, recovery_timeout, job_name, metadata"}}},
            },
        },
    }
