"""Patient-scoped search in memory: the index rows of recently searched patients.

Clinical apps mostly search inside one patient's record (``Observation?patient=X&code=…``).
In DuckDB such a search is a handful of scans of a few row groups (~15–20 ms at a million
resources); here the patient's index rows are loaded once (one pruned scan per index table)
and the same search is then answered in Python in about a millisecond.

Coherence: every committed write that touches a cached patient drops that patient before
the writer returns (large batches drop everything), and a load that raced with a write
is discarded by a per-patient generation counter, so a search after a successful write
always sees it. The SQL path (``store.search``) stays the reference: what this module
cannot answer exactly (chains, ``_has``, composites, ValueSets, ``_revinclude``, text
search) it declines, and tests compare both on generated queries.
"""

from __future__ import annotations

import heapq
import sys
import threading
import weakref
from bisect import bisect_left
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from mapping.resource_types import R4_RESOURCE_TYPES
from mapping.ucum import canonical
from store.index_rows import norm
from store.search_params import params_for
from store.search_values import (
    parse_date,
    parse_number,
    parse_quantity,
    reference_target,
    split_or,
    split_prefix,
    split_token,
)
from store.store import Store, WriteResult

INDEX_TABLE_OF = {
    "token": "idx_token", "string": "idx_string", "reference": "idx_reference", "date": "idx_date",
    "number": "idx_number", "quantity": "idx_quantity", "uri": "idx_uri",
}
INDEX_COLUMNS = {
    "idx_token": "system, code, text", "idx_string": "value, raw",
    "idx_reference": "ref_type, ref_id, url, ident_system, ident_value", "idx_date": "lo, hi",
    "idx_number": "value", "idx_quantity": "value, system, code, unit, canon_value, canon_unit, analyte",
    "idx_uri": "value",
}
_MODIFIERS = {"token": {"", "not"}, "string": {"", "exact", "contains"}, "uri": {"", "below", "above"},
              "date": {""}, "number": {""}, "quantity": {""}, "reference": {"", "identifier", "Patient"}}
LARGE_BATCH = 200
MAX_TYPE_RESOURCES = 20_000
# Set while a search must not touch DuckDB (it runs on the event loop): loads raise Unsupported.
NO_LOADS: ContextVar[bool] = ContextVar("patient_cache_no_loads", default=False)


class Unsupported(Exception):
    """A search this evaluator does not answer (the SQL path will)."""


@dataclass
class PatientRows:
    """One patient's resources and the index rows of the (type, parameter) pairs searches asked for;
    with ``pid`` None, every resource of one small type (a type entry)."""

    pid: str | None
    store: Store
    lock: threading.RLock  # shared by a cache's entries: loads fill several patients at once
    resources: dict[tuple[str, str], datetime] = field(default_factory=dict)
    by_type: dict[str, dict[str, datetime]] = field(default_factory=dict)
    rows: dict[tuple[str, str], dict[str, list[tuple[Any, ...]]]] = field(default_factory=dict)
    loaded: set[tuple[str, str]] = field(default_factory=set)
    _inverted: dict[tuple[str, str, Any], Any] = field(default_factory=dict)  # lookup maps, sorted values

    def add(self, rtype: str, rid: str, last_updated: datetime) -> None:
        self.resources[(rtype, rid)] = last_updated
        self.by_type.setdefault(rtype, {})[rid] = last_updated

    def param_rows(self, rtype: str, param: str) -> dict[str, list[tuple[Any, ...]]]:
        if (rtype, param) not in self.loaded:
            load_params([self], rtype, [param])
        return self.rows.get((rtype, param), {})

    def inverted(self, rtype: str, param: str, column: int | tuple[int, ...]) -> dict[Any, set[str]]:
        """Ids by the value of one index column (token code, reference id) or a tuple of columns
        (reference type and id): equality searches then touch only their candidates' rows."""
        key = (rtype, param, column)
        found = self._inverted.get(key)
        if found is None:
            found = {}
            for rid, rows in self.param_rows(rtype, param).items():
                for row in rows:
                    value = row[column] if isinstance(column, int) else tuple(row[c] for c in column)
                    found.setdefault(value, set()).add(rid)
            self._inverted[key] = found
        return found

    def prefixed(self, rtype: str, param: str, prefix: str) -> list[str]:
        """Ids with a string value (folded) starting with ``prefix``, by bisecting the sorted values."""
        key = (rtype, param, "sorted")
        ordered = self._inverted.get(key)
        if ordered is None:
            pairs = sorted((row[0], rid) for rid, rows in self.param_rows(rtype, param).items()
                           for row in rows if row[0] is not None)
            ordered = self._inverted[key] = ([v for v, _ in pairs], [rid for _, rid in pairs])
        values, rids = ordered
        out = []
        for k in range(bisect_left(values, prefix), len(values)):
            if not values[k].startswith(prefix):
                break
            out.append(rids[k])
        return out


