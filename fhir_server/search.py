"""Searchset pages: the one answer to a search, whether it arrives as a REST request or a Bundle entry.

The REST routes and batch/transaction GET entries both call :func:`search_page`, so an entry
gets the same warnings for ignored parameters, ``_include``/``_revinclude``, strict handling and
``_elements``/``_summary`` shaping as the URL would on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from fhir_server.bundles import searchset
from fhir_server.query import count_capped, paging
from fhir_server.responses import OutputFormat, operation_outcome, outcome_issue, shape
from fhir_server.service import FhirService
from store.search import SearchResult


def search_page(service: FhirService, base: str, rtype: str | None, pairs: list[tuple[str, str]],
                fmt: OutputFormat, *, strict: bool, memory_only: bool = False,
                compartment: str | None = None) -> bytes | None:
    """Run a type search (or, with no ``rtype``, a search across types) and page it as a searchset Bundle.

    With ``memory_only`` the search runs only if cached patients answer it and the map of current
    versions holds the page's resources (None otherwise): a caller on the event loop then answers
    without a thread hop or a DuckDB query, like a read. ``compartment`` (a
    patient id) limits a type search to that Patient's compartment (``GET Patient/id/Type``).
    ``strict`` is ``Prefer: handling=strict``: unknown parameters are a 400 instead of a warning.
    """
    count, offset, params = paging(pairs)
    query = _Query(service, base, rtype, params, count, offset, strict, compartment)
    result = query.in_memory() if memory_only else query.run()
    if result is None or (memory_only and not _held(service, result)):
        return None
    return _page(query, pairs, fmt, result)


def _held(service: FhirService, result: SearchResult) -> bool:
    """Whether the page's resources can be read without DuckDB."""
    holds = service.store.cache.holds
    return all(holds(key) for key in (*result.keys, *result.included))


def answer_search(service: FhirService, base: str, rtype: str | None, pairs: list[tuple[str, str]],
                  fmt: OutputFormat, *, strict: bool, compartment: str | None = None) -> bytes:
    """The page a REST GET answers, from code that may block (a Bundle entry): the in-memory
    answer when cached patients give it, else the store's (the REST routes' order of attempts)."""
    count, offset, params = paging(pairs)
    query = _Query(service, base, rtype, params, count, offset, strict, compartment)
    result = query.in_memory()
    return _page(query, pairs, fmt, result if result is not None else query.run())


@dataclass(frozen=True, slots=True)
class _Query:
    """One search as the engine takes it (paging split off the parameters)."""

    service: FhirService
    base: str
    rtype: str | None
    params: list[tuple[str, str]]
    count: int
    offset: int
    strict: bool
    compartment: str | None

    def in_memory(self) -> SearchResult | None:
        """The result if cached patients answer it without DuckDB (type searches outside a compartment)."""
        if self.rtype is None or self.compartment is not None:
            return None
        return self.service.search_in_memory(self.rtype, self.params, self.count, self.offset,
                                             strict=self.strict, base=self.base)

    def run(self) -> SearchResult:
        """The result from the store (DuckDB when the caches do not answer)."""
        if self.rtype is None:
            return self.service.search_system(self.params, self.count, self.offset, strict=self.strict,
                                              base=self.base)
        return self.service.search(self.rtype, self.params, self.count, self.offset, strict=self.strict,
                                   base=self.base, compartment=self.compartment)


def _page(query: _Query, pairs: list[tuple[str, str]], fmt: OutputFormat, result: SearchResult) -> bytes:
    """The searchset Bundle of one result page: shaped resources, includes, and an outcome entry for
    ignored parameters, warnings and a capped ``_count``."""
    store, base, rtype = query.service.store, query.base, query.rtype
    entries = store.read_many(result.keys)
    included = store.read_many(result.included)
    if fmt.elements or fmt.summary:
        entries = [(t, i, orjson.dumps(shape(orjson.loads(raw), fmt))) for t, i, raw in entries]
        included = [(t, i, orjson.dumps(shape(orjson.loads(raw), fmt))) for t, i, raw in included]
    kept = [(n, v) for n, v in query.params if n not in result.ignored and f"{n}={v}" not in result.ignored]
    notes = [f"search parameter {p!r} ignored" for p in result.ignored] + result.warnings
    capped = count_capped(pairs)
    if capped:
        notes.append(capped)
    warnings = [
        {"resource": operation_outcome([outcome_issue("warning", "not-supported", note) for note in notes]),
         "search": {"mode": "outcome"}}
    ] if notes else []
    path = f"{base}/Patient/{query.compartment}/{rtype}" if query.compartment is not None else f"{base}/{rtype}"
    return searchset(base=base, url=path if rtype else base, params=kept, total=result.total, count=query.count,
                     offset=query.offset, entries=entries, included=included, extra=warnings)
