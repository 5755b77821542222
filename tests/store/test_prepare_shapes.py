"""Indexers specialized per resource shape give exactly the rows of the general one, and a prepared
batch of the Synthea fixture is byte for byte what the store wrote before that specialization."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from store import extract, search_index
from store.prepare import PreparedBatch, prepare

NDJSON = Path(__file__).resolve().parents[2] / "fixtures" / "synthea" / "ndjson"
LINES_PER_TYPE = 300
# sha256 of :func:`digest` over the first LINES_PER_TYPE lines of every fixture file, as prepared by the
# code before the shape-specialized indexers and inlined splitters (commit fba4f4a), less the ``_id``
# index rows the store stopped writing (with them, ``search_index.UNINDEXED`` emptied, the digest is that
# code's, a255eaa8…): those changes must not alter a single id, hash, body or index row.
SYNTHEA_DIGEST = "7620260278b70366b6fe1a3d6dc2c587c7bd4b5af10ad50b99cc5659002397fb"


def fixture_resources() -> list[dict]:
    return [
        orjson.loads(line)
        for path in sorted(NDJSON.glob("*.ndjson"))
        for line in path.read_bytes().splitlines()[:LINES_PER_TYPE]
        if line.strip()
    ]


def _table_rows(table: pa.Table) -> dict:
    return {"schema": str(table.schema), "columns": table.to_pydict()}


def digest(batch: PreparedBatch) -> str:
    """A fingerprint of everything a prepared batch hands the writer."""
    bodies = [b"|".join(b) if isinstance(b, tuple) else b for b in batch.bodies]
    content = {
        "types": batch.types, "ids": batch.ids, "hashes": batch.hashes, "patients": batch.patients,
        "bodies": [b.decode() for b in bodies],
        "index": {name: _table_rows(t) for name, t in sorted(batch.index.items())},
    }
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


@pytest.fixture
def fresh_indexers() -> Iterator[None]:
    """Indexers generated anew for the test, and again after it (a test may change how)."""
    search_index._plan.cache_clear()
    extract.type_indexer.cache_clear()
    yield
    search_index._plan.cache_clear()
    extract.type_indexer.cache_clear()


def odd_shapes(resources: list[dict]) -> list[dict]:
    """Resources of shapes the fixture lacks: keys dropped one at a time, keys in reverse order, values
    of unexpected JSON types where elements were (validation may be off), subjects that are not all
    Patients."""
    out = []
    for k, res in enumerate(resources[::25]):
        keys = [key for key in res if key not in ("resourceType", "id")]
        if keys:
            dropped = dict(res)
            del dropped[keys[k % len(keys)]]
            out.append(dropped)
        out.append(dict(reversed(list(res.items()))))
        odd = copy.deepcopy(res)
        for key in keys[:3]:
            odd[key] = [odd[key], None, 7, "text", True] if k % 2 else {"text": str(odd[key])[:20]}
        out.append(odd)
        if "subject" in res:  # ``patient`` keeps fewer of the subjects than there are, or none
            out.append({**res, "subject": {"reference": "Group/g1"}})
            out.append({**res, "subject": [res["subject"], {"reference": "Group/g1"}]})
    return out


def test_shape_indexers_give_the_rows_of_the_general_one(
    fresh_indexers: None, synthea_resources: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = [copy.deepcopy(r) for r in synthea_resources[::3]]
    resources += odd_shapes(resources)
    pids = [f"p{i % 7}" if i % 3 else None for i in range(len(resources))]
    shapes: list[frozenset[str] | None] = []
    generate = extract._indexer

    def recorded(rtype: str, targets: tuple, present: frozenset[str] | None) -> extract.Indexer:
        shapes.append(present)
        return generate(rtype, targets, present)

    monkeypatch.setattr(extract, "_indexer", recorded)
    shaped = search_index.index_tables(resources, pids)
    assert None not in shapes and len(shapes) > 30
    search_index._plan.cache_clear()
    extract.type_indexer.cache_clear()
    monkeypatch.setattr(extract, "MAX_SHAPES", 0)  # every resource through the general indexer
    mark = len(shapes)
    general = search_index.index_tables(resources, pids)
    assert set(shapes[mark:]) == {None}
    assert sorted(shaped) == sorted(general)
    for name in general:
        assert shaped[name].equals(general[name]), name


def test_repeated_element_lists_are_copied_rows(fresh_indexers: None) -> None:
    """``code`` and ``combo-code`` of an Observation without components select the same list: the rows
    are those of ``code`` again, under the other parameter."""
    obs = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"}],
                    "text": "Body Height"},
           "valueQuantity": {"value": 170.2, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}}
    tables = search_index.index_tables([obs], [None])
    token = tables["idx_token"].to_pylist()
    code_rows = [(r["system"], r["code"], r["text"]) for r in token if r["param"] == "code"]
    assert code_rows == [("http://loinc.org", "8302-2", "body height"), (None, None, "body height")]
    assert [(r["system"], r["code"], r["text"]) for r in token if r["param"] == "combo-code"] == code_rows
    quantity = tables["idx_quantity"].to_pylist()
    assert sorted(r["param"] for r in quantity) == ["combo-value-quantity", "value-quantity"]
    assert quantity[0] | {"param": None} == quantity[1] | {"param": None}


def test_prepared_synthea_batch_is_unchanged(fresh_indexers: None) -> None:
    batch, refused = prepare(fixture_resources())
    assert refused == []
    assert digest(batch) == SYNTHEA_DIGEST
