"""Search over the store: FHIR search parameters turned into SQL.

The result is a page of (type, id) keys plus the total; the caller renders
them from the hot map, so a search costs one SQL query however large the
resources are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from store.store import Store


class SearchError(ValueError):
    """A search the store cannot run as asked (unknown parameter, bad value)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class SearchRequest:
    """A parsed type-level search."""

    resource_type: str
    params: list[tuple[str, str]] = field(default_factory=list)
    count: int = 50
    offset: int = 0


@dataclass
class SearchResult:
    """One page of matches, in a stable order (lastUpdated, id)."""

    total: int
    keys: list[tuple[str, str]]
    ignored: list[str] = field(default_factory=list)


def _reference_target(value: str) -> str:
    return value.rsplit("/", 1)[-1]


def _token_clause(value: str, args: list[object]) -> str:
    ors = []
    for alt in value.split(","):
        system, bar, code = alt.rpartition("|")
        if not bar:
            ors.append("list_contains(json_extract_string(json, '$.code.coding[*].code'), ?)")
            args.append(code)
        else:
            ors.append(
                "EXISTS (SELECT 1 FROM unnest(json_extract(json, '$.code.coding[*]')) AS t(c) "
                "WHERE c ->> 'code' = ? AND coalesce(c ->> 'system', '') = ?)"
            )
            args.extend([code, system])
    return "(" + " OR ".join(ors) + ")"


def search(store: Store, req: SearchRequest) -> SearchResult:
    """Run a search: patient/subject references and code tokens, AND across parameters, OR within."""
    where = ["resource_type = ?"]
    args: list[object] = [req.resource_type]
    ignored: list[str] = []
    for name, value in req.params:
        if name in ("patient", "subject"):
            targets = [_reference_target(v) for v in value.split(",")]
            where.append("patient_id IN (" + ",".join("?" * len(targets)) + ")")
            args.extend(targets)
        elif name == "code":
            where.append(_token_clause(value, args))
        elif name == "_id":
            ids = value.split(",")
            where.append("id IN (" + ",".join("?" * len(ids)) + ")")
            args.extend(ids)
        else:
            ignored.append(name)
    clause = " AND ".join(where)
    cur = store.cursor()
    total = cur.execute(f"SELECT count(*) FROM resources WHERE {clause}", args).fetchone()[0]
    rows = cur.execute(
        f"SELECT resource_type, id FROM resources WHERE {clause} ORDER BY last_updated, id LIMIT ? OFFSET ?",
        [*args, req.count, req.offset],
    ).fetchall()
    return SearchResult(total=total, keys=[(t, i) for t, i in rows], ignored=ignored)
