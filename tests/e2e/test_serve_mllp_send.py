"""An external HL7v2 sender (python-hl7's ``mllp_send``) feeding a running ``fhirtwin serve``;
the ACKs are checked and the mapped resources are then found through the FHIR REST API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from support import FHIRTWIN, FIXTURES, free_port, wait_for_serve

MLLP_SEND = Path(sys.executable).with_name("mllp_send")
FEED = FIXTURES / "mllp" / "feed.hl7"


def test_mllp_send_to_fhirtwin_serve_then_read_over_rest(tmp_path: Path) -> None:
    port, mllp_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*FHIRTWIN, "serve", "--db", str(tmp_path / "feed.duckdb"), "--port", str(port), "--mllp-port", str(mllp_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_serve(proc, port, mllp_port)
        out = subprocess.run(  # mllp_send has no timeout of its own
            [str(MLLP_SEND), "--loose", "-f", str(FEED), "-p", str(mllp_port), "127.0.0.1"],
            capture_output=True, timeout=60, check=True,
        ).stdout
        acks = [a.strip(b"\x0b\r\n") for a in out.split(b"\x1c") if a.strip(b"\x0b\r\n")]
        msa = [next(s for s in a.split(b"\r") if s.startswith(b"MSA")).split(b"|")[1].decode() for a in acks]
        assert msa == ["AA", "AA", "AA", "CA", "AR", "AA", "AA", "AE"]
        base = f"http://127.0.0.1:{port}/fhir"
        # The ORU's glucose result (OBX 1554-5, mg/dl normalized to UCUM) and its patient.
        obs = httpx.get(f"{base}/Observation", params={"code": "1554-5"}).json()
        assert obs["total"] >= 1
        value = obs["entry"][0]["resource"]["valueQuantity"]
        assert value["value"] == 182 and value["code"] == "mg/dL"
        patients = httpx.get(f"{base}/Patient", params={"family": "EVERYWOMAN"}).json()
        assert patients["total"] >= 1
        subject = obs["entry"][0]["resource"]["subject"]["reference"]
        assert subject in {f"Patient/{e['resource']['id']}" for e in patients["entry"]}
        assert httpx.get(f"{base}/Observation", params={"subject": subject, "code": "1554-5"}).json()["total"] >= 1
        prov = httpx.get(f"{base}/Provenance", params={"_count": 50}).json()
        assert prov["total"] >= 4  # every mapped message names its source message
    finally:
        proc.terminate()
        proc.wait(timeout=30)
