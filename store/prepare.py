"""The pure half of a write: everything about a resource that does not depend on what the store holds.

Id assignment, content hash, patient compartment, serialization and search-index rows need only
the resource itself, so bulk import computes them in worker processes (``prepare``) and ships them
to the single writer as a :class:`PreparedBatch`. The writer keeps what must be serialized: the
comparison with the current version, the version number, ``meta.lastUpdated`` (the commit
timestamp) and the DuckDB transaction. Small writes run the same steps in process.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from store import search_index
from store.compartment import patients_of
from store.ids import FHIR_ID, assign_id, content_hash
from store.merge import Merge

# Stand-ins for the store meta in a prepared body; orjson writes the NUL as ``\u0000``.
_VERSION_MARK = "\x00fhirtwin:versionId"
_UPDATED_MARK = "\x00fhirtwin:lastUpdated"
_VERSION_BYTES = orjson.dumps(_VERSION_MARK)
_UPDATED_BYTES = orjson.dumps(_UPDATED_MARK)


def load_arrow_conversions() -> None:
    """Have pyarrow convert Python values once now. Its first conversion of a Python list imports
    pandas (0.3–1 s here); paid when a store opens or a worker process starts, it stays out of the
    first write, the first MLLP ACK or the first mapped batch."""
    pa.array([""])


class StoreError(ValueError):
    """A write the store refuses (bad id, missing resourceType, version conflict)."""

    def __init__(self, message: str, *, expression: str | None = None, code: str = "invalid") -> None:
        super().__init__(message)
        self.expression = expression
        self.code = code


def identify(res: dict[str, Any]) -> tuple[str, str, str]:
    """(type, id, content hash) of a resource about to be written; assigns ``id`` in place."""
    rtype = res.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise StoreError("resource has no resourceType", expression="resourceType", code="required")
    rid = assign_id(res)
    if not FHIR_ID.match(rid):
        raise StoreError(f"invalid id {rid!r}", expression=f"{rtype}.id", code="value")
    res["id"] = rid
    try:
        chash = content_hash(res)
    except TypeError as exc:  # orjson.JSONEncodeError: an integer beyond 64 bits, a value JSON has no form for
        raise StoreError(f"{rtype}/{rid} cannot be written as JSON: {exc}", expression=rtype, code="value") from exc
    return rtype, rid, chash


def stamp_meta(res: dict[str, Any], version_id: str, last_updated: str) -> None:
    """Set the store-maintained ``meta.versionId``/``meta.lastUpdated`` (other meta kept, in order)."""
    meta = dict(res.get("meta") or {})
    meta["versionId"] = version_id
    meta["lastUpdated"] = last_updated
    res["meta"] = meta


def first_patient(patients: tuple[str, ...]) -> str | None:
    """The most direct of a resource's compartment patients (the store's ``patient_id`` column)."""
    return patients[0] if patients else None


@dataclass(slots=True)
class PreparedBatch:
    """Resources prepared for the writer, column-wise (one entry per resource, in input order).

    ``bodies[i]`` is the serialized resource cut where marks stood for its ``versionId`` and
    ``lastUpdated`` values, so the writer joins the parts around them without re-serializing (or the
    whole marked body, re-serialized by the writer, in the rare case that a mark's text also occurs
    in the resource); ``index`` holds the search-index rows with a ``pos`` column naming the
    resource they belong to.
    """

    types: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    patients: list[tuple[str, ...]] = field(default_factory=list)  # each resource's Patient compartment
    bodies: list[tuple[bytes, bytes, bytes] | bytes] = field(default_factory=list)
    index: dict[str, pa.Table] = field(default_factory=dict)
    if_absent: frozenset[int] = frozenset()
    """Positions written only when the resource has no current version (see :meth:`Store.write`)."""
    merges: dict[int, Merge] = field(default_factory=dict)
    """Positions combined with the version they update (see :meth:`Store.write`)."""

    def __len__(self) -> int:
        return len(self.ids)

    def body(self, i: int, version_id: str, last_updated: str) -> bytes:
        """The stored JSON of resource ``i`` as the given version, committed at ``last_updated``."""
        parts = self.bodies[i]
        if isinstance(parts, bytes):  # the resource holds a mark's text itself: no splicing
            res = orjson.loads(parts)
            stamp_meta(res, version_id, last_updated)
            return orjson.dumps(res)
        head, middle, tail = parts
        return b"".join((head, orjson.dumps(version_id), middle, orjson.dumps(last_updated), tail))

    def resources(self) -> list[dict[str, Any]]:
        """The prepared resources again, as dicts (their store meta is set again when written)."""
        return [orjson.loads(self.body(i, "", "")) for i in range(len(self))]


def _split_at_marks(marked: bytes) -> tuple[bytes, bytes, bytes] | bytes:
    """The serialized body around its two marks, or the whole body when a mark's text occurs elsewhere."""
    head, found, rest = marked.partition(_VERSION_BYTES)
    middle, found_too, tail = rest.partition(_UPDATED_BYTES)
    if not (found and found_too) or _UPDATED_BYTES in head or _VERSION_BYTES in rest or _UPDATED_BYTES in tail:
        return marked
    return head, middle, tail


def prepare(resources: list[dict[str, Any]], if_absent: Collection[int] = (),
            merges: Mapping[int, Merge] | None = None) -> tuple[PreparedBatch, list[tuple[int, StoreError]]]:
    """Prepare resources (modified in place: ids assigned, store meta stamped with marks); those at the
    positions ``if_absent`` are to be written only when missing, those in ``merges`` combined with the
    version they update (see :meth:`Store.write`).

    The ones the store would refuse are left out and returned as (position, error).
    """
    batch = PreparedBatch()
    absent: set[int] = set()
    kept: list[dict[str, Any]] = []
    refused: list[tuple[int, StoreError]] = []
    types, ids, hashes, patients, bodies = batch.types, batch.ids, batch.hashes, batch.patients, batch.bodies
    for i, res in enumerate(resources):
        try:
            rtype, rid, chash = identify(res)
        except StoreError as exc:
            refused.append((i, exc))
            continue
        if i in if_absent:
            absent.add(len(kept))
        if merges and i in merges:
            batch.merges[len(kept)] = merges[i]
        kept.append(res)
        types.append(rtype)
        ids.append(rid)
        hashes.append(chash)
        patients.append(tuple(patients_of(res)))
        stamp_meta(res, _VERSION_MARK, _UPDATED_MARK)
        bodies.append(_split_at_marks(orjson.dumps(res)))
    batch.index = search_index.index_tables(kept, [first_patient(p) for p in batch.patients])
    batch.if_absent = frozenset(absent)
    return batch, refused
