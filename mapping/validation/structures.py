"""The compiled FHIR R4 element tables (built by ``mapping.validation.build``).

Loaded once per process and shared by the validator and the FHIR XML <-> JSON
converter, which needs the same facts: which elements repeat, which are primitives of
which type, where resources nest, and the order of elements in a type.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parent / "data" / "r4_structures.json.gz"

KIND_PRIMITIVE = 0
KIND_COMPLEX = 1
KIND_RESOURCE = 2


@dataclass(frozen=True, slots=True)
class ElementSpec:
    """One JSON property of a type. ``type_name`` is a primitive, complex type or backbone path."""

    name: str
    type_name: str
    kind: int
    minimum: int
    maximum: int  # -1 = unbounded
    choice: str | None

    @property
    def repeats(self) -> bool:
        return self.maximum != 1


@dataclass(frozen=True, slots=True)
class Structures:
    fhir_version: str
    resource_types: frozenset[str]
    primitive_regexes: dict[str, str | None]
    # type name -> JSON property name -> spec, in StructureDefinition element order
    types: dict[str, dict[str, ElementSpec]]

    def element(self, type_name: str, name: str) -> ElementSpec | None:
        table = self.types.get(type_name)
        return None if table is None else table.get(name)


def _kind(type_name: str, primitives: dict[str, str | None]) -> int:
    if type_name in primitives:
        return KIND_PRIMITIVE
    if type_name == "Resource":
        return KIND_RESOURCE
    return KIND_COMPLEX


@cache
def load_structures() -> Structures:
    """Read the compiled tables (cached: one copy per process)."""
    with gzip.open(DATA_FILE, "rb") as fh:
        raw = json.loads(fh.read())
    primitives: dict[str, str | None] = raw["primitives"]
    types: dict[str, dict[str, ElementSpec]] = {}
    for type_name, elements in raw["types"].items():
        types[type_name] = {
            name: ElementSpec(name, target, _kind(target, primitives), minimum, maximum, choice)
            for name, (target, minimum, maximum, choice) in elements.items()
        }
    return Structures(raw["fhirVersion"], frozenset(raw["resources"]), primitives, types)
