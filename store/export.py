"""Export current resources: Parquet partitioned by resource type, or Bulk-Data style NDJSON."""

from __future__ import annotations

from pathlib import Path

from mapping.fhirpath.values import sql_string
from store.store import Store

_READ_AT_ONCE = 10_000
"""Resources read per call: one database query for those the map of current versions does not hold."""


def export_parquet(store: Store, out_dir: Path) -> dict[str, int]:
    """``out_dir/resource_type=<Type>/*.parquet`` with id, version, lastUpdated, patient and the JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    store.cursor().execute(
        "COPY (SELECT resource_type, id, version_id, last_updated, patient_id, json FROM resources) "
        f"TO {sql_string(str(out_dir))} (FORMAT PARQUET, PARTITION_BY (resource_type), OVERWRITE_OR_IGNORE)"
    )
    return store.counts_by_type()


def export_ndjson(store: Store, out_dir: Path) -> dict[str, int]:
    """One ``<Type>.ndjson`` per resource type, as a FHIR Bulk Data export lays them out."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = store.counts_by_type()
    for rtype in counts:
        rows = store.cursor().execute(
            "SELECT id FROM resources WHERE resource_type = ? ORDER BY id", [rtype]
        ).fetchall()
        with (out_dir / f"{rtype}.ndjson").open("wb") as fh:
            for start in range(0, len(rows), _READ_AT_ONCE):
                keys = [(rtype, rid) for (rid,) in rows[start:start + _READ_AT_ONCE]]
                fh.writelines(raw + b"\n" for _, _, raw in store.read_many(keys))
    return counts
