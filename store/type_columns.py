"""Equality searches across a whole resource type, answered from numpy arrays.

A search that spans many patients (a chain such as ``subject:Patient.name=…`` that resolves to
dozens of them, or a code over the whole type) is slow in DuckDB (scans and joins: tens of ms at a
million resources) and in the per-patient cache too: there it walks one small set of dicts per
patient, and at that size nearly every step is a cache miss (~25 µs per patient). Here each current
resource of the type gets its rank in the default search order (lastUpdated, id), and each
(parameter, index column) maps a value to the ranks of the resources that have it. One filter's
ranks drive; a parameter with one value per resource is tested through its value numbers gathered
for the driver, others through stamps; the first ranks left are the page: ~0.15–0.3 ms at a million
resources where the patient cache takes 2–3 ms.

What it answers: filters that are exact equalities on the index (token codes, references by id or
type and id, identifiers without a system), sorted by the default order or ``_lastUpdated``. The
rest goes to the patient cache or SQL, which stay the reference (tests compare the paths).

Coherence: a commit touching the type drops its columns before the writer returns, and a load that
raced with a write is discarded (per-type generation). Columns are rebuilt by a later search, but only
once the type has had no write for ``QUIET_S`` seconds and for ten times its last load: a steady
feed (MLLP, REST writes) would otherwise make searches rebuild them again and again (~2.4 s each at
a million resources). Loads run in a background thread; meanwhile those searches take the other
paths, as before.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from store.patient_cache import (
    INDEX_COLUMNS,
    INDEX_TABLE_OF,
    MAX_TYPE_RESOURCES,
    NO_LOADS,
    Filter,
    Query,
    Unsupported,
)
from store.search_params import params_for
from store.store import Store, WriteResult

QUIET_S = 5.0
# ... and at least this many times the type's last load took: under a light but steady feed (a write
# every few seconds) the columns would otherwise be rebuilt after every write, so loads are held to
# about a tenth of the time (~24 s without writes at a million resources).
QUIET_LOADS = 10.0
# A search that finds the columns missing starts their load in a thread and takes another path itself:
# no request waits for a load (seconds at a million resources). Tests that need the columns at once
# turn this off.
LOAD_IN_BACKGROUND = True

log = logging.getLogger(__name__)


@dataclass
class TypeColumns:
    """One type's current resources by rank (the default search order) and, per (parameter, index
    column), the ranks of the resources with each value."""

    rtype: str
    ids: list[str]  # id by rank
    ranks: pa.Table  # (id, k): joined to the index tables when a parameter is loaded
    groups: dict[tuple[str, Any], dict[Any, np.ndarray]] = field(default_factory=dict)
    # One mark per rank: a filter stamps its ranks with a fresh number, the candidates keep those
    # stamped with it. Reused across searches (a new array per search faults its pages in each time)
    # and cleared only when the stamps wrap around.
    marks: np.ndarray = field(init=False)
    stamp: int = 0
    marks_lock: threading.Lock = field(default_factory=threading.Lock)

    # For a parameter with at most one value per resource (subject, encounter, status…): the number
    # of each value, and that number by rank (-1: none); None when some resource has several.
    value_numbers: dict[tuple[str, Any], tuple[dict[Any, int], np.ndarray] | None] = field(default_factory=dict)
    # Those numbers gathered for the ranks of one value of another parameter (code C -> subject number
    # of each Observation with code C): a list of values is then a lookup per candidate in a table of
    # a few kB, read in order, instead of random reads across every rank.
    aligned: dict[tuple[str, Any, Any, str, Any], np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.marks = np.zeros(len(self.ids), dtype=np.uint8)

    def numbers(self, key: tuple[str, Any]) -> tuple[dict[Any, int], np.ndarray] | None:
        """Value numbers of a one-value-per-resource (parameter, column) (see ``value_numbers``)."""
        if key not in self.value_numbers:
            groups = self.groups[key]
            by_rank = np.full(len(self.ids), -1, dtype=np.int32)
            for number, ranks in enumerate(groups.values()):
                by_rank[ranks] = number
            single = int(np.count_nonzero(by_rank >= 0)) == sum(len(r) for r in groups.values())
            self.value_numbers[key] = ({v: n for n, v in enumerate(groups)}, by_rank) if single else None
        return self.value_numbers[key]

    def keep_marked(self, found: np.ndarray, marked: np.ndarray) -> np.ndarray:
        """The ranks of ``found`` that are also in ``marked``, in ``found``'s order."""
        with self.marks_lock:
            if self.stamp == 255:
                self.marks[:] = 0
                self.stamp = 0
            self.stamp += 1
            self.marks[marked] = self.stamp
            return found[self.marks[found] == self.stamp]


