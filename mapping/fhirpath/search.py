"""SearchParameter expressions compiled for the store's search index.

``compile_search_expression("Observation.code | Observation.component.code", "o.json", "Observation")``
returns a SQL expression of type ``JSON[]``: every value the parameter indexes on that resource
(CodeableConcepts, References, dates, Quantities...), empty when none. Parts of a multi-resource
expression that name another resource type compile to nothing; ``where(resolve() is Patient)`` tests
the reference's type prefix, since resolving would need another row.
"""

from __future__ import annotations

from mapping.fhirpath.compiler import compile_fhirpath
from mapping.fhirpath.values import list_of, to_kind


def compile_search_expression(expression: str, json_sql: str, resource_type: str) -> str:
    """SQL (type ``JSON[]``) listing the values ``expression`` selects from the resource JSON in
    ``json_sql`` (a column or SQL expression of type JSON) of type ``resource_type``.

    Raises ``FhirPathError`` if the expression uses something the compiler does not support.
    """
    value = compile_fhirpath(expression, json_sql, resource_type)
    return list_of(to_kind(value, "json"))
