"""Browser apps on another origin: CORS preflights and headers, and no advertised OAuth that does not exist."""

from __future__ import annotations

from typing import Any

import httpx
from support import live_server

from fhir_server.app import create_app
from store.store import Store

ORIGIN = "https://app.example.org"


def _listed(value: str | None) -> set[str]:
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


def test_preflight_allows_fhir_methods_and_client_headers(http: httpx.Client) -> None:
    asked = "authorization, content-type, accept, if-match, if-none-match, if-none-exist, if-modified-since, " \
            "prefer, x-requested-with"
    for path, method in [("Patient/p1", "PUT"), ("Patient/p1", "PATCH"), ("Patient/p1", "DELETE"),
                         ("", "POST"), ("Patient", "GET"), ("metadata", "GET")]:
        r = http.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": method,
                                        "Access-Control-Request-Headers": asked})
        assert r.status_code == 200, (path, method, r.text)
        assert r.headers["access-control-allow-origin"] == "*"
        assert method.lower() in _listed(r.headers["access-control-allow-methods"])
        assert _listed(asked) <= _listed(r.headers["access-control-allow-headers"])


def test_responses_carry_cors_headers_and_expose_version_and_location(http: httpx.Client, patient: Any) -> None:
    created = http.post("Patient", json=patient("Cors"), headers={"Origin": ORIGIN})
    assert created.status_code == 201
    assert created.headers["access-control-allow-origin"] == "*"
    exposed = _listed(created.headers["access-control-expose-headers"])
    assert {"etag", "location", "last-modified", "content-location"} <= exposed
    read = http.get(created.headers["location"], headers={"Origin": ORIGIN})
    assert read.headers["access-control-allow-origin"] == "*" and read.headers["etag"] == 'W/"1"'
    missing = http.get("Patient/no-such-patient", headers={"Origin": ORIGIN})
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == "*"


def test_no_smart_configuration_and_capability_says_open_with_cors(http: httpx.Client) -> None:
    assert http.get(".well-known/smart-configuration").status_code == 404
    security = http.get("metadata").json()["rest"][0]["security"]
    assert security["cors"] is True
    assert "no authorization server" in security["description"].lower()



def test_an_unexpected_failure_answers_500_with_cors_headers_and_the_server_keeps_serving() -> None:
    store = Store()
    store.write([{"resourceType": "Patient", "id": "p1", "active": True}])

    def broken(*_args: Any) -> None:
        raise RuntimeError("disk on fire")

    with live_server(create_app(store)) as base, httpx.Client(base_url=base + "/", timeout=30) as client:
        working, store.current = store.current, broken  # a fault inside the store, as a failing disk would raise
        r = client.get("Patient/p1", headers={"Origin": ORIGIN, "Accept": "application/fhir+xml"})
        assert r.status_code == 500 and r.headers["access-control-allow-origin"] == "*"
        assert r.headers["content-type"].startswith("application/fhir+xml")  # the format the client asked for
        assert "internal error: RuntimeError" in r.text and "disk on fire" not in r.text
        store.current = working
        assert client.get("Patient/p1", headers={"Origin": ORIGIN}).json()["active"] is True