def _interned(values: list[Any]) -> tuple[Any, ...]:
    """Index values with their strings interned: systems, codes and types repeat across rows."""
    return tuple(sys.intern(v) if type(v) is str else v for v in values)


LAST_UPDATED = "_lastUpdated"


def _stamp_rows(entries: list[PatientRows], rtype: str) -> None:
    """``_lastUpdated`` rows of ``rtype`` from the commit times the entries hold (the store writes no
    index rows for it): the range of the FHIR instant the store renders, one microsecond, or one
    second when the time falls on a whole second."""
    for entry in entries:
        if (rtype, LAST_UPDATED) in entry.loaded:
            continue
        entry.rows[(rtype, LAST_UPDATED)] = {
            rid: [(ts, ts + (_SECOND if ts.microsecond == 0 else _MICROSECOND))]
            for rid, ts in entry.by_type.get(rtype, {}).items()
        }
        entry.loaded.add((rtype, LAST_UPDATED))


_SECOND, _MICROSECOND = timedelta(seconds=1), timedelta(microseconds=1)


def load_params(entries: list[PatientRows], rtype: str, params: list[str]) -> None:
    """Index rows of ``rtype``'s ``params`` for the patients that lack them: one scan per index table
    for all of them (the tables are clustered by patient, so the scan reads their row groups only)."""
    known = params_for(rtype)
    by_table: dict[str, list[str]] = {}
    for param in dict.fromkeys(params):
        if param == LAST_UPDATED and entries:
            with entries[0].lock:
                _stamp_rows(entries, rtype)
        elif param in known and (table := INDEX_TABLE_OF.get(known[param].type)) is not None:
            by_table.setdefault(table, []).append(param)
    if not entries or not by_table:
        return
    if NO_LOADS.get():
        if any((rtype, c) not in e.loaded for e in entries for codes in by_table.values() for c in codes):
            raise Unsupported("index rows not loaded")
        return
    whole_type = entries[0].pid is None  # a type entry (every resource of a small type): no patient filter
    with entries[0].lock:
        for table, codes in by_table.items():
            need = {e.pid: e for e in entries if any((rtype, c) not in e.loaded for c in codes)}
            if not need:
                continue
            by_pid = "" if whole_type else f"pid IN ({', '.join('?' * len(need))}) AND "
            for pid, rid, param, *values in entries[0].store.cursor().execute(
                f"SELECT pid, id, param, {INDEX_COLUMNS[table]} FROM {table} WHERE {by_pid}rt = ? "
                f"AND param IN ({', '.join('?' * len(codes))})", [*([] if whole_type else need), rtype, *codes],
            ).fetchall():
                entry = need[None if whole_type else pid]
                if (rtype, param) not in entry.loaded and (rtype, rid) in entry.resources:
                    entry.rows.setdefault((rtype, param), {}).setdefault(rid, []).append(_interned(values))
            for entry in need.values():
                entry.loaded.update((rtype, c) for c in codes)


