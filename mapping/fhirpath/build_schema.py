"""Regenerate ``fhir_r4_elements.json.gz`` from the FHIR R4 StructureDefinitions.

The compiler needs, for every element, its type(s) and whether it repeats: that is what lets
``Patient.name.given`` become the single JSON path ``$.name[*].given[*]`` instead of a generic
"array or object?" test at each step. The full definitions are 37 MB; the extract is small enough
to ship in the package. Run once per FHIR version::

    python -m mapping.fhirpath.build_schema PATH/profiles-resources.json PATH/profiles-types.json
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from mapping.fhirpath.schema import SCHEMA_FILE

_SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."
_SYSTEM_TO_FHIR = {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
                   "Date": "date", "DateTime": "dateTime", "Time": "time"}


def _type_code(code: str) -> str:
    if code.startswith(_SYSTEM_PREFIX):
        return _SYSTEM_TO_FHIR[code.removeprefix(_SYSTEM_PREFIX)]
    return code


def _elements(definition: dict) -> dict[str, dict[str, list]]:
    """Map each (backbone) type path of one StructureDefinition to its child elements.

    An entry is ``[types, repeats, is_choice]``; a choice ``value[x]`` is keyed without the ``[x]``. Backbone elements get the element path as type name, content references
    point at the referenced path.
    """
    out: dict[str, dict[str, list]] = {}
    for el in definition["snapshot"]["element"]:
        path: str = el["path"]
        if "." not in path:
            continue
        parent, name = path.rsplit(".", 1)
        codes = [_type_code(t["code"]) for t in el.get("type", [])]
        if "contentReference" in el:
            codes = [el["contentReference"].lstrip("#")]
        elif codes in (["BackboneElement"], ["Element"]) and any(
            other["path"].startswith(path + ".") for other in definition["snapshot"]["element"]
        ):
            codes = [path]
        repeats = el.get("max") != "1" and el.get("max") != "0"
        out.setdefault(parent, {})[name.removesuffix("[x]")] = [codes, repeats, name.endswith("[x]")]
    return out


def build(resources_file: Path, types_file: Path) -> dict:
    """Return ``{"elements": {type: {name: [types, repeats]}}, "resources": [...], "primitives": [...],
    "aliases": {profile: base}}`` (aliases: Age, Duration, ... are constrained Quantity)."""
    elements: dict[str, dict[str, list]] = {}
    resources: list[str] = []
    primitives: list[str] = []
    aliases: dict[str, str] = {}
    for file in (types_file, resources_file):
        for entry in json.loads(file.read_text())["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition":
                continue
            if sd.get("derivation") == "constraint":
                if sd.get("kind") == "complex-type" and sd["type"] != sd["id"]:
                    aliases[sd["id"]] = sd["type"]
                continue
            if sd.get("kind") == "primitive-type":
                primitives.append(sd["id"])
                continue
            if sd.get("kind") not in ("resource", "complex-type") or "snapshot" not in sd:
                continue
            if sd["kind"] == "resource":
                resources.append(sd["id"])
            elements.update(_elements(sd))
    return {"elements": elements, "resources": sorted(resources), "primitives": sorted(primitives),
            "aliases": aliases}


def main(argv: list[str]) -> None:
    schema = build(Path(argv[0]), Path(argv[1]))
    with gzip.open(SCHEMA_FILE, "wt", encoding="utf-8") as fh:
        json.dump(schema, fh, separators=(",", ":"), sort_keys=True)
    print(f"wrote {len(schema['elements'])} types to {SCHEMA_FILE}")


if __name__ == "__main__":
    main(sys.argv[1:])
