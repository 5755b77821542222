"""FHIR R4 element model used to type FHIRPath expressions at compile time.

Knowing that ``Patient.name`` repeats and ``HumanName.family`` does not is what makes the generated
SQL as tight as hand-written JSON paths. Elements unknown to the model (profiles' extras, test data
with invented fields) are still navigated, through a slower generic step.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("fhir_r4_elements.json.gz")


@dataclass(frozen=True)
class Element:
    """One child element: its type names (several for a choice ``value[x]``) and whether it repeats."""

    types: tuple[str, ...]
    repeats: bool
    is_choice: bool


class Schema:
    """Read-only view of the shipped element extract (see ``build_schema``)."""

    def __init__(self, data: dict) -> None:
        self._elements: dict[str, dict[str, list]] = data["elements"]
        self.resources: frozenset[str] = frozenset(data["resources"])
        self.primitives: frozenset[str] = frozenset(data["primitives"])
        self._aliases: dict[str, str] = data["aliases"]

    def base_type(self, type_name: str) -> str:
        """Resolve a constrained profile (``Age``, ``SimpleQuantity``) to the type it constrains."""
        return self._aliases.get(type_name, type_name)

    def is_type(self, name: str) -> bool:
        return name in self._elements or name in self.primitives or name in self._aliases

    def element(self, type_name: str | None, name: str) -> Element | None:
        if type_name is None:
            return None
        children = self._elements.get(self.base_type(type_name))
        if children is None or name not in children:
            return None
        types, repeats, is_choice = children[name]
        return Element(tuple(types), bool(repeats), bool(is_choice))


@cache
def r4_schema() -> Schema:
    with gzip.open(SCHEMA_FILE, "rt", encoding="utf-8") as fh:
        return Schema(json.load(fh))
