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



def _split_union(expression: str) -> list[str]:
    """Top-level ``|`` alternatives of a FHIRPath expression (parentheses respected)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expression):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def _for_type(expression: str, rtype: str) -> str:
    """The alternatives of a multi-base expression that apply to one resource type."""
    keep = []
    for part in _split_union(expression):
        bare = part.lstrip("(")
        if bare == rtype or bare.startswith((f"{rtype}.", f"{rtype} ")):
            keep.append(part)
    return " | ".join(keep)


def build_search_parameters() -> dict[str, dict[str, dict]]:
    """Resource type -> search parameter code -> {type, expression, target, component}."""
    params = json.loads((DEFINITIONS / "search-parameters.json").read_text())
    by_url = {e["resource"]["url"]: e["resource"] for e in params["entry"]}
    table: dict[str, dict[str, dict]] = {}
    for sp in by_url.values():
        for base in sp.get("base", []):
            entry: dict = {"type": sp["type"]}
            if sp.get("expression"):
                expr = _for_type(sp["expression"], base) if base not in ("Resource", "DomainResource") else sp[
                    "expression"
                ]
                if not expr:
                    continue
                entry["expression"] = expr
            if sp.get("target"):
                entry["target"] = sorted(sp["target"])
            if sp.get("component"):
                entry["component"] = [
                    {"code": by_url[c["definition"]]["code"], "type": by_url[c["definition"]]["type"],
                     "expression": c["expression"]}
                    for c in sp["component"]
                    if c["definition"] in by_url
                ]
            if sp.get("modifier"):
                entry["modifier"] = sp["modifier"]
            table.setdefault(base, {})[sp["code"]] = entry
    return table


def main_all() -> None:
    """Write every data table the store ships."""
    main()
    out = OUT.with_name("search_parameters.json")
    out.write_text(json.dumps(build_search_parameters(), indent=0, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main_all()
