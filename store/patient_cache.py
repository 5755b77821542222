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

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from mapping.resource_types import R4_RESOURCE_TYPES
from mapping.ucum import canonical
from store.compartment import patients_of
from store.index_rows import norm
from store.search_params import params_for
from store.search_values import parse_date, parse_number, parse_quantity, split_or, split_prefix, split_token
from store.store import Store, WriteResult

_TABLE_OF = {
    "token": "idx_token", "string": "idx_string", "reference": "idx_reference", "date": "idx_date",
    "number": "idx_number", "quantity": "idx_quantity", "uri": "idx_uri",
}
_COLUMNS = {
    "idx_token": "system, code, text", "idx_string": "value, raw",
    "idx_reference": "ref_type, ref_id, url, ident_system, ident_value", "idx_date": "lo, hi",
    "idx_number": "value", "idx_quantity": "value, system, code, unit, canon_value, canon_unit, analyte",
    "idx_uri": "value",
}
_MODIFIERS = {"token": {"", "not"}, "string": {"", "exact", "contains"}, "uri": {"", "below", "above"},
              "date": {""}, "number": {""}, "quantity": {""}, "reference": {"", "identifier", "Patient"}}
LARGE_BATCH = 200


class Unsupported(Exception):
    """A search this evaluator does not answer (the SQL path will)."""


@dataclass
class PatientRows:
    """One patient's resources and, loaded table by table when a search first needs them, index rows."""

    pid: str
    store: Store
    resources: dict[tuple[str, str], datetime] = field(default_factory=dict)
    by_type: dict[str, dict[str, datetime]] = field(default_factory=dict)
    rows: dict[tuple[str, str], dict[str, list[tuple[Any, ...]]]] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _inverted: dict[tuple[str, str, int], dict[Any, set[str]]] = field(default_factory=dict)

    def add(self, rtype: str, rid: str, last_updated: datetime) -> None:
        self.resources[(rtype, rid)] = last_updated
        self.by_type.setdefault(rtype, {})[rid] = last_updated

    def param_rows(self, rtype: str, param: str) -> dict[str, list[tuple[Any, ...]]]:
        table = _TABLE_OF.get(params_for(rtype)[param].type) if param in params_for(rtype) else None
        if table is not None and table not in self.loaded:
            self._load_table(table)
        return self.rows.get((rtype, param), {})

    def inverted(self, rtype: str, param: str, column: int) -> dict[Any, set[str]]:
        """Ids by the value of one index column (token code, reference id): equality searches
        then touch only the rows of their candidates instead of every row of the type."""
        key = (rtype, param, column)
        found = self._inverted.get(key)
        if found is None:
            found = {}
            for rid, rows in self.param_rows(rtype, param).items():
                for row in rows:
                    found.setdefault(row[column], set()).add(rid)
            self._inverted[key] = found
        return found

    def _load_table(self, table: str) -> None:
        """One pruned scan of an index table for this patient (the tables are clustered by patient)."""
        with self.lock:
            if table in self.loaded:
                return
            for rtype, rid, param, *values in self.store.cursor().execute(
                f"SELECT rt, id, param, {_COLUMNS[table]} FROM {table} WHERE pid = ?", [self.pid]
            ).fetchall():
                if (rtype, rid) in self.resources:
                    self.rows.setdefault((rtype, param), {}).setdefault(rid, []).append(tuple(values))
            self.loaded.add(table)


class PatientIndexCache:
    """LRU of PatientRows for one store, invalidated by the store's commits."""

    def __init__(self, store: Store, max_patients: int = 500) -> None:
        self.store = store
        self.max_patients = max_patients
        self._entries: OrderedDict[str, PatientRows] = OrderedDict()
        self._generation: dict[str, int] = {}
        self._epoch = 0
        self._lock = threading.Lock()
        store.on_commit(self._invalidate)

    def _invalidate(self, results: list[WriteResult]) -> None:
        with self._lock:
            if not self._entries:
                return
            if len(results) > LARGE_BATCH:
                self._entries.clear()
                self._epoch += 1
                return
            for r in results:
                raw = self.store.read_bytes(r.resource_type, r.id)
                pids = patients_of(orjson.loads(raw)) if raw else [
                    p for p, e in self._entries.items() if (r.resource_type, r.id) in e.resources
                ]
                for pid in pids:
                    self._entries.pop(pid, None)
                    self._generation[pid] = self._generation.get(pid, 0) + 1

    def holds(self, pid: str) -> bool:
        """Whether the patient is cached now (a search over many patients only runs here when all are)."""
        return pid in self._entries

    def get(self, pid: str) -> PatientRows:
        with self._lock:
            entry = self._entries.get(pid)
            if entry is not None:
                self._entries.move_to_end(pid)
                return entry
            stamp = (self._epoch, self._generation.get(pid, 0))
        entry = self._load(pid)
        with self._lock:
            if stamp == (self._epoch, self._generation.get(pid, 0)):  # no write raced with the load
                self._entries[pid] = entry
                while len(self._entries) > self.max_patients:
                    self._entries.popitem(last=False)
        return entry

    def _load(self, pid: str) -> PatientRows:
        out = PatientRows(pid, self.store)
        for rtype, rid, ts in self.store.cursor().execute(
            "SELECT resource_type, id, last_updated FROM resources WHERE patient_id = ?", [pid]
        ).fetchall():
            out.add(rtype, rid, ts)
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
    want_type = modifier if modifier in R4_RESOURCE_TYPES else None
    ref = value.rstrip("/")
    parts = ref.split("/_history/")[0].split("/") if "/_history/" in ref else ref.split("/")
    if len(parts) >= 2 and parts[-2] in R4_RESOURCE_TYPES:
        return 1, parts[-1], parts[-2]
    if ref.startswith(("http:", "https:", "urn:")):
        return 2, ref, None
    return 1, ref, want_type


