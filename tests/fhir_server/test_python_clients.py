"""Real Python clients against a live server: ``fhirclient`` (strict R4 models) and ``fhirpy`` (sync)."""

from __future__ import annotations

import pytest
from fhirclient import client as smart_client
from fhirclient.models.bundle import Bundle, BundleEntry, BundleEntryRequest
from fhirclient.models.humanname import HumanName
from fhirclient.models.identifier import Identifier
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound


def _obs(patient_ref: str, value: float) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": patient_ref}, "effectiveDateTime": f"2024-03-0{int(value) % 9 + 1}T08:00:00Z",
            "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def test_fhirclient_scenario(server: tuple) -> None:
    _, base = server
    smart = smart_client.FHIRClient(settings={"app_id": "fhirtwin-test", "api_base": base})
    fhir = smart.server
    patient = Patient({"gender": "female", "birthDate": "1961-05-04"})
    patient.name = [HumanName({"family": "Strict", "given": ["Ada"]})]
    patient.identifier = [Identifier({"system": "urn:fhirclient", "value": "fc-1"})]
    created = patient.create(fhir)
    pid = created["id"]
    for value in range(6):
        Observation(_obs(f"Patient/{pid}", 70 + value)).create(fhir)

    search = Observation.where(struct={"subject": f"Patient/{pid}", "code": "http://loinc.org|8867-4", "_count": "4"})
    found = list(search.perform_resources_iter(fhir))
    assert len(found) == 6 and all(isinstance(o, Observation) for o in found)

    read = Patient.read(pid, fhir)
    assert read.name[0].family == "Strict" and read.meta.versionId == "1"
    read.gender = "male"
    updated = read.update(fhir)
    assert updated["meta"]["versionId"] == "2"

    bundle = Bundle({"type": "transaction"})
    entry = BundleEntry()
    entry.fullUrl = "urn:uuid:3a1c0e4e-0000-4000-8000-000000000001"
    entry.resource = Patient({"name": [{"family": "InTx"}]})
    entry.request = BundleEntryRequest({"method": "POST", "url": "Patient"})
    obs_entry = BundleEntry()
    obs_entry.resource = Observation(_obs(entry.fullUrl, 80))
    obs_entry.request = BundleEntryRequest({"method": "POST", "url": "Observation"})
    bundle.entry = [entry, obs_entry]
    response = Bundle(fhir.post_json("", bundle.as_json()).json())
    assert [e.response.status for e in response.entry] == ["201 Created", "201 Created"]
    assert response.entry[1].resource.subject.reference.startswith("Patient/")

    Patient.read(pid, fhir).delete(fhir)
    with pytest.raises(Exception, match="410"):
        Patient.read(pid, fhir)


def test_fhirpy_scenario(server: tuple) -> None:
    _, base = server
    client = SyncFHIRClient(base)
    patient = client.resource("Patient", identifier=[{"system": "urn:fhirpy", "value": "py-1"}],
                              name=[{"family": "Pyth"}], gender="female")
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"

    again, created = client.resources("Patient").search(identifier="urn:fhirpy|py-1").get_or_create(
        client.resource("Patient", identifier=[{"system": "urn:fhirpy", "value": "py-1"}]))
    assert not created and again.id == patient.id
    conditional = client.resource("Patient", identifier=[{"system": "urn:fhirpy", "value": "py-2"}])
    conditional.create(identifier="urn:fhirpy|py-2")
    assert conditional.id

    for value in range(5):
        client.resource("Observation", **_obs(f"Patient/{patient.id}", 60 + value)).save()
    observations = client.resources("Observation").search(subject=f"Patient/{patient.id}").limit(2)
    assert len(observations.fetch_all()) == 5
    assert observations.count() == 5

    patient.refresh()
    assert patient["meta"]["versionId"] == "1"
    patient["gender"] = "male"
    patient.save()
    assert patient["meta"]["versionId"] == "2"
    patient.patch(birthDate="1990-01-02")
    assert client.reference("Patient", patient.id).to_resource()["birthDate"] == "1990-01-02"
    assert patient.is_valid()

    patient.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", patient.id).to_resource()