class PatientIndexCache:
    """LRU of PatientRows for one store, invalidated by the store's commits.

    An entry costs its resource list plus the rows of the parameters searched (~0.1–0.2 MB for
    the usual clinical searches), so the default holds every patient of a million-resource store.
    """

    def __init__(self, store: Store, max_patients: int = 4000) -> None:
        self.store = store
        self.max_patients = max_patients
        self._entries: OrderedDict[str, PatientRows] = OrderedDict()
        self._generation: dict[str, int] = {}
        self._epoch = 0
        self._lock = threading.Lock()
        self._load_lock = threading.RLock()
        self._types: dict[str, PatientRows] = {}
        self._type_generation: dict[str, int] = {}
        self._large_types: set[str] = set()
        store.on_commit(self._invalidate)

    def _invalidate(self, results: list[WriteResult]) -> None:
        with self._lock:
            # No early return when nothing is cached: a load may be in flight, and only the
            # generation it was stamped with tells it the rows it read are already stale.
            if len(results) > LARGE_BATCH:
                self._entries.clear()
                self._types.clear()
                self._epoch += 1
                return
            for r in results:
                self._types.pop(r.resource_type, None)
                self._type_generation[r.resource_type] = self._type_generation.get(r.resource_type, 0) + 1
                for pid in r.patients:  # for a deletion, those of the version it ended
                    self._entries.pop(pid, None)
                    self._generation[pid] = self._generation.get(pid, 0) + 1

    def type_entry(self, rtype: str) -> PatientRows | None:
        """Every current resource of ``rtype`` as one entry, if there are at most MAX_TYPE_RESOURCES
        (Patient, Practitioner, Location …: what chains and lookups search); None for large types."""
        with self._lock:
            entry = self._types.get(rtype)
            if entry is not None or rtype in self._large_types:
                return entry
            if NO_LOADS.get():
                raise Unsupported(f"{rtype} not cached")
            stamp = (self._epoch, self._type_generation.get(rtype, 0))
        rows = self.store.cursor().execute(
            f"SELECT id, last_updated FROM resources WHERE resource_type = ? LIMIT {MAX_TYPE_RESOURCES + 1}", [rtype]
        ).fetchall()
        with self._lock:
            if len(rows) > MAX_TYPE_RESOURCES:
                self._large_types.add(rtype)
                return None
            entry = PatientRows(None, self.store, self._load_lock)
            for rid, ts in rows:
                entry.add(rtype, rid, ts)
            if stamp == (self._epoch, self._type_generation.get(rtype, 0)):
                self._types[rtype] = entry
        return entry

    def get_many(self, pids: list[str]) -> list[PatientRows]:
        """The patients' entries, those not cached loaded together (one scan of the resources)."""
        found: dict[str, PatientRows] = {}
        with self._lock:
            for pid in pids:
                entry = self._entries.get(pid)
                if entry is not None:
                    self._entries.move_to_end(pid)
                    found[pid] = entry
            missing = [pid for pid in pids if pid not in found]
            stamps = {pid: (self._epoch, self._generation.get(pid, 0)) for pid in missing}
        if missing and NO_LOADS.get():
            raise Unsupported("patients not cached")
        if missing:
            loaded = self._load(missing)
            with self._lock:
                for pid, entry in loaded.items():
                    found[pid] = entry
                    if stamps[pid] == (self._epoch, self._generation.get(pid, 0)):  # no write raced the load
                        self._entries[pid] = entry
                while len(self._entries) > self.max_patients:
                    self._entries.popitem(last=False)
        return [found[pid] for pid in pids]

    def _load(self, pids: list[str]) -> dict[str, PatientRows]:
        out = {pid: PatientRows(pid, self.store, self._load_lock) for pid in pids}
        for pid, rtype, rid, ts in self.store.cursor().execute(
            f"SELECT patient_id, resource_type, id, last_updated FROM resources "
            f"WHERE patient_id IN ({', '.join('?' * len(pids))})", pids,
        ).fetchall():
            out[pid].add(sys.intern(rtype), rid, ts)
        return out


