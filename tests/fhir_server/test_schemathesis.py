"""Property-based fuzzing of ``/fhir`` from the app's OpenAPI with schemathesis: bad input never yields a 500."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from fhir_server.app import create_app
from store.store import Store

app = create_app(Store())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])


def teardown_module() -> None:
    app.state.store.close()
