"""Compile the store's data tables from the FHIR R4 definitions.

The Patient compartment is defined by search parameters; the store needs, per
resource type, the top-level elements whose references put a resource in a
patient's compartment. Reading that off the definitions once keeps it data,
not code. Run from the repository root: ``python -m store.build_data``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = ROOT.parent / "shared" / "data" / "fhir-r4"
OUT = Path(__file__).with_name("data") / "patient_compartment.json"
_TOP_ELEMENT = re.compile(r"^\(?(\w+)\.(\w+)")


def build_patient_compartment() -> dict[str, list[str]]:
    """Resource type -> top-level element names that can reference the patient."""
    compartment = json.loads((DEFINITIONS / "compartmentdefinition-patient.json").read_text())
    params = json.loads((DEFINITIONS / "search-parameters.json").read_text())
    expressions: dict[tuple[str, str], str] = {}
    for entry in params["entry"]:
        sp = entry["resource"]
        for base in sp.get("base", []):
            expressions[(base, sp["code"])] = sp.get("expression", "")
    table: dict[str, list[str]] = {}
    for item in compartment["resource"]:
        rtype = item["code"]
        elements: list[str] = []
        for code in item.get("param", []):
            if code == "{def}":
                continue
            for part in expressions.get((rtype, code), "").split("|"):
                m = _TOP_ELEMENT.match(part.strip())
                if m and m.group(1) == rtype and m.group(2) not in elements:
                    elements.append(m.group(2))
        if elements:
            table[rtype] = elements
    return table


def main() -> None:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(build_patient_compartment(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