_CACHES: weakref.WeakKeyDictionary[Store, PatientIndexCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(store: Store) -> PatientIndexCache:
    """The store's patient cache (created on first use)."""
    with _CACHES_LOCK:
        cache = _CACHES.get(store)
        if cache is None:
            cache = _CACHES[store] = PatientIndexCache(store)
        return cache


# ---- condition evaluation (the Python twin of the SQL in store.search) --------------------------
def _range_ok(prefix: str, lo: datetime, hi: datetime, plo: datetime, phi: datetime) -> bool:
    match prefix:
        case "eq":
            return lo >= plo and hi <= phi
        case "ne":
            return not (lo >= plo and hi <= phi)
        case "gt":
            return hi > phi
        case "lt":
            return lo < plo
        case "ge":
            return hi > plo
        case "le":
            return lo < phi
        case "sa":
            return lo >= phi
        case "eb":
            return hi <= plo
    slack = max(abs(datetime.now(UTC) - plo) * 0.1, timedelta(days=1))
    return lo < phi + slack and hi > plo - slack


def _value_ok(prefix: str, col: float | None, value: float, lo: float, hi: float) -> bool:
    if col is None:
        return False
    match prefix:
        case "eq":
            return lo <= col < hi
        case "ne":
            return not (lo <= col < hi)
        case "gt" | "sa":
            return col > value
        case "lt" | "eb":
            return col < value
        case "ge":
            return col >= value
        case "le":
            return col <= value
    d = abs(value) * 0.1
    return value - d <= col <= value + d


def _token_matcher(value: str) -> Any:
    system, code, has_bar = split_token(value)

    def ok(row: tuple) -> bool:
        if code is not None and row[1] != code:
            return False
        if has_bar:
            return row[0] is None if system == "" else row[0] == system
        return True

    return ok


def _quantity_ok(row: tuple, value: str) -> bool:
    v_col, system, code, unit, canon_value, canon_unit, analyte = row
    qv = parse_quantity(value)
    v, lo, hi = parse_number(qv.number)
    if qv.code is None:
        return (qv.system is None or system == qv.system) and _value_ok(qv.prefix, v_col, v, lo, hi)
    plain = canonical(1.0, qv.code)
    if plain is None:
        return (code == qv.code or unit == qv.code) and (not qv.system or system == qv.system) and _value_ok(
            qv.prefix, v_col, v, lo, hi)
    for a in (None, analyte) if analyte else (None,):
        cv, clo, chi = (canonical(x, qv.code, analyte=a) for x in (v, lo, hi))
        if not (cv and clo and chi) or canon_unit != cv[1]:
            continue
        if a is None and analyte is not None and canon_unit != plain[1]:
            continue
        if _value_ok(qv.prefix, canon_value, cv[0], clo[0], chi[0]):
            return True
    return False


def _reference_target(value: str, modifier: str) -> tuple[int, Any, str | None]:
    """(index column, value it must equal, required target type) for a reference search value:
    column 4 (identifier value), 2 (absolute URL) or 1 (resource id), as the SQL path reads them."""
    if modifier == "identifier":
        return 4, split_token(value)[1], None
    target = reference_target(value, modifier)
    return (2, target, None) if isinstance(target, str) else (1, *target)


def _reference_matcher(value: str, modifier: str) -> Any:
    column, wanted, want_type = _reference_target(value, modifier)
    if modifier == "identifier":
        system, _, has_bar = split_token(value)
        return lambda row: row[4] == wanted and (not (has_bar and system) or row[3] == system)
    if want_type is None:
        return lambda row: row[column] == wanted
    return lambda row: row[1] == wanted and row[0] == want_type


def _lookup(ptype: str, modifier: str, value: str) -> tuple[int | tuple[int, ...], Any, bool] | None:
    """(column(s), value, exact) for equality searches: every index row matching ``value`` has that
    value in those columns, and when ``exact`` nothing else needs checking."""
    if ptype == "token":
        system, code, has_bar = split_token(value)
        if code is not None and has_bar and system:
            return (0, 1), (system, code), True
        return None if code is None else (1, code, not has_bar)
    if ptype == "reference":
        column, wanted, want_type = _reference_target(value, modifier)
        if want_type is not None:
            return (0, 1), (want_type, wanted), True
        return column, wanted, modifier != "identifier" or "|" not in value
    return None


def matcher(ptype: str, modifier: str, value: str) -> Any:
    """A predicate over index rows for one search value, with the value parsed once."""
    match ptype:
        case "token":
            return _token_matcher(value)
        case "string":
            if modifier == "exact":
                return lambda row: row[1] == value
            folded = norm(value)
            if modifier == "contains":
                return lambda row: folded in (row[0] or "")
            return lambda row: (row[0] or "").startswith(folded)
        case "uri":
            if modifier == "below":
                return lambda row: (row[0] or "").startswith(value)
            if modifier == "above":
                return lambda row: value.startswith(row[0] or "")
            return lambda row: row[0] == value
        case "date":
            prefix, rest = split_prefix(value)
            rng = parse_date(rest)
            return lambda row: _range_ok(prefix, row[0], row[1], rng.lo, rng.hi)
        case "number":
            prefix, rest = split_prefix(value)
            v, lo, hi = parse_number(rest)
            return lambda row: _value_ok(prefix, row[0], v, lo, hi)
        case "quantity":
            parse_quantity(value)
            return lambda row: _quantity_ok(row, value)
        case "reference":
            return _reference_matcher(value, modifier)
    raise Unsupported(ptype)


@dataclass(frozen=True)
class Filter:
    """One search parameter occurrence, parsed once for every patient it runs over."""

    code: str
    modifier: str
    lookups: dict[Any, set[Any]] | None  # column(s) -> values every match has there (equality searches)
    prefixes: list[str] | None  # plain string search: folded prefixes, answered by the sorted values
    preds: list[Any] | None  # None when lookups or prefixes are the whole answer

    @property
    def single(self) -> tuple[Any, Any] | None:
        """(column, value) when one equality value is the whole answer: the common fast case."""
        if self.lookups is not None and len(self.lookups) == 1:
            ((column, wanted),) = self.lookups.items()
            if len(wanted) == 1:
                return column, next(iter(wanted))
        return None


def _filters(rtype: str, filters: list[tuple[str, str]]) -> list[Filter | list[str]]:
    """Parsed filters, equality ones first (answered by the inverted maps, they leave few candidates
    for the rest); ``_id`` filters as lists of ids. Raises Unsupported for what SQL must answer."""
    params = params_for(rtype)
    out: list[Filter | list[str]] = []
    for name, value in filters:
        code, _, modifier = name.partition(":")
        if code == "_id":
            out.append(split_or(value))
            continue
        p = params.get(code)
        # Parameters without an expression (_text, _content) have no index rows: SQL reads the resources.
        if (p is None or p.expression is None or p.type not in _MODIFIERS or modifier not in _MODIFIERS[p.type]
                or "." in name):
            raise Unsupported(name)
        alts = split_or(value)
        if modifier in R4_RESOURCE_TYPES and not any("/" in a or ":" in a for a in alts):  # bare ids: a chain's
            lookups: list[Any] = [((0, 1), (modifier, a), True) for a in alts]  # patients, a long list
        else:
            lookups = [_lookup(p.type, modifier, alt) for alt in alts]
        prefixes = [norm(a) for a in alts] if p.type == "string" and not modifier else None
        exact = prefixes is not None or all(lookup and lookup[2] for lookup in lookups)
        out.append(Filter(code, modifier, _by_column(lookups) if all(lookups) else None, prefixes,
                           None if exact else [matcher(p.type, modifier, a) for a in alts]))
    return sorted(out, key=lambda f: isinstance(f, Filter) and f.lookups is None and f.prefixes is None)


def _by_column(lookups: list[Any]) -> dict[Any, set[Any]]:
    out: dict[Any, set[Any]] = {}
    for column, wanted, _ in lookups:
        out.setdefault(column, set()).add(wanted)
    return out


@dataclass(frozen=True)
class Query:
    """A search parsed for the in-memory path: its filters and sort keys."""

    rtype: str
    parsed: list[Filter | list[str]]
    specs: list[tuple[bool, str]]  # (descending, parameter) per sort key

    @cached_property
    def exact(self) -> list[tuple[Filter | list[str], tuple[Any, Any] | None]]:
        """Filters whose candidate sets are their matches (ids, equality, prefixes), with their
        single (column, value) when they have one."""
        return [(f, None if isinstance(f, list) else f.single) for f in self.parsed
                if isinstance(f, list) or (f.modifier != "not" and f.preds is None)]

    @cached_property
    def rest(self) -> list[Filter]:
        """Filters checked row by row, or subtracted (``:not``), after the exact ones."""
        return [f for f in self.parsed if isinstance(f, Filter) and (f.modifier == "not" or f.preds is not None)]

    @property
    def params(self) -> list[str]:
        """The (type, parameter) rows evaluation reads."""
        known = params_for(self.rtype)
        return [f.code for f in self.parsed if isinstance(f, Filter)] + [c for _, c in self.specs if c in known]


def prepare(rtype: str, filters: list[tuple[str, str]], sort: str) -> Query:
    """Parse a search once; raises Unsupported (or ValueError for bad values) for what SQL must answer."""
    params = params_for(rtype)
    specs = [(k.startswith("-"), k.lstrip("-")) for k in sort.split(",") if k]
    for _, code in specs:
        if code not in params and code not in ("_id", "_lastUpdated"):
            raise Unsupported(f"sort by {code}")
    return Query(rtype, _filters(rtype, filters), specs)


def evaluate(entries: list[PatientRows], query: Query) -> list[tuple[tuple, datetime, str]]:
    """Matches as (sort key, lastUpdated, id), unordered."""
    load_params(entries, query.rtype, query.params)
    out: list[tuple[tuple, datetime, str]] = []
    for e in entries:  # a resource belongs to one patient's entry: each is searched on its own
        universe = e.by_type.get(query.rtype)
        if universe:
            out += _evaluate_entry(e, universe, query)
    return out


def _found(e: PatientRows, rtype: str, f: Filter) -> set[str]:
    """Ids the inverted maps or sorted values give for an equality or prefix filter (do not mutate:
    it may be the map's own set)."""
    if f.prefixes is not None:
        return {rid for prefix in f.prefixes for rid in e.prefixed(rtype, f.code, prefix)}
    assert f.lookups is not None
    hits: list[set[str]] = []
    for column, wanted in f.lookups.items():
        inverted = e.inverted(rtype, f.code, column)
        if len(wanted) > len(inverted):  # a long OR list (a chain's patients): walk the map instead
            hits += [ids for value, ids in inverted.items() if value in wanted]
        else:
            hits += [ids for value in wanted if (ids := inverted.get(value))]
    return hits[0] if len(hits) == 1 else set().union(*hits)


_NONE: frozenset[str] = frozenset()


def _evaluate_entry(e: PatientRows, universe: dict[str, datetime], query: Query) -> list[tuple[tuple, datetime, str]]:
    rtype = query.rtype
    matched: set[str] | None = None
    if query.exact:  # intersect the exact candidate sets, smallest first
        sets: list[Any] = []
        for f, single in query.exact:
            if single is not None:  # one equality value: the inverted map's own set
                found = e.inverted(rtype, f.code, single[0]).get(single[1], _NONE)  # type: ignore[union-attr]
            else:
                found = f if isinstance(f, list) else _found(e, rtype, f)
            if not found:
                return []
            sets.append(found)
        sets.sort(key=len)
        matched = universe.keys() & sets[0]  # ids filters may name resources the entry lacks
        for other in sets[1:]:
            matched &= other if isinstance(other, set | frozenset) else set(other)
    for f in query.rest:
        current = set(universe) if matched is None else matched
        found = _found(e, rtype, f) if f.lookups is not None or f.prefixes is not None else current
        if f.preds is None:
            hit = found & current
        else:
            rows_by_id = e.param_rows(rtype, f.code)
            hit = {rid for rid in (found & current if found is not current else current)
                   if any(pred(row) for row in rows_by_id.get(rid, ()) for pred in f.preds)}
        matched = current - hit if f.modifier == "not" else hit
    ids = universe if matched is None else matched
    if not query.specs:
        return [((), universe[rid], rid) for rid in ids]
    params = params_for(rtype)
    sort_rows = {code: e.param_rows(rtype, code) for _, code in query.specs if code not in ("_id", "_lastUpdated")}
    out = []
    for rid in ids:
        key: list[Any] = []
        for desc, code in query.specs:
            if code == "_id":
                key.append(rid)
            elif code == "_lastUpdated":
                key.append(universe[rid])
            else:
                key.append(_sort_value(params[code].type, sort_rows[code].get(rid, []), desc))
        out.append((tuple(key), universe[rid], rid))
    return out


def order(matches: list[tuple[tuple, datetime, str]], sort: str, limit: int | None = None) -> list[str]:
    """Ids in the SQL path's order: sort keys (NULLS LAST), then lastUpdated, then id; the first
    ``limit`` only when given."""
    desc = [k.startswith("-") for k in sort.split(",") if k]
    if not desc and limit is not None:  # no sort keys: every key is (), tuples compare by (lastUpdated, id)
        return [m[2] for m in heapq.nsmallest(limit, matches)]
    ordered = sorted(matches, key=lambda m: (m[1], m[2]))
    for i in reversed(range(len(desc))):
        present = [m for m in ordered if m[0][i] is not None]
        absent = [m for m in ordered if m[0][i] is None]
        present.sort(key=lambda m, i=i: m[0][i], reverse=desc[i])
        ordered = present + absent
    return [m[2] for m in ordered][:limit]


def forward_includes(entries: list[PatientRows], rtype: str, page: list[str], specs: list[str]) -> set:
    """Keys that ``_include=rtype:param[:Target]`` adds for the page (as the SQL path computes them)."""
    found: set[tuple[str, str]] = set()
    for spec in specs:
        src, _, rest = spec.partition(":")
        param, _, target = rest.partition(":")
        if param == "*" or not param:
            raise Unsupported("_include wildcard")
        if src != rtype:
            continue
        load_params(entries, rtype, [param])
        for e in entries:
            rows = e.param_rows(rtype, param)
            for rid in page:
                found.update((r[0], r[1]) for r in rows.get(rid, ())
                             if r[0] and r[1] and (not target or r[0] == target))
    return found


def _sort_value(ptype: str, rows: list[tuple], desc: bool) -> Any:
    """The sort key the SQL path uses: min (asc) or max (desc) of the column, None sorts last."""
    col = {"date": 1 if desc else 0, "token": 1, "string": 0, "uri": 0, "number": 0, "quantity": 4,
           "reference": 2}.get(ptype)
    if col is None:
        raise Unsupported(f"sort by {ptype}")
    values = [r[col] for r in rows if r[col] is not None]
    if not values:
        return None
    return max(values) if desc else min(values)
