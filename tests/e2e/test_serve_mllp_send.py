"""An external HL7v2 sender (python-hl7's ``mllp_send``) feeding a running ``fhirtwin serve``;
the ACKs are checked and the mapped resources are then found through the FHIR REST API.

Under both original-mode ACK policies: ``processed`` (the default) and ``commit``, chosen
through FHIRTWIN_MLLP_ACK_AFTER, where mapping follows the AA and the reads wait for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from support import FHIRTWIN, FIXTURES, free_port, wait_for_serve

MLLP_SEND = Path(sys.executable).with_name("mllp_send")
FEED = FIXTURES / "mllp" / "feed.hl7"


def search(base: str, rtype: str, params: dict[str, object], *, wait_for: int = 0) -> dict:
    """A search; with ``wait_for``, repeated until background mapping has produced that many matches
    (the deadline only guards against a hang; no timing is checked)."""
    deadline = time.monotonic() + 60
    while True:
        found = httpx.get(f"{base}/{rtype}", params=params).json()
        if found["total"] >= wait_for or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@contextmanager
def serving_a_feed(tmp_path: Path, ack_after: str, feed: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A ``fhirtwin serve`` under the ACK policy ``ack_after`` that ``mllp_send`` sent ``feed`` to:
    (FHIR base URL, the ACKs in order). The server is stopped afterwards."""
    port, mllp_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*FHIRTWIN, "serve", "--db", str(tmp_path / "feed.duckdb"), "--port", str(port), "--mllp-port", str(mllp_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "FHIRTWIN_MLLP_ACK_AFTER": ack_after},
    )
    try:
        wait_for_serve(proc, port, mllp_port)
        out = subprocess.run(  # mllp_send has no timeout of its own
            [str(MLLP_SEND), "--loose", "-f", str(feed), "-p", str(mllp_port), "127.0.0.1"],
            capture_output=True, timeout=60, check=True,
        ).stdout
        yield f"http://127.0.0.1:{port}/fhir", [a.strip(b"\x0b\r\n") for a in out.split(b"\x1c") if a.strip(b"\x0b\r\n")]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def msa_codes(acks: list[bytes]) -> list[str]:
    return [next(s for s in a.split(b"\r") if s.startswith(b"MSA")).split(b"|")[1].decode() for a in acks]


@pytest.mark.parametrize("ack_after", ["processed", "commit"])
def test_mllp_send_to_fhirtwin_serve_then_read_over_rest(tmp_path: Path, ack_after: str) -> None:
    with serving_a_feed(tmp_path, ack_after, FEED) as (base, acks):
        assert msa_codes(acks) == ["AA", "AA", "AA", "CA", "AR", "AA", "AA", "AE"]
        # Unmapped type: processed says so in MSA-3 (and ERR severity I); commit answered before mapping.
        assert (b"not mapped" in acks[5]) == (ack_after == "processed")
        # Every mapped message names its source message in a Provenance (under commit: once mapping has run).
        background = ack_after == "commit"
        assert search(base, "Provenance", {"_count": 50}, wait_for=4 if background else 0)["total"] >= 4
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


ADMIT_OLD = ("MSH|^~\\&|ADT|H|EHR|H|20190401090000||ADT^A01^ADT_A01|adm-old|P|2.8\r"
             "EVN|A01|20190401090000\r"
             "PID|1||56789^^^BCBS^MR||Berry^Alice^M||19700102|F|||9 Old Road^^Cary^NC^27511\r"
             "PV1|1|I|W1^101^1|||||||||||||||||V200^^^H^VN\r")
CANCEL = ADMIT_OLD.replace("ADT^A01^ADT_A01|adm-old", "ADT^A11^ADT_A09|cancel-old").replace("EVN|A01", "EVN|A11")
UNTYPED = ("MSH|^~\\&|LAB|H|EHR|H|20260301120000||ORU^R01^ORU_R01|lab-untyped|P|2.5.1\r"
           "PID|1||56789^^^BCBS^MR||Berry^Alice\rOBR|1|P9|F9|2345-7^Glucose^LN|||20260301110000\r"
           "OBX|1||2345-7^Glucose^LN|1|131|mg/dL|||||F\r")


@pytest.mark.parametrize("ack_after", ["processed", "commit"])
def test_a_merge_a_cancelled_admission_and_an_untyped_result_over_mllp(tmp_path: Path, ack_after: str) -> None:
    """Through the listener (under ``commit`` mapping runs in a worker process): A40 keeps the retired
    record's demographics, A11 cancels the Encounter, an OBX without OBX-2 keeps its value with a W ERR."""
    feed = tmp_path / "feed.hl7"
    merge = (FIXTURES / "hl7v2" / "ADT-A40-01.hl7").read_text().replace("\n", "\r").strip("\r") + "\r"
    merge = merge.replace("|||NE|NE", "")  # the sample asks for no ACK at all (enhanced mode, NE/NE)
    feed.write_bytes(b"\n".join(m.encode() for m in (ADMIT_OLD, CANCEL, merge, UNTYPED)))
    with serving_a_feed(tmp_path, ack_after, feed) as (base, raw_acks):
        acks = [a.decode() for a in raw_acks]
        assert msa_codes(raw_acks) == ["AA"] * 4
        if ack_after == "processed":  # under commit the AA went out before mapping found the missing type
            assert "OBX^4^2" in acks[3] and "OBX-2 is empty" in acks[3]
        found = search(base, "Observation", {"code": "2345-7"}, wait_for=1)
        assert found["entry"][0]["resource"]["valueQuantity"]["value"] == 131
        old = search(base, "Patient", {"identifier": "56789", "active": "false"}, wait_for=1)["entry"][0]["resource"]
        assert old["name"][0]["family"] == "Berry" and old["birthDate"] == "1970-01-02"
        assert old["link"][0]["type"] == "replaced-by"
        encounters = search(base, "Encounter", {"subject": f"Patient/{old['id']}"}, wait_for=1)
        assert [e["resource"]["status"] for e in encounters["entry"]] == ["cancelled"]
