"""The DuckDB feature store: versioned FHIR resources and the single writer.

Design (see docs/architecture.md, "reads vs writes"): DuckDB holds every
version, the search index and the feature views. Because a DuckDB point lookup
costs ~0.5 ms, the writer also keeps a hot map of the *current* version of
every resource (serialized JSON bytes), updated only after the DuckDB
transaction commits, within a memory budget (``store.current_cache``: the
versions written longest ago are read from the file once it is full). All writes
go through this one object, so a read after a successful write always sees it:
the map is a write-through cache of the file, never a second source of truth.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from store import search_index
from store.compartment import patients_of
from store.current_cache import ENTRY_OVERHEAD_BYTES, EVICT_TO, Current, CurrentCache, entry_bytes
from store.gc_pause import paused_gc
from store.ids import stable_id
from store.merge import Merge, merged
from store.prepare import (
    PreparedBatch,
    StoreError,
    first_patient,
    identify,
    load_arrow_conversions,
    prepare,
    stamp_meta,
)
from store.schema import ensure_schema, has_column

__all__ = ["DEFAULT_CACHE_MB", "Current", "PreparedBatch", "Store", "StoreError", "StoreInUse", "WriteResult",
           "fhir_instant"]

DEFAULT_CACHE_MB = 2048
"""Memory for the map of current versions (``store.current_cache``): ~1.5 million Synthea-sized resources."""


_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def default_db_memory_mb() -> float:
    """DuckDB's memory limit unless one is given: half of the memory this process may use, physical or
    its container's (cgroup v2 or v1) limit. DuckDB's own default, 80 %, leaves too little beside the
    map of current versions and a bulk import's open transaction."""
    available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" means none
            available = min(available, int(text))
    return available / 2**20 / 2


class WriteResult(NamedTuple):
    """Outcome of writing one resource: what happened and which version is now current.

    A named tuple, not a frozen dataclass: a bulk transaction makes one per resource, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__`` (~0.8 µs against ~0.2)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    outcome: str  # created | updated | unchanged | deleted | not-found
    # The Patient compartment of what changed (for a deletion: of the version it ended), so commit
    # listeners (caches, twins) need not read the resources again.
    patients: tuple[str, ...] = ()


def fhir_instant(ts: datetime) -> str:
    """A FHIR ``instant`` string in UTC with microseconds."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_ARROW_SCHEMA = pa.schema(
    [
        ("resource_type", pa.string()),
        ("id", pa.string()),
        ("version_id", pa.int64()),
        ("last_updated", pa.timestamp("us", tz="UTC")),
        ("deleted", pa.bool_()),
        ("patient_id", pa.string()),
        ("content_hash", pa.string()),
        # Arrow's JSON type: DuckDB takes the bodies (orjson's output) as JSON without parsing each one
        # again, as a cast from VARCHAR does.
        ("json", pa.json_()),
        ("is_current", pa.bool_()),
        ("method", pa.string()),
    ]
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURRENT_ROWS = "SELECT resource_type, id, version_id, content_hash, last_updated, deleted, json FROM resources_current"


def _current_row(row: tuple[Any, ...]) -> tuple[tuple[str, str], Current]:
    rtype, rid, vid, chash, ts, deleted, js = row
    return (rtype, rid), Current(vid, chash, ts, deleted, None if deleted else js.encode())