def _reference_matcher(value: str, modifier: str) -> Any:
    column, wanted, want_type = _reference_target(value, modifier)
    if modifier == "identifier":
        system, _, has_bar = split_token(value)
        return lambda row: row[4] == wanted and (not (has_bar and system) or row[3] == system)
    if want_type is None:
        return lambda row: row[column] == wanted
    return lambda row: row[1] == wanted and row[0] == want_type


def _lookup(ptype: str, modifier: str, value: str) -> tuple[int, Any, bool] | None:
    """(column, value, exact) for equality searches: every index row matching ``value`` has that
    column value, and when ``exact`` nothing else needs checking."""
    if ptype == "token":
        _, code, has_bar = split_token(value)
        return None if code is None else (1, code, not has_bar)
    if ptype == "reference":
        column, wanted, want_type = _reference_target(value, modifier)
        return column, wanted, want_type is None and (modifier != "identifier" or "|" not in value)
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


def evaluate(
    entries: list[PatientRows], rtype: str, filters: list[tuple[str, str]], sort: str
) -> list[tuple[tuple, datetime, str]]:
    """Matches as (sort key, lastUpdated, id), unordered; raises Unsupported for what SQL must answer."""
    params = params_for(rtype)
    if len(entries) == 1:
        universe = entries[0].by_type.get(rtype, {})
    else:
        universe = {}
        for e in entries:
            universe.update(e.by_type.get(rtype, {}))
    matched: set[str] | dict[str, datetime] = universe  # narrowed filter by filter, never mutated in place
    # Equality filters answered by the inverted maps go first: the rest then scan few candidates.
    lookup_first = {c for c, p in params.items() if p.type in ("token", "reference")} | {"_id"}
    for name, value in sorted(filters, key=lambda f: f[0].partition(":")[0] not in lookup_first):
        code, _, modifier = name.partition(":")
        if code == "_id":
            matched = {i for i in split_or(value) if i in matched}
            continue
        p = params.get(code)
        if p is None or p.type not in _MODIFIERS or modifier not in _MODIFIERS[p.type] or "." in name:
            raise Unsupported(name)
        alts = split_or(value)
        lookups = [_lookup(p.type, modifier, alt) for alt in alts]
        candidates: Any = matched
        if all(lookups):
            found: set[str] = set()
            for e in entries:
                for column, wanted, _ in lookups:
                    found |= e.inverted(rtype, code, column).get(wanted, set())
            candidates = found if matched is universe else found & matched
        if all(lookup and lookup[2] for lookup in lookups):
            hit = set(candidates)
        else:
            preds = [matcher(p.type, modifier, alt) for alt in alts]
            rows_by_id = _rows_of(entries, rtype, code)
            hit = {rid for rid in candidates if any(pred(row) for row in rows_by_id.get(rid, ()) for pred in preds)}
        matched = {rid for rid in matched if rid not in hit} if modifier == "not" else hit
    specs = [(k.startswith("-"), k.lstrip("-")) for k in sort.split(",") if k]
    sort_rows = {code: _rows_of(entries, rtype, code) for _, code in specs if code not in ("_id", "_lastUpdated")}
    out = []
    for rid in matched:
        key: list[Any] = []
        for desc, code in specs:
            if code == "_id":
                key.append(rid)
            elif code == "_lastUpdated":
                key.append(universe[rid])
            elif code in params:
                key.append(_sort_value(params[code].type, sort_rows[code].get(rid, []), desc))
            else:
                raise Unsupported(f"sort by {code}")
        out.append((tuple(key), universe[rid], rid))
    return out


def _rows_of(entries: list[PatientRows], rtype: str, code: str) -> dict[str, list[tuple]]:
    if len(entries) == 1:
        return entries[0].param_rows(rtype, code)
    merged: dict[str, list[tuple]] = {}
    for e in entries:
        merged.update(e.param_rows(rtype, code))
    return merged


def order(matches: list[tuple[tuple, datetime, str]], sort: str) -> list[str]:
    """Ids in the SQL path's order: sort keys (NULLS LAST), then lastUpdated, then id."""
    desc = [k.startswith("-") for k in sort.split(",") if k]
    ordered = sorted(matches, key=lambda m: (m[1], m[2]))
    for i in reversed(range(len(desc))):
        present = [m for m in ordered if m[0][i] is not None]
        absent = [m for m in ordered if m[0][i] is None]
        present.sort(key=lambda m, i=i: m[0][i], reverse=desc[i])
        ordered = present + absent
    return [m[2] for m in ordered]


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
        rows = _rows_of(entries, rtype, param)
        for rid in page:
            found.update((r[0], r[1]) for r in rows.get(rid, ()) if r[0] and r[1] and (not target or r[0] == target))
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