class TypeColumnsCache:
    """The columns of the large types searches asked for, for one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._columns: dict[str, TypeColumns] = {}
        self._generation: dict[str, int] = {}
        self._last_write: dict[str, float] = {}
        self._load_seconds: dict[str, float] = {}  # how long the type's last load took
        self._sizes: dict[str, tuple[int, int]] = {}  # (generation, resources) of types found small
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._closed = False
        store.on_commit(self._invalidate)
        store.on_close(self._close)

    def _close(self) -> None:
        """Wait for a running load (it reads through a cursor of the closing store); no new ones."""
        with self._build_lock:
            self._closed = True

    def _invalidate(self, results: list[WriteResult]) -> None:
        now = time.monotonic()
        with self._lock:
            for rtype in {r.resource_type for r in results}:
                self._columns.pop(rtype, None)
                self._generation[rtype] = self._generation.get(rtype, 0) + 1
                self._last_write[rtype] = now

    def _stamp(self, rtype: str) -> int:
        return self._generation.get(rtype, 0)

    def columns(self, rtype: str, keys: list[tuple[str, Any]]) -> TypeColumns:
        """The type's columns with the (parameter, column) groups ``keys`` loaded; raises Unsupported
        when they are not loaded yet (a load is then started, unless on the event loop, for a small
        type, after recent writes or while another load runs)."""
        with self._lock:
            cols = self._columns.get(rtype)
            if cols is not None and all(k in cols.groups for k in keys):
                return cols
            stamp, size = self._sizes.get(rtype, (None, 0))
            if stamp == self._stamp(rtype) and size <= MAX_TYPE_RESOURCES:
                raise Unsupported(f"{rtype} is small")
            if NO_LOADS.get():
                raise Unsupported(f"{rtype} columns not loaded")
            quiet_s = max(QUIET_S, QUIET_LOADS * self._load_seconds.get(rtype, 0.0))
            if rtype in self._last_write and time.monotonic() - self._last_write[rtype] < quiet_s:
                raise Unsupported(f"{rtype} written in the last {quiet_s:.1f} s")
        if not self._build_lock.acquire(blocking=False):  # one load at a time (each is a large scan);
            raise Unsupported(f"{rtype} columns being loaded")  # searches meanwhile take another path
        if self._closed:
            self._build_lock.release()
            raise Unsupported("store closed")
        if LOAD_IN_BACKGROUND:
            # Not a daemon: at the interpreter's exit a daemon thread is stopped wherever it is, and
            # stopped inside a DuckDB scan it aborted the process (a store left open by a script).
            threading.Thread(target=self._load_in_background, args=(rtype, keys), daemon=False,
                             name=f"columns-{rtype}").start()
            raise Unsupported(f"{rtype} columns being loaded")
        try:
            return self._load(rtype, keys)
        finally:
            self._build_lock.release()

    def _load_in_background(self, rtype: str, keys: list[tuple[str, Any]]) -> None:
        try:
            self._load(rtype, keys)
        except Unsupported:
            pass
        except Exception:  # a DuckDB error: the searches keep their other paths
            log.exception("loading the %s columns failed", rtype)
        finally:
            self._build_lock.release()

    def _load(self, rtype: str, keys: list[tuple[str, Any]]) -> TypeColumns:
        """Load what ``keys`` need and install the columns (the caller holds the build lock)."""
        started = time.monotonic()
        try:
            return self._load_timed(rtype, keys)
        finally:
            with self._lock:
                self._load_seconds[rtype] = time.monotonic() - started

    def _load_timed(self, rtype: str, keys: list[tuple[str, Any]]) -> TypeColumns:
        with self._lock:
            stamp = self._stamp(rtype)
            cols = self._columns.get(rtype)
        if cols is None:
            cols = self._load_ranks(rtype)
            if len(cols.ids) <= MAX_TYPE_RESOURCES:
                with self._lock:
                    self._sizes[rtype] = (stamp, len(cols.ids))
                raise Unsupported(f"{rtype} is small")
        loaded = {k: self._load_group(cols, *k) for k in keys if k not in cols.groups}
        with self._lock:
            if self._stamp(rtype) != stamp:  # a write raced the load: its rows may be mixed in
                raise Unsupported(f"{rtype} written during the load")
            cols.groups.update(loaded)
            self._columns[rtype] = cols
        return cols

    def _load_ranks(self, rtype: str) -> TypeColumns:
        table = self.store.cursor().sql(
            "SELECT id, (row_number() OVER (ORDER BY last_updated, id) - 1)::INTEGER AS k "
            "FROM resources WHERE resource_type = ? ORDER BY k", params=[rtype],
        ).to_arrow_table()
        return TypeColumns(rtype, table.column("id").to_pylist(), table)

    def _load_group(self, cols: TypeColumns, param: str, column: Any) -> dict[Any, np.ndarray]:
        """Value -> sorted ranks for one parameter's index column(s) (a value of a tuple of columns
        is the tuple, as the patient cache's inverted maps key them)."""
        table = INDEX_TABLE_OF[params_for(cols.rtype)[param].type]
        names = INDEX_COLUMNS[table].split(", ")
        picked = [names[c] for c in ((column,) if isinstance(column, int) else column)]
        value_sql = ", ".join(f"t.{n}" for n in picked)
        cur = self.store.cursor()
        cur.register("type_ranks", cols.ranks)
        try:
            result = cur.sql(
                f"SELECT {value_sql}, list(DISTINCT r.k ORDER BY r.k) AS ks FROM {table} t "
                f"JOIN type_ranks r ON r.id = t.id WHERE t.rt = ? AND t.param = ? GROUP BY ALL",
                params=[cols.rtype, param],
            ).to_arrow_table()
        finally:
            cur.unregister("type_ranks")
        ks = result.column("ks").combine_chunks()
        flat = ks.values.to_numpy()
        offsets = ks.offsets.to_numpy()
        values = zip(*(result.column(i).to_pylist() for i in range(len(picked))), strict=True)
        out: dict[Any, np.ndarray] = {}
        for i, value in enumerate(values):
            out[value[0] if isinstance(column, int) else value] = flat[offsets[i]:offsets[i + 1]]
        return out


