"""End to end: demo pipeline into a fresh DB, live server, read back with the fhirclient library."""

from __future__ import annotations

from pathlib import Path

import pytest
from fhirclient import client
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.observation import Observation
from fhirclient.models.provenance import Provenance
from rich.console import Console
from support import live_server

from fhir_server.app import create_app
from fhirtwin.demo import run_pipeline
from store.store import Store


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, list]:
    db = tmp_path_factory.mktemp("db") / "demo.duckdb"
    store = Store(db)
    synthea = Path(__file__).resolve().parents[2] / "fixtures" / "synthea"
    results = run_pipeline(store, synthea, Console(quiet=True))
    yield store, results
    store.close()


def test_pipeline_publishes_predictions_for_patients_with_series(published: tuple[Store, list]) -> None:
    store, results = published
    assert store.count("Patient") == 38
    measures = {r.measure for r in results}
    assert measures == {"hba1c", "systolic_bp"}
    for r in results:
        lo80, hi80 = r.predicted.intervals[80]
        lo95, hi95 = r.predicted.intervals[95]
        assert lo95 < lo80 < r.predicted.mean < hi80 < hi95
        assert r.predicted.time > r.last_time


def test_fhirclient_reads_published_observations(published: tuple[Store, list]) -> None:
    store, results = published
    with live_server(create_app(store)) as base:
        smart = client.FHIRClient(settings={"app_id": "fhirtwin-test", "api_base": base})
        smart.prepare()
        capability = CapabilityStatement.read_from("metadata", smart.server)
        assert capability.fhirVersion == "4.0.1"
        types = {r.type for r in capability.rest[0].resource}
        assert {"Patient", "Observation", "Provenance"} <= types

        first = results[0]
        obs = Observation.read(first.observation_id, smart.server)
        assert obs.status == "preliminary"
        assert obs.subject.reference == f"Patient/{first.patient_id}"
        assert obs.valueQuantity.value == pytest.approx(first.predicted.mean, rel=1e-3)
        texts = {c.code.text for c in obs.component}
        assert texts == {"80% prediction interval", "95% prediction interval"}
        assert len(obs.derivedFrom) == first.n_points
        assert "bayesian-linear-trend" in obs.method.text
        assert any(t.code == "simulated" for t in obs.meta.tag)

        # Every input the prediction cites can be read back.
        for ref in obs.derivedFrom[:3]:
            Observation.read(ref.reference.split("/")[1], smart.server)

        search = Observation.where(
            struct={"subject": f"Patient/{first.patient_id}", "code": "http://loinc.org|4548-4", "_count": "5"}
        )
        found = list(search.perform_resources_iter(smart.server))
        measured = [o for o in found if o.status != "preliminary"]
        predicted = [o for o in found if o.status == "preliminary"]
        assert len(measured) == first.n_points
        assert [o.id for o in predicted] == [first.observation_id]

        bundle = Provenance.where(struct={"_count": "3"}).perform(smart.server)
        assert isinstance(bundle, Bundle)
        assert bundle.total == len(results)
        next_links = [link.url for link in bundle.link if link.relation == "next"]
        assert next_links and next_links[0].startswith(base)
