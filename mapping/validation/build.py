"""Compile the FHIR R4 StructureDefinitions into the validator's element tables.

Run once when the definitions change::

    python -m mapping.validation.build [SHARED_FHIR_R4_DIR]

It reads ``profiles-resources.json`` and ``profiles-types.json`` (FHIR 4.0.1 snapshots)
and writes ``mapping/validation/data/r4_structures.json.gz``. Reading 37 MB of
StructureDefinitions at every start would cost seconds; the compiled table is ~100 kB
and loads in milliseconds.

Output shape::

    {"fhirVersion": "4.0.1",
     "resources": ["Account", ...],               # concrete resource types
     "primitives": {"date": "regex", ...},         # regex from the spec (None for xhtml)
     "types": {"Observation": {"status": ["code", 1, 1, null], ...},  # in element order
               "Observation.component": {...},     # backbone elements named by path
               "Quantity": {...}}}

Each element entry is ``[type, min, max, choice]``: ``type`` is a primitive name, a
complex type name, a backbone path, ``Resource`` (any resource) or ``xhtml``; ``max`` is
-1 for ``*``; ``choice`` names the ``[x]`` group (``value``) for the expanded JSON
names of a choice element (``valueQuantity``, ``valueString``...).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

FHIR_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXTENSION = "http://hl7.org/fhir/StructureDefinition/regex"
OUTPUT = Path(__file__).resolve().parent / "data" / "r4_structures.json.gz"
DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-r4"


def _extension_value(type_entry: dict[str, Any], url: str) -> str | None:
    for extension in type_entry.get("extension", []):
        if extension.get("url") == url:
            return extension.get("valueUrl") or extension.get("valueString")
    return None


def _element_type(type_entry: dict[str, Any]) -> str:
    code: str = type_entry["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        fhir_type = _extension_value(type_entry, FHIR_TYPE_EXTENSION)
        if fhir_type is None:
            raise ValueError(f"system type without fhir-type extension: {type_entry}")
        return fhir_type
    return code


def _compile_structure(sd: dict[str, Any], types: dict[str, dict[str, list[Any]]]) -> None:
    root: str = sd["type"]
    elements: list[dict[str, Any]] = sd["snapshot"]["element"]
    paths = [element["path"] for element in elements]
    has_children = {path.rsplit(".", 1)[0] for path in paths if "." in path}
    types.setdefault(root, {})
    for element in elements[1:]:
        path: str = element["path"]
        if element.get("max") == "0":
            continue
        owner, name = path.rsplit(".", 1)
        table = types.setdefault(owner, {})
        minimum = int(element.get("min", 0))
        maximum = -1 if element["max"] == "*" else int(element["max"])
        if "contentReference" in element:
            table[name] = [element["contentReference"].lstrip("#"), minimum, maximum, None]
            continue
        type_entries: list[dict[str, Any]] = element["type"]
        if name.endswith("[x]"):
            base = name[:-3]
            for type_entry in type_entries:
                code = _element_type(type_entry)
                table[base + code[0].upper() + code[1:]] = [code, minimum, maximum, base]
            continue
        code = _element_type(type_entries[0])
        if code in ("BackboneElement", "Element") and path in has_children:
            code = path
        elif path == f"{root}.id" and sd["kind"] == "resource":
            # The R4 snapshot types Resource.id as System.String, but the spec says id.
            code = "id"
        table[name] = [code, minimum, maximum, None]


def _primitive_regex(sd: dict[str, Any]) -> str | None:
    for element in sd["snapshot"]["element"]:
        if element["path"].endswith(".value"):
            return _extension_value(element["type"][0], REGEX_EXTENSION)
    return None


def compile_definitions(source: Path) -> dict[str, Any]:
    """Compile both definition bundles into the table structure described above."""
    types: dict[str, dict[str, list[Any]]] = {}
    primitives: dict[str, str | None] = {}
    resources: list[str] = []
    version = ""
    for file_name in ("profiles-types.json", "profiles-resources.json"):
        bundle = json.loads((source / file_name).read_text(encoding="utf-8"))
        for entry in bundle["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
                continue
            version = sd.get("fhirVersion", version)
            kind = sd.get("kind")
            if kind == "primitive-type":
                primitives[sd["type"]] = _primitive_regex(sd)
            elif kind in ("complex-type", "resource"):
                _compile_structure(sd, types)
                if kind == "resource" and not sd.get("abstract"):
                    resources.append(sd["type"])
    return {
        "fhirVersion": version,
        "resources": sorted(resources),
        "primitives": primitives,
        "types": types,
    }


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else DEFAULT_SOURCE
    compiled = compile_definitions(source)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(compiled, separators=(",", ":")).encode()  # keeps element order
    with gzip.GzipFile(OUTPUT, "wb", mtime=0) as fh:
        fh.write(payload)
    print(f"{OUTPUT}: {len(compiled['resources'])} resources, {len(compiled['types'])} types, "
          f"{len(payload)} bytes uncompressed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
