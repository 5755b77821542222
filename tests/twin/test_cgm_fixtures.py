"""The FHIR and HL7v2 renderings of the CGM fixtures carry the same data as the raw tables."""

import gzip
import json
from pathlib import Path

import numpy as np

from twin.data import read_raw_cgm_csv

CGM = Path(__file__).resolve().parents[2] / "fixtures" / "cgm"


def ndjson_gz(resource_type: str) -> list[dict]:
    with gzip.open(CGM / "fhir" / f"{resource_type}.ndjson.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def test_fhir_and_hl7v2_match_raw_tables() -> None:
    patients = [json.loads(line) for line in (CGM / "fhir" / "Patient.ndjson").open()]
    assert len(patients) >= 4
    obs, meds = ndjson_gz("Observation"), ndjson_gz("MedicationAdministration")
    for p in patients:
        data, _ = read_raw_cgm_csv(str(CGM / "raw" / f"{p['id']}.csv.gz"))
        assert data.t_min[-1] - data.t_min[0] >= 7 * 1440 - 5
        ref = f"Patient/{p['id']}"
        cgm = [o for o in obs if o["subject"]["reference"] == ref and o["code"]["coding"][0]["code"] == "99504-3"]
        carbs = [o for o in obs if o["subject"]["reference"] == ref and o["code"]["coding"][0]["code"] == "9059-7"]
        assert len(cgm) == len(data.t_min) and {o["valueQuantity"]["unit"] for o in cgm} == {"mg/dL"}
        np.testing.assert_allclose(sorted(o["valueQuantity"]["value"] for o in carbs), sorted(data.carbs_g))
        mine = [m for m in meds if m["subject"]["reference"] == ref]
        boluses = [m["dosage"]["dose"]["value"] for m in mine if "effectiveDateTime" in m]
        basals = [m for m in mine if "effectivePeriod" in m]
        np.testing.assert_allclose(sorted(boluses), sorted(data.bolus_u))
        assert basals and all(m["dosage"]["rateQuantity"]["code"] == "U/h" for m in basals)
        segs = (CGM / "hl7v2" / f"{p['id']}.hl7").read_bytes().decode().replace("\r\n", "\r").split("\r")
        obx = [s.split("|") for s in segs if s.startswith("OBX|")]
        assert sum(1 for f in obx if f[3].startswith("99504-3")) == len(data.t_min)
        rxa = [s.split("|") for s in segs if s.startswith("RXA|")]
        assert sum(1 for f in rxa if f[7].startswith("U^")) == len(boluses)
        assert sum(1 for s in segs if s.startswith("MSH|") and "RAS^O17" in s) == len(rxa)