def _group_keys(query: Query) -> list[tuple[str, Any]]:
    """The (parameter, column) groups a query reads; raises Unsupported for what columns cannot answer."""
    if query.rest:
        raise Unsupported("filters checked row by row")
    if query.specs not in ([], [(False, "_lastUpdated")]):
        raise Unsupported("sorted by a parameter")
    keys = []
    for f, _ in query.exact:
        if not isinstance(f, Filter) or f.lookups is None:
            raise Unsupported("ids or prefixes")
        keys += [(f.code, column) for column in f.lookups]
    return keys


def evaluate(cols: TypeColumns, query: Query) -> np.ndarray:
    """The ranks of the matches, ascending (the default order).

    The smallest one-value filter drives (its ranks are sorted and distinct); filters on a
    parameter with one value per resource test the driver's value numbers; the rest keep the
    candidates they mark. Without a one-value filter the smallest list of values drives."""
    if not query.exact:
        return np.arange(len(cols.ids), dtype=np.int32)
    filters: list[tuple[int, tuple[str, Any] | None, list[Any], list[np.ndarray]]] = []
    for f, _ in query.exact:
        assert isinstance(f, Filter) and f.lookups is not None
        per_column = [((f.code, column), [v for v in wanted if v in cols.groups[(f.code, column)]])
                      for column, wanted in f.lookups.items()]
        parts = [cols.groups[key][v] for key, hits in per_column for v in hits]
        if not parts:
            return np.empty(0, dtype=np.int32)
        key, hits = per_column[0] if len(per_column) == 1 else (None, [])  # values in several columns: rare
        filters.append((sum(len(p) for p in parts), key, hits, parts))
    filters.sort(key=lambda x: (len(x[3]) > 1, x[0]))
    _, key, hits, parts = filters[0]
    if len(parts) > 1:  # only lists of values: the smallest drives, sorted and without repeats
        found = np.sort(np.concatenate(parts))
        found = found[np.concatenate(([True], found[1:] != found[:-1]))]
    else:
        found = parts[0]
        keep: np.ndarray | None = None
        rest = []
        for other in filters[1:]:
            numbers = cols.numbers(other[1]) if other[1] and key else None
            if numbers is None:
                rest.append(other)
                continue
            aligned_key = (*key, hits[0], *other[1])
            aligned = cols.aligned.get(aligned_key)
            if aligned is None:
                aligned = cols.aligned[aligned_key] = numbers[1][found]
            table = np.zeros(len(numbers[0]) + 1, dtype=bool)  # the last entry answers -1 (no value)
            table[[numbers[0][v] for v in other[2]]] = True
            hit = table[aligned]
            keep = hit if keep is None else keep & hit
        if keep is not None:
            found = found[keep]
        filters = [filters[0], *rest]
    for _, _, _, parts in filters[1:]:
        found = cols.keep_marked(found, parts[0] if len(parts) == 1 else np.concatenate(parts))
    return found


_CACHES: weakref.WeakKeyDictionary[Store, TypeColumnsCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def search(store: Store, query: Query, offset: int, count: int) -> tuple[int, list[str]]:
    """(number of matches, ids of the page at ``offset``) in the default order; raises Unsupported
    when the columns cannot answer the query now (the caller takes another path)."""
    keys = _group_keys(query)
    with _CACHES_LOCK:
        cache = _CACHES.get(store)
        if cache is None:
            cache = _CACHES[store] = TypeColumnsCache(store)
    cols = cache.columns(query.rtype, keys)
    ranks = evaluate(cols, query)
    ids = cols.ids
    return len(ranks), [ids[k] for k in ranks[offset: offset + count].tolist()]
