"""Writes combined with the stored version (``store.merge``): the rule, and the store applying it
to what is current at write time: stored, earlier in the batch, earlier in the transaction."""

from __future__ import annotations

from typing import Any

import pytest

from store.merge import Merge, merged, present
from store.prepare import prepare
from store.search import SearchRequest, search
from store.store import Store, StoreError

RETIRE = Merge("stored", {"active": "incoming", "link": "union", "identifier": "union"})
KEEP_VALUE = Merge("replace", {"value[x]": "incoming"})


def _patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "old", **elements}


STUB = _patient(identifier=[{"value": "56789"}], active=False,
                link=[{"type": "replaced-by", "other": {"reference": "Patient/new"}}])
FULL = _patient(identifier=[{"system": "urn:mrn", "value": "56789"}], name=[{"family": "Berry"}],
                birthDate="1970-01-02", active=True)


def test_a_patch_keeps_the_stored_elements_and_joins_lists() -> None:
    out = merged({**FULL, "meta": {"versionId": "3", "lastUpdated": "x", "source": "adt"}}, STUB, RETIRE)
    assert out["name"] == [{"family": "Berry"}] and out["birthDate"] == "1970-01-02"
    assert out["active"] is False
    assert out["identifier"] == [{"system": "urn:mrn", "value": "56789"}, {"value": "56789"}]
    assert out["link"] == STUB["link"]
    assert out["meta"] == {"source": "adt"}  # the write sets versionId and lastUpdated
    # joined lists hold each item once: merging the same stub again changes nothing
    assert merged(out, STUB, RETIRE) == out


def test_a_choice_element_is_one_element_whatever_its_type() -> None:
    stored = {"resourceType": "Observation", "id": "o", "status": "preliminary",
              "valueQuantity": {"value": 5}, "note": [{"text": "a"}]}
    without = {"resourceType": "Observation", "id": "o", "status": "final"}
    assert merged(stored, without, KEEP_VALUE) == {"resourceType": "Observation", "id": "o", "status": "final",
                                                    "valueQuantity": {"value": 5}}
    other = {**without, "valueString": "positive"}
    assert merged(stored, other, KEEP_VALUE) == other  # the incoming value replaces the stored one
    assert present(stored, "value[x]") and not present(without, "value[x]") and present(stored, "note")
    assert not present({"note": []}, "note")


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown merge policy"):
        Merge("keep")


def test_store_merges_into_the_stored_version_and_writes_as_given_without_one() -> None:
    store = Store()
    (created,) = store.write([dict(STUB)], merge={0: RETIRE})  # nothing stored: the stub as given
    assert created.outcome == "created" and "name" not in store.read("Patient", "old")
    store.write([dict(FULL)])
    (result,) = store.write([dict(STUB)], merge={0: RETIRE})
    assert (result.outcome, result.version_id) == ("updated", 3)
    stored = store.read("Patient", "old")
    assert stored["name"] == [{"family": "Berry"}] and stored["active"] is False and stored["link"]
    (again,) = store.write([dict(STUB)], merge={0: RETIRE})  # a resend changes nothing
    assert again.outcome == "unchanged"


def test_store_merges_into_a_version_earlier_in_the_batch() -> None:
    store = Store()
    full, stub = store.write([dict(FULL), dict(STUB)], merge={1: RETIRE})
    assert (full.outcome, stub.outcome) == ("created", "updated")  # one version: the batch's last content
    stored = store.read("Patient", "old")
    assert stored["birthDate"] == "1970-01-02" and stored["active"] is False and stored["meta"]["versionId"] == "1"


def test_prepared_batches_merge_at_write_time_also_within_one_transaction() -> None:
    store = Store()
    first, _ = prepare([dict(FULL)])
    later, _ = prepare([{"resourceType": "Basic", "id": "b", "code": {"text": "x"}}, dict(STUB)], merges={1: RETIRE})
    assert later.merges == {1: RETIRE}
    done_first, (basic, stub) = store.write_prepared_many([first, later])
    assert (basic.outcome, stub.outcome) == ("created", "updated")
    stored = store.read("Patient", "old")
    assert stored["name"] == [{"family": "Berry"}] and stored["link"] and stored["meta"]["versionId"] == "2"
    # the search index holds the merged version
    assert search(store, SearchRequest("Patient", [("active", "false"), ("birthdate", "1970-01-02")])).total == 1
    unchanged, _ = prepare([dict(STUB)], merges={0: RETIRE})
    assert store.write_prepared(unchanged)[0].outcome == "unchanged"


def test_a_refused_batch_leaves_the_callers_resources_as_given() -> None:
    store = Store()
    store.write([dict(FULL)])
    stub = dict(STUB)
    with pytest.raises(StoreError):
        store.write([{"resourceType": "Basic", "id": "bad id"}, stub], merge={1: RETIRE})
    assert stub == STUB  # not merged with the stored record while the batch failed
    assert "link" not in store.read("Patient", "old")
    store.write([stub], merge={0: RETIRE})  # written: the caller's dict is what was stored
    assert stub["name"] == [{"family": "Berry"}] and stub["meta"]["versionId"] == "2"


def test_resources_without_ids_have_nothing_to_merge_with() -> None:
    store = Store()
    first, second = ({"resourceType": "Patient", "name": [{"family": n}]} for n in ("A", "B"))
    results = store.write([first, second], merge={0: RETIRE, 1: RETIRE})
    assert [r.outcome for r in results] == ["created", "created"] and results[0].id != results[1].id


def test_meta_follows_the_default_policy() -> None:
    stored = {**FULL, "meta": {"tag": [{"code": "old"}]}}
    assert "meta" not in merged(stored, {"resourceType": "Patient", "id": "old"}, KEEP_VALUE)
    assert merged(stored, STUB, RETIRE)["meta"] == {"tag": [{"code": "old"}]}
