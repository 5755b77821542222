"""Composite search parameters, exactly: all components must hold on the *same* element.

The index stores each component parameter separately (``component-code``,
``component-value-quantity`` …), so SQL can only ask that some element matches each
component; ``Observation?component-code-value-quantity=8462-4$gt100`` would then match a
blood pressure whose *systolic* is above 100. Search narrows candidates with those index
conditions and then checks each candidate here, one element of the composite at a time: the
element is cut out into a fragment of the resource (the resource with that one element in
place of the list), each component parameter's expression runs on the fragment through the
generated extractors, and its values become index rows by the same splitters the store uses,
which the in-memory matchers of :mod:`store.patient_cache` compare with the search value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from store import index_rows as rows
from store.extract import extractor
from store.patient_cache import matcher
from store.search_index import analyte_of
from store.search_params import SearchParam, params_for

_SPLITTERS = {
    "token": (rows.token_into, 3), "string": (rows.string_into, 2), "reference": (rows.reference_into, 5),
    "date": (rows.date_into, 2), "number": (rows.number_into, 1), "quantity": (rows.quantity_into, 7),
    "uri": (rows.uri_into, 1),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Predicate = Callable[[dict[str, Any]], bool]


def _top_keys(rtype: str, expression: str) -> set[str]:
    """Top-level element names an expression reads directly under the resource (``value`` for value[x])."""
    out = set()
    for part in expression.split("|"):
        path = part.strip().lstrip("(").strip()
        if path.startswith(f"{rtype}."):
            out.add(re.split(r"[.\s()]", path[len(rtype) + 1:], maxsplit=1)[0])
    return out


def _drops(key: str, names: set[str]) -> bool:
    return any(key == n or (key.startswith(n) and key[len(n):][:1].isupper()) for n in names)


def _value_rows(p: SearchParam, elements: list[Any], analyte: str | None) -> list[tuple[Any, ...]]:
    """Index rows of one parameter's elements, shaped like the rows the patient cache reads."""
    splitter, width = _SPLITTERS[p.type]
    cols: rows.Columns = [[] for _ in range(rows.VALUES + width)]
    splitter(cols, elements, 0, p.code, analyte)
    out = list(zip(*cols[rows.VALUES:], strict=True))
    if p.type == "date":
        out = [tuple(_EPOCH + timedelta(microseconds=us) for us in row) for row in out]
    return out


def composite_predicate(rtype: str, p: SearchParam, component_params: list[str],
                        values: list[str]) -> Predicate | None:
    """A check that one element satisfies every component, or None when it cannot be built exactly
    (a base path deeper than one level, a component expression the extractors do not support)."""
    keys: list[str | None] = []
    for part in (x.strip() for x in (p.expression or "").split("|")):
        if part == rtype:
            keys.append(None)
        elif re.fullmatch(rf"{rtype}\.\w+", part):
            keys.append(part.split(".", 1)[1])
        else:
            return None
    components = []
    for code, value in zip(component_params, values, strict=True):
        cp = params_for(rtype).get(code)
        if cp is None or cp.type not in _SPLITTERS or not cp.expression:
            return None
        extract = extractor(cp.expression, rtype)
        if extract is None:
            return None
        components.append((cp, extract, matcher(cp.type, "", value)))
    listed = {k for k in keys if k is not None}
    # When the resource itself is one of the elements (combo-…), a listed element's fragment must not
    # also carry the resource's own values of the components (its top-level code and value[x]).
    own = set().union(*(_top_keys(rtype, cp.expression) for cp, _, _ in components)) - listed if None in keys else set()

    def fragments(resource: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for key in keys:
            if key is None:
                out.append({k: v for k, v in resource.items() if k not in listed})
                continue
            value = resource.get(key)
            elements = value if isinstance(value, list) else [value] if value is not None else []
            base = {k: v for k, v in resource.items() if not _drops(k, own)}
            out += [{**base, key: [e]} for e in elements]
        return out

    def holds(resource: dict[str, Any]) -> bool:
        analyte = analyte_of(resource)  # the analyte the store indexed the resource's quantities with
        return any(
            all(any(pred(row) for row in _value_rows(cp, extract(frag), analyte)) for cp, extract, pred in components)
            for frag in fragments(resource)
        )

    return holds
