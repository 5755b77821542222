"""``POST /fhir/Patient/{id}/$simulate``: run a patient's twin under a scenario, store nothing.

The request and response follow the contract in DESIGN.md (Parameters in; a
collection Bundle of predicted Observations with 80%/95% interval components plus
the fitted parameters out). Bad requests get an OperationOutcome that points into
the Parameters; a patient without the data a model needs gets 422 saying what is
missing.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from fhir_server.bodies import parse_body
from fhir_server.operations import InPool
from fhir_server.responses import FHIRError, negotiate, render
from store.store import Store
from twin.inputs import MissingData
from twin.scenario import ScenarioError, parse_request
from twin.service import UnknownModel, simulate, simulation_bundle


def run_simulation(store: Store, patient_id: str, body: object) -> dict:
    """Parse, simulate and bundle, mapping failures to FHIR errors."""
    try:
        req = parse_request(body)  # type: ignore[arg-type]
    except ScenarioError as exc:
        raise FHIRError(400, str(exc), code="invalid", expression=exc.expression, issues=exc.issues) from None
    try:
        result = simulate(store, patient_id, req)
    except LookupError as exc:
        raise FHIRError(404, str(exc), code="not-found") from None
    except UnknownModel as exc:
        raise FHIRError(400, str(exc), code="not-supported", expression="Parameters.parameter") from None
    except MissingData as exc:
        raise FHIRError(422, str(exc), code="processing") from None
    return simulation_bundle(result)


def register_simulate(app: FastAPI, store: Store, in_pool: InPool) -> None:
    """Add the ``$simulate`` route (before the generic instance routes that would shadow it)."""

    @app.post("/fhir/Patient/{rid}/$simulate")
    async def simulate_route(rid: str, request: Request) -> Response:
        fmt = negotiate(request)
        body = parse_body(await request.body(), request.headers.get("content-type"))
        return render(await in_pool(run_simulation, store, rid, body), fmt, shape_body=False)
