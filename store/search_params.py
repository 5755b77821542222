"""The R4 search parameters the store indexes, compiled from the specification (data file).

Each parameter's FHIRPath expression is compiled once to DuckDB SQL that lists
the matching elements of a resource's JSON; the index tables are filled from
those lists at write time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mapping.fhirpath.compiler import compile_fhirpath
from mapping.fhirpath.values import as_list, render, to_kind

_TABLE = Path(__file__).with_name("data") / "search_parameters.json"
_GENERIC_BASES = ("Resource", "DomainResource")

# Indexed param types and the table each lands in.
INDEXED_TYPES = ("token", "string", "reference", "date", "number", "quantity", "uri")
# Specification parameters this server does not answer, left out so a search using one is reported as
# unknown (ignored, or 400 under strict handling) rather than matching nothing: ``_query`` runs named
# queries the server would define, and it defines none.
NOT_ANSWERED = frozenset({"_query"})


@dataclass(frozen=True)
class SearchParam:
    """One search parameter of one resource type."""

    resource_type: str
    code: str
    type: str
    expression: str | None
    targets: tuple[str, ...] = ()
    components: tuple[tuple[str, str, str], ...] = ()  # (code, type, relative expression)

    def elements_sql(self, json_sql: str = "json") -> str:
        """SQL listing this parameter's elements (JSON[]) of the resource in ``json_sql``."""
        if not self.expression:
            raise ValueError(f"{self.code} has no expression")
        value = compile_fhirpath(self.expression, json_sql, self.resource_type)
        return render(as_list(to_kind(value, "json")))


@cache
def _raw() -> dict[str, dict[str, dict]]:
    return json.loads(_TABLE.read_text())


@cache
def params_for(resource_type: str) -> dict[str, SearchParam]:
    """Every search parameter of ``resource_type`` (its own and the generic Resource ones)."""
    raw = _raw()
    out: dict[str, SearchParam] = {}
    for base in (*_GENERIC_BASES, resource_type):
        for code, p in raw.get(base, {}).items():
            if code in NOT_ANSWERED:
                continue
            expr = p.get("expression")
            if expr and base in _GENERIC_BASES:
                expr = expr.replace(f"{base}.", f"{resource_type}.")
            out[code] = SearchParam(
                resource_type=resource_type,
                code=code,
                type=p["type"],
                expression=expr,
                targets=tuple(p.get("target", ())),
                components=tuple((c["code"], c["type"], c["expression"]) for c in p.get("component", ())),
            )
    return out


def known_resource_types() -> list[str]:
    """Resource types with search parameters in the specification."""
    return sorted(t for t in _raw() if t not in _GENERIC_BASES)
