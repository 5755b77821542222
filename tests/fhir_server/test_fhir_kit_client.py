"""The npm ``fhir-kit-client`` (ESM, posts transactions to ``{base}/``) against a live server.

The package is installed into ``tests/fhir_server/js/node_modules`` from the committed
lock file the first time the test runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent / "js"


@pytest.fixture(scope="session")
def fhir_kit_client() -> Path:
    """The scenario script, with its npm dependencies installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, "node and npm are needed for the fhir-kit-client scenario"
    if not (JS / "node_modules" / "fhir-kit-client").is_dir():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"npm ci failed: {done.stderr[-500:]}"
    return JS / "scenario.mjs"


def test_fhir_kit_client_scenario(fhir_kit_client: Path, server: tuple) -> None:
    _, base = server
    done = subprocess.run(["node", str(fhir_kit_client), base], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "fhirVersion": "4.0.1",
        "patientVersion": "1",
        "total": 5,
        "paged": 5,
        "updatedVersion": "2",
        "staleStatus": 412,
        "patchedBirthDate": "1980-02-03",
        "txStatuses": ["201 Created", "201 Created"],
        "txLinked": True,
        "historyTotal": 3,
        "readAfterDelete": 410,
    }