@dataclass(slots=True)
class _Rows:
    """The new versions of one transaction, column-wise, and which of them become current.

    A resource changed by several batches of one transaction has a row per version; ``latest``
    names the row of its newest one, the only one that goes to ``resources_current`` and the index.
    """

    deleted: bool = False
    keys: list[tuple[str, str]] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    pids: list[str | None] = field(default_factory=list)
    blobs: list[bytes | None] = field(default_factory=list)
    stamps: list[datetime] = field(default_factory=list)
    latest: dict[tuple[str, str], int] = field(default_factory=dict)
    replaced: set[tuple[str, str]] = field(default_factory=set)
    """Keys that had a row in ``resources_current`` before the transaction (their rows are replaced)."""
    # Per source batch: its index rows (``pos`` = position in that batch) and, when the batch was
    # prepared whole (not only its changed resources), (first row, staged positions, batch length).
    index: list[dict[str, pa.Table]] = field(default_factory=list)
    index_rows: list[tuple[int, list[int], int]] = field(default_factory=list)
    # Row -> the REST interaction (POST, PUT, PATCH) that sent it, kept for history; the rows of
    # imports, messages and twins have none (a dict: bulk transactions add no column of Nones).
    methods: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def add(
        self, key: tuple[str, str], version: int, chash: str, pid: str | None, blob: bytes | None, ts: datetime,
        method: str | None = None,
    ) -> None:
        if method is not None:
            self.methods[len(self.keys)] = method
        self.latest[key] = len(self.keys)
        self.keys.append(key)
        self.versions.append(version)
        self.hashes.append(chash)
        self.pids.append(pid)
        self.blobs.append(blob)
        self.stamps.append(ts)

    def arrow(self) -> pa.Table:
        """The rows as the staged table the transaction inserts from."""
        n = len(self.keys)
        micros = {ts: (ts - _EPOCH) // timedelta(microseconds=1) for ts in set(self.stamps)}
        latest = self.latest
        current = [True] * n if len(latest) == n else [latest[key] == i for i, key in enumerate(self.keys)]
        return pa.table(
            [
                [t for t, _ in self.keys],
                [i for _, i in self.keys],
                self.versions,
                [micros[ts] for ts in self.stamps],
                [self.deleted] * n,
                self.pids,
                self.hashes,
                pa.ExtensionArray.from_storage(pa.json_(), pa.array(self.blobs, pa.string())),
                current,
                [self.methods.get(i) for i in range(n)] if self.methods else pa.nulls(n, pa.string()),
            ],
            schema=_ARROW_SCHEMA,
        )

    def current_entries(self) -> list[tuple[tuple[str, str], Current]]:
        """The map entries of the versions that became current (for after the commit)."""
        deleted, versions, hashes, stamps, blobs = self.deleted, self.versions, self.hashes, self.stamps, self.blobs
        return [(key, Current(versions[i], hashes[i], stamps[i], deleted, blobs[i])) for key, i in self.latest.items()]

    def current_index(self) -> list[dict[str, pa.Table]]:
        """Index rows of the current rows only: a batch's rows of resources it did not store (unchanged,
        or changed again by a later batch) are dropped."""
        if not self.index_rows:
            return self.index
        latest, keys = self.latest, self.keys
        out = []
        for tables, (first, positions, size) in zip(self.index, self.index_rows, strict=True):
            kept = [pos for k, pos in enumerate(positions, start=first) if latest[keys[k]] == k]
            if len(kept) < size:
                keep = np.zeros(size, dtype=bool)
                keep[kept] = True
                tables = {t: rows.filter(keep[rows["pos"].to_numpy()]) for t, rows in tables.items()}
            out.append(tables)
        return out


def _insert_rows(con: duckdb.DuckDBPyConnection, rows: _Rows) -> None:
    """Insert rows in the open transaction: new versions, current rows in place of the ones they
    replace, index rows (none for deletions)."""
    replaced = sorted(rows.replaced)
    con.register("_staged", rows.arrow())
    try:
        con.execute(
            "INSERT INTO resource_versions SELECT resource_type, id, version_id, last_updated, deleted, "
            "patient_id, content_hash, json, method FROM _staged"
        )
        if replaced:
            con.execute(
                "DELETE FROM resources_current WHERE "
                + search_index.keys_predicate(replaced, "_staged", rt="resource_type")
            )
        con.execute(
            "INSERT INTO resources_current SELECT resource_type, id, version_id, last_updated, deleted, "
            "patient_id, content_hash, json FROM _staged WHERE is_current"
        )
        search_index.index_batch(con, "_staged", None if rows.deleted else rows.current_index(), replaced,
                                 {rtype for rtype, _ in rows.latest})
    finally:
        con.unregister("_staged")


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in .* \(PID (?P<pid>\d+)\)")


class StoreInUse(RuntimeError):
    """The database file is open for writing in another process (DuckDB lets one process write)."""

    def __init__(self, path: str, pid: int) -> None:
        super().__init__(f"{path} is in use by process {pid} (a running fhirtwin serve or import?): "
                         "use its REST API, or stop it first")
        self.path = path
        self.pid = pid


class Store:
    """Single-writer store over one DuckDB database file (or ``:memory:``)."""

    def __init__(self, path: str | Path = ":memory:", *, read_only: bool = False,
                 cache_mb: float = DEFAULT_CACHE_MB, db_memory_mb: float | None = None) -> None:
        """``cache_mb``: memory for the map of current versions; ``db_memory_mb``: DuckDB's memory limit
        (its buffer pool of table blocks grows with the database up to it; see docs/architecture.md)."""
        self.path = str(path)
        limit_mb = default_db_memory_mb() if db_memory_mb is None else db_memory_mb
        try:
            self._con = duckdb.connect(self.path, read_only=read_only, config={"memory_limit": f"{limit_mb:.0f}MiB"})
        except duckdb.IOException as exc:
            holder = _LOCK_HOLDER.search(str(exc))
            if holder is None:
                raise
            raise StoreInUse(self.path, int(holder["pid"])) from exc
        if not read_only:
            ensure_schema(self._con)
            search_index.install(self._con)
        self._con.execute("SET TimeZone = 'UTC'")
        load_arrow_conversions()
        # A file opened read-only may be older than the method column (history then infers it).
        self._method_column = "method" if has_column(self._con, "resource_versions", "method") else "NULL"
        self._write_lock = threading.RLock()
        self._last_ts = datetime.min.replace(tzinfo=UTC)
        self._current = CurrentCache(int(cache_mb * 2**20), self._load_rows)
        self._listeners: list[Any] = []
        self._close_listeners: list[Any] = []
        self._load_current()

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        """Checkpoint and release the database file (after the close listeners have stopped their work)."""
        for listener in self._close_listeners:
            listener()
        with self._write_lock:
            self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_current(self) -> None:
        """Fill the map of current versions: all of them when they fit its budget, else the newest."""
        con = self._con
        rows, last, size = con.execute(
            "SELECT count(*), max(last_updated), sum(strlen(json::VARCHAR)) FROM resources_current"
        ).fetchone()
        if last is not None:
            self._last_ts = last
        cache = self._current
        if rows * ENTRY_OVERHEAD_BYTES + (size or 0) <= cache.budget_bytes:
            cursor = con.execute(_CURRENT_ROWS)
            while chunk := cursor.fetchmany(10_000):
                cache.fill(map(_current_row, chunk), complete=True)
            return
        cursor = con.execute(_CURRENT_ROWS + " ORDER BY last_updated DESC")
        newest: list[tuple[tuple[str, str], Current]] = []
        room = cache.budget_bytes * EVICT_TO
        while room > 0 and (chunk := cursor.fetchmany(10_000)):
            for row in chunk:
                newest.append(_current_row(row))
                room -= entry_bytes(newest[-1][1])
                if room <= 0:
                    break
        cache.fill(reversed(newest), complete=False)

    def _load_rows(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Current]:
        """The ``resources_current`` rows of ``keys`` (those the map of current versions no longer holds)."""
        cursor = self.cursor()
        if len(keys) == 1:
            rows = cursor.execute(_CURRENT_ROWS + " WHERE resource_type = ? AND id = ?", list(keys[0])).fetchall()
        else:
            _wanted = pa.table({"rt": [k[0] for k in keys], "rid": [k[1] for k in keys]})  # noqa: F841
            # read by the variable's name (DuckDB's replacement scan of this frame)
            rows = cursor.execute(_CURRENT_ROWS + " SEMI JOIN _wanted w ON resource_type = w.rt AND id = w.rid"
                                  ).fetchall()
        return dict(_current_row(row) for row in rows)

    @property
    def cache(self) -> CurrentCache:
        """The map of current versions (size, budget, whether it holds every resource)."""
        return self._current

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection for read queries from any thread (DuckDB MVCC snapshot per query)."""
        return self._con.cursor()

    def on_commit(self, listener: Any) -> None:
        """Register ``listener(results)`` called after every committed write batch."""
        self._listeners.append(listener)

    def on_close(self, listener: Any) -> None:
        """Register ``listener()`` called when the store closes, before the connection does (background
        readers finish first: DuckDB refuses to close a connection one of its cursors is using)."""
        self._close_listeners.append(listener)

    # -- reads -------------------------------------------------------------
    def current(self, resource_type: str, rid: str) -> Current | None:
        """Current version record (deleted ones included) from the hot map."""
        return self._current.get((resource_type, rid))

    def read_bytes(self, resource_type: str, rid: str) -> bytes | None:
        """Serialized current version, or None when absent or deleted."""
        cur = self._current.get((resource_type, rid))
        return cur.json if cur and not cur.deleted else None

    def current_many(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Current]:
        """Current version records of ``keys`` that exist (deleted ones included); one database query for
        those the map does not hold."""
        return self._current.get_many(keys)

    def read_many(self, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str, bytes]]:
        """``(type, id, JSON)`` of the ``keys`` that exist and are not deleted, in their order."""
        found = self._current.get_many(keys)
        return [(t, i, cur.json) for t, i in keys
                if (cur := found.get((t, i))) is not None and not cur.deleted and cur.json is not None]

    def read(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        """Current version as a dict, or None when absent or deleted."""
        raw = self.read_bytes(resource_type, rid)
        return orjson.loads(raw) if raw is not None else None

    def vread(self, resource_type: str, rid: str, version_id: int) -> tuple[bool, dict[str, Any] | None] | None:
        """A given version: None if it never existed, else (deleted, resource)."""
        row = self.cursor().execute(
            "SELECT deleted, json FROM resource_versions WHERE resource_type = ? AND id = ? AND version_id = ?",
            [resource_type, rid, version_id],
        ).fetchone()
        if row is None:
            return None
        return bool(row[0]), (orjson.loads(row[1]) if row[1] is not None else None)

    def history(
        self,
        resource_type: str | None = None,
        rid: str | None = None,
        *,
        since: datetime | None = None,
        at: datetime | tuple[datetime, datetime] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[tuple[str, str, int, datetime, bool, dict[str, Any] | None, str | None]]]:
        """Versions newest first: (total, rows of type, id, version, lastUpdated, deleted, resource, the REST
        method that wrote it or None).

        ``since``: versions written after it. ``at``: versions that were current at that instant, or at
        some time in the half-open period ``(start, end)`` (FHIR ``_at``, a date of day precision being
        the whole day): written before its end and not yet replaced by the next version at its start.
        """
        where, args = [], []
        if resource_type:
            where.append("resource_type = ?")
            args.append(resource_type)
        if rid:
            where.append("id = ?")
            args.append(rid)
        source = "resource_versions"
        if at is not None:  # the window needs every version of each resource: only their keys filter it
            start, end = at if isinstance(at, tuple) else (at, at + timedelta(microseconds=1))
            inner = ("WHERE " + " AND ".join(where)) if where else ""
            source = ("(SELECT *, lead(last_updated) OVER (PARTITION BY resource_type, id ORDER BY version_id) "
                      f"AS replaced FROM resource_versions {inner})")
            where = ["last_updated < ? AND (replaced IS NULL OR replaced > ?)"]
            args += [end, start]
        if since:
            where.append("last_updated > ?")
            args.append(since)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        cur = self.cursor()
        total = cur.execute(f"SELECT count(*) FROM {source} {clause}", args).fetchone()[0]
        rows = cur.execute(
            f"SELECT resource_type, id, version_id, last_updated, deleted, json, {self._method_column} "
            f"FROM {source} {clause} "
            "ORDER BY last_updated DESC, id, version_id DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return total, [(t, i, v, ts, d, orjson.loads(j) if j is not None else None, m)
                       for t, i, v, ts, d, j, m in rows]

    def count(self, resource_type: str | None = None) -> int:
        """Number of current, non-deleted resources (of one type)."""
        if resource_type is None:
            return sum(self.counts_by_type().values())
        return self.cursor().execute(
            "SELECT count(*) FROM resources_current WHERE resource_type = ? AND NOT deleted", [resource_type]
        ).fetchone()[0]

    def counts_by_type(self) -> dict[str, int]:
        """Current, non-deleted resources per type."""
        rows = self.cursor().execute(
            "SELECT resource_type, count(*) FROM resources_current WHERE NOT deleted GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        return dict(rows)

    @staticmethod
    def as_of_sql(as_of: datetime | None) -> str:
        """SQL relation of resources as known at ``as_of`` (by lastUpdated), same columns as ``resources``.

        Point-in-time reads keep model calibration free of leakage: the twin sees
        only versions that had been written by then.
        """
        if as_of is None:
            return "resources"
        ts = fhir_instant(as_of)
        return (
            "(SELECT resource_type, id, version_id, last_updated, deleted, patient_id, json FROM ("
            "SELECT *, row_number() OVER (PARTITION BY resource_type, id ORDER BY version_id DESC) AS rn "
            f"FROM resource_versions WHERE last_updated <= TIMESTAMPTZ '{ts}') WHERE rn = 1 AND NOT deleted)"
        )

    # -- writes ------------------------------------------------------------
    def _next_timestamp(self) -> datetime:
        now = datetime.now(UTC)
        if now <= self._last_ts:
            now = self._last_ts + timedelta(microseconds=1)
        self._last_ts = now
        return now

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    @contextmanager
    def write_transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the single-writer lock and one DuckDB transaction, for side tables (inbox, twin state).

        Resource writes must go through :meth:`write`/:meth:`delete` so the hot map stays coherent.
        """
        with self._write_lock, self._transaction() as con:
            yield con

    def write(self, resources: Iterable[dict[str, Any]], *, if_absent: Collection[int] = (),
              merge: Mapping[int, Merge] | None = None, methods: Sequence[str] | None = None) -> list[WriteResult]:
        """Write resources as one all-or-nothing batch; identical content makes no new version.

        The resources at the positions ``if_absent`` are written only when they have no current version
        (stored, or earlier in the batch); otherwise the stored one stays, as if they were unchanged (a
        lab message's Patient, say, must not replace the demographics an admission message wrote).
        Those at the positions of ``merge`` are combined, by its rule, with the version they update
        (:mod:`store.merge`: an HL7 merge names the record merged away without its demographics).
        ``methods``: the REST interaction that sent each resource (POST, PUT, PATCH), which history
        reports; without it history tells a first version's create from the version number alone.

        Resources are modified in place: ``id`` assigned if missing, merged content, and ``meta``
        versionId/lastUpdated set for those that changed.
        """
        with self._write_lock:
            given = batch = list(resources)
            if merge:  # on copies: a refused batch must leave the caller's resources as they were
                batch = self._merge_bases(batch, merge, if_absent, {})
            keys = [identify(res) for res in batch]
            patients = [tuple(patients_of(res)) for res in batch]
            ts = self._next_timestamp()
            staged, results, replaced = self._stage(keys, ts, {}, patients, if_absent)
            if staged:
                stamp = fhir_instant(ts)
                chosen = [batch[pos] for pos, _ in staged.values()]
                for res, (_, version) in zip(chosen, staged.values(), strict=True):
                    stamp_meta(res, str(version), stamp)
                rows = _Rows(replaced=replaced)
                for (key, (pos, version)), res in zip(staged.items(), chosen, strict=True):
                    rows.add(key, version, keys[pos][2], first_patient(patients[pos]), orjson.dumps(res), ts,
                             methods[pos] if methods else None)
                rows.index.append(search_index.index_tables(chosen, rows.pids))
                self._commit(rows)
            for res, written in zip(given, batch, strict=True):
                if res is not written:  # merged: the caller's resource becomes what was written
                    res.clear()
                    res.update(written)
            self._notify(results)
            return results

    def write_prepared(self, batch: PreparedBatch) -> list[WriteResult]:
        """Write a batch prepared elsewhere (:func:`store.prepare.prepare`, e.g. in a worker process).

        Same outcome as :meth:`write` on the same resources: versions, meta, bodies and index rows.
        """
        return self.write_prepared_many([batch])[0]

    def write_prepared_many(self, batches: Sequence[PreparedBatch]) -> list[list[WriteResult]]:
        """Write prepared batches in one DuckDB transaction; one result list per batch.

        Versions, bodies, index rows and results are those of :meth:`write_prepared` called on each
        batch in turn (each batch has its own ``lastUpdated``; a resource changed by two batches gets
        two versions), but DuckDB sees large appends: a bulk import pays for one commit, and appends
        of a row group or more are compressed straight into the file instead of going through the
        write-ahead log first.
        """
        group = self.write_group()
        try:
            out = [group.add(batch) for batch in batches]
        except BaseException:
            group.rollback()
            raise
        group.commit()
        return out

    def write_group(self) -> WriteGroup:
        """A transaction that prepared batches are added to one by one and inserted as they come
        (:class:`WriteGroup`): a bulk import inserts while its next chunks are being prepared."""
        return WriteGroup(self)

    def _merged_batch(self, batch: PreparedBatch, written: Mapping[tuple[str, str], bytes | None]) -> PreparedBatch:
        """``batch`` with its ``merges`` applied (prepared again: rare, a merge has a stored base only
        after the records it merges were written); ``written``: the bodies the transaction wrote before
        (None: deleted)."""
        keys = {(batch.types[pos], batch.ids[pos]) for pos in batch.merges}
        last = max(batch.merges)
        if not (keys & {key for key, blob in written.items() if blob is not None}
                or keys & set(zip(batch.types[:last], batch.ids[:last], strict=True))
                or any(not cur.deleted for cur in self._current.get_many(keys - written.keys()).values())):
            return batch
        resources = batch.resources()
        combined = self._merge_bases(resources, batch.merges, batch.if_absent, written)
        if all(a is b for a, b in zip(resources, combined, strict=True)):
            return batch
        again, refused = prepare(combined, batch.if_absent)
        if refused:
            raise refused[0][1]
        return again

    def _merge_bases(self, resources: list[dict[str, Any]], merge: Mapping[int, Merge], if_absent: Collection[int],
                     written: Mapping[tuple[str, str], bytes | None]) -> list[dict[str, Any]]:
        """``resources`` with each one at a ``merge`` position combined with the version it updates: the
        latest one of its key earlier in ``resources`` (that is written), else one ``written`` earlier in
        the transaction, else the stored one; without any it stays as given. Combined resources are new
        dicts; the others are those given (a resource without an id has nothing stored to combine with)."""
        out = list(resources)
        keys = {(resources[pos].get("resourceType"), resources[pos].get("id")) for pos in merge
                if resources[pos].get("id")}
        stored = self._current.get_many(k for k in keys if k not in written)
        latest: dict[Any, Any] = {k: written[k] if k in written else (stored[k].json if k in stored else None)
                                  for k in keys}
        for pos, res in enumerate(resources):
            key = (res.get("resourceType"), res.get("id"))
            if key not in latest:
                continue
            base = latest[key]
            if pos in if_absent and base is not None:
                continue
            rule = merge.get(pos)
            if rule is not None and base is not None:
                out[pos] = merged(orjson.loads(base) if isinstance(base, bytes) else base, res, rule)
            latest[key] = out[pos]
        return out

    def _stage(
        self, keys: list[tuple[str, str, str]], ts: datetime, overlay: dict[tuple[str, str], Current],
        patients: Sequence[tuple[str, ...]], if_absent: Collection[int] = (),
    ) -> tuple[dict[tuple[str, str], tuple[int, int]], list[WriteResult], set[tuple[str, str]]]:
        """Compare a batch with the current versions (``overlay``: those written earlier in the same
        transaction): (type, id) -> (position of the content to store, its version) for what changed,
        one result per input, and the changed keys that have a row in ``resources_current``. Within a
        batch the last content wins."""
        results: list[WriteResult] = []
        staged: dict[tuple[str, str], tuple[int, int]] = {}
        hashes: dict[tuple[str, str], str] = {}
        stored = self._current.get_many({(k[0], k[1]) for k in keys if (k[0], k[1]) not in overlay})
        for pos, (rtype, rid, chash) in enumerate(keys):
            key = (rtype, rid)
            prev = staged.get(key)
            base = overlay.get(key) or stored.get(key)
            if prev:
                base_version, base_hash = prev[1], hashes[key]
            else:
                base_version = base.version_id if base else 0
                base_hash = base.content_hash if base and not base.deleted else None
            if base_hash == chash or (pos in if_absent and (prev or (base is not None and not base.deleted))):
                results.append(WriteResult(rtype, rid, base_version, ts if prev else base.last_updated, "unchanged"))
                continue
            version = prev[1] if prev else base_version + 1
            staged[key] = (pos, version)
            hashes[key] = chash
            existed = (base is not None and not base.deleted) or prev is not None
            results.append(WriteResult(rtype, rid, version, ts, "updated" if existed else "created", patients[pos]))
        return staged, results, {key for key in staged if key in stored}

    def delete(self, resource_type: str, rid: str) -> WriteResult:
        """Mark a resource deleted (a new version with no content); idempotent."""
        with self._write_lock:
            cur = self._current.get((resource_type, rid))
            if cur is None:
                return WriteResult(resource_type, rid, 0, self._last_ts, "not-found")
            if cur.deleted:
                return WriteResult(resource_type, rid, cur.version_id, cur.last_updated, "unchanged")
            ts = self._next_timestamp()
            rows = _Rows(deleted=True, replaced={(resource_type, rid)})
            rows.add((resource_type, rid), cur.version_id + 1, "", None, None, ts)
            self._commit(rows)
            ended = tuple(patients_of(orjson.loads(cur.json))) if cur.json is not None else ()
            result = WriteResult(resource_type, rid, cur.version_id + 1, ts, "deleted", ended)
            self._notify([result])
            return result

    def _commit(self, rows: _Rows) -> None:
        """One transaction: new versions, current rows, index rows (none for deletions)."""
        with self._transaction() as con:
            _insert_rows(con, rows)
        self._current.put_many(rows.current_entries())

    def _notify(self, results: list[WriteResult]) -> None:
        changed = [r for r in results if r.outcome in ("created", "updated", "deleted")]
        if changed:
            for listener in self._listeners:
                listener(changed)

    # -- physical layout -------------------------------------------------------
    def _current_rows(self) -> int:
        return self._con.execute("SELECT count(*) FROM resources_current").fetchone()[0]

    def unclustered_rows(self) -> int:
        """Current resources written since the last :meth:`optimize` (the unsorted tail)."""
        done = self._con.execute("SELECT value FROM store_meta WHERE key = 'clustered_rows'").fetchone()
        return max(0, self._current_rows() - (int(done[0]) if done else 0))

    def optimize(self) -> None:
        """Sort the search index and current rows by patient so patient-anchored searches prune row groups.

        Appends land unsorted; after a bulk import (or at server start when the
        unsorted tail is large) this rewrite restores the clustering. It holds the
        writer lock; readers keep their snapshot. One transaction per table: a rewrite
        is held in DuckDB's memory until it commits, and all of them at once outgrew
        a modest memory limit (``db_memory_mb``) at a million resources; the order of
        rows is no part of the data, so a stop half-way loses nothing.
        """
        with self._write_lock:
            for table in search_index.CLUSTERED:
                with self._transaction() as con:
                    search_index.cluster(con, table)
            with self._transaction() as con:
                con.execute(
                    "INSERT OR REPLACE INTO store_meta VALUES ('clustered_rows', ?)", [str(self._current_rows())]
                )

    # -- dead letters -------------------------------------------------------
    def dead_letter(
        self, source: str, line: int | None, fmt: str, raw: str | bytes, issues: list[dict[str, Any]]
    ) -> str:
        """Keep a refused record with its raw text and reasons; returns its dead-letter id."""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        dl_id = stable_id("dead-letter", source, str(line), text)
        with self._write_lock:
            self._con.execute(
                "INSERT INTO dead_letters (dl_id, received, source, line, format, raw, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dl_id) DO UPDATE SET "
                "received = excluded.received, reason = excluded.reason, replayed = false",
                [dl_id, datetime.now(UTC), source, line, fmt, text, orjson.dumps(issues).decode()],
            )
        return dl_id

    def dead_letters(self, *, include_replayed: bool = False) -> list[dict[str, Any]]:
        """Refused records, oldest first."""
        where = "" if include_replayed else "WHERE NOT replayed"
        rows = self.cursor().execute(
            f"SELECT dl_id, received, source, line, format, raw, reason, replayed FROM dead_letters {where} "
            "ORDER BY received, dl_id"
        ).fetchall()
        keys = ("dl_id", "received", "source", "line", "format", "raw", "reason", "replayed")
        return [dict(zip(keys, (*row[:6], orjson.loads(row[6]), row[7]), strict=True)) for row in rows]

    def mark_replayed(self, dl_id: str) -> None:
        """Record that a dead letter was re-ingested successfully."""
        with self._write_lock:
            self._con.execute("UPDATE dead_letters SET replayed = true WHERE dl_id = ?", [dl_id])


FLUSH_RESOURCES = 20_000
"""Staged resources a :class:`WriteGroup` inserts at once (four chunks of a bulk import; smaller writes,
a REST transaction or an MLLP round, are inserted whole at their commit). An insert takes the GIL a
few times per statement (DuckDB's Arrow scans are set up in Python), each time waiting for the thread
preparing chunks to let go of it: fewer, larger inserts wait less (docs/benchmarks/ingest.md)."""


class WriteGroup:
    """Prepared batches written in one DuckDB transaction, inserted as they are added.

    :meth:`add` stages a batch at once (compared with the current versions and the group's earlier
    batches, versions numbered, results final) and inserts the staged rows once ``FLUSH_RESOURCES``
    have gathered: a bulk import's inserts run while its next chunks are prepared (DuckDB releases the
    GIL), and only the commit is left at the end. Inserting chunk by chunk into one transaction costs
    DuckDB what one large insert does (docs/benchmarks/ingest.md); committing each chunk would cost
    ~40 % more, through the write-ahead log.

    The group holds the store's single-writer lock from its first batch to :meth:`commit` or
    :meth:`rollback`, which must come from the thread that added it (the lock is that thread's). The
    map of current versions and the commit listeners learn of the group's versions at the commit. After
    either, the group starts afresh.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._reset()

    def _reset(self) -> None:
        self._rows = _Rows()
        self._overlay: dict[tuple[str, str], Current] = {}  # the group's versions, for staging
        self._inserted: set[tuple[str, str]] = set()  # keys whose current row an earlier insert holds
        self._entries: list[tuple[tuple[str, str], Current]] = []  # for the map, after the commit
        self._results: list[list[WriteResult]] = []
        self._locked = self._began = False
        self.resources = 0

    def __len__(self) -> int:
        """Resources added since the group began (changed or not)."""
        return self.resources

    def add(self, batch: PreparedBatch) -> list[WriteResult]:
        """Stage ``batch`` (as :meth:`Store.write_prepared` would write it) and return its results,
        which hold once the group commits."""
        store = self._store
        if not self._locked:
            store._write_lock.acquire()
            self._locked = True
        with paused_gc():
            rows = self._rows
            if batch.merges:
                batch = store._merged_batch(batch, self._written())
            ts = store._next_timestamp()
            staged, results, replaced = store._stage(list(zip(batch.types, batch.ids, batch.hashes, strict=True)),
                                                     ts, self._overlay, batch.patients, batch.if_absent)
            rows.replaced |= replaced
            rows.replaced.update(key for key in staged if key in self._inserted)
            stamp = fhir_instant(ts)
            first = len(rows)
            for key, (pos, version) in staged.items():
                chash = batch.hashes[pos]
                rows.add(key, version, chash, first_patient(batch.patients[pos]), batch.body(pos, str(version), stamp), ts)
                self._overlay[key] = Current(version, chash, ts, False, None)
            rows.index.append(batch.index)
            rows.index_rows.append((first, [pos for pos, _ in staged.values()], len(batch)))
            self._results.append(results)
            self.resources += len(batch)
            if len(rows) >= FLUSH_RESOURCES:
                self._insert()
        return results

    def _written(self) -> dict[tuple[str, str], bytes | None]:
        """Bodies of the group's current versions (None: deleted)."""
        written = {key: cur.json for key, cur in self._entries}
        written.update((key, self._rows.blobs[i]) for key, i in self._rows.latest.items())
        return written

    def _insert(self) -> None:
        rows = self._rows
        if not rows:
            return
        con = self._store._con
        if not self._began:
            con.execute("BEGIN TRANSACTION")
            self._began = True
        with paused_gc():
            _insert_rows(con, rows)
        self._inserted.update(rows.latest)
        self._entries += rows.current_entries()
        self._rows = _Rows()

    def commit(self) -> None:
        """Insert what is left and commit; then update the map of current versions and tell the commit
        listeners. On a failure the group is rolled back and the error raised."""
        if not self._locked:
            return
        store = self._store
        try:
            self._insert()
            if self._began:
                store._con.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        try:
            with paused_gc():
                store._current.put_many(self._entries)
            for results in self._results:
                store._notify(results)
        finally:
            self._release()

    def rollback(self) -> None:
        """Drop everything added since the group began."""
        if not self._locked:
            return
        try:
            if self._began:
                self._store._con.execute("ROLLBACK")
        finally:
            self._release()

    def _release(self) -> None:
        self._reset()
        self._store._write_lock.release()
