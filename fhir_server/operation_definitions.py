"""The OperationDefinitions of fhirtwin's own operations, served where the CapabilityStatement points.

A client generator (or a developer) reads ``GET /fhir/OperationDefinition/Patient-simulate`` to learn the
parameters of ``$simulate``; the definition is a data file, checked by the tests against what the
request parser accepts.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from fhir_server.responses import negotiate, render

_DATA = Path(__file__).with_name("data")
DEFINITIONS = {"Patient-simulate": "operationdefinition-patient-simulate.json"}


@cache
def operation_definition(definition_id: str) -> dict[str, Any]:
    """The OperationDefinition with this id (KeyError when fhirtwin defines none)."""
    return orjson.loads((_DATA / DEFINITIONS[definition_id]).read_bytes())


def register_operation_definitions(app: FastAPI) -> None:
    """Serve the definitions (before the generic read route, which looks in the store: OperationDefinitions
    clients stored there are read as any resource)."""
    for rid in DEFINITIONS:
        app.add_api_route(f"/fhir/OperationDefinition/{rid}", _reader(rid), methods=["GET"])


def _reader(rid: str) -> Any:
    async def read_operation_definition(request: Request) -> Response:
        return render(operation_definition(rid), negotiate(request))
    return read_operation_definition
