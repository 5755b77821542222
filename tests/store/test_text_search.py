"""``_content`` reads string and number values as the JSON stores them (escapes included), never
element names; ``_text`` reads the narrative's text with entities decoded and markup left out."""

from __future__ import annotations

import pytest

from store.search import SearchRequest, search
from store.store import Store

DIV = '<div xmlns="http://www.w3.org/1999/xhtml">Tom &amp; Jerry <b>x</b>y &lt;tag&gt;</div>'


@pytest.fixture(scope="module")
def store() -> Store:
    s = Store()
    s.write([
        {"resourceType": "Patient", "id": "a", "name": [{"family": 'O"Neil', "given": ["Zoë"]}],
         "text": {"status": "generated", "div": DIV}},
        {"resourceType": "Patient", "id": "b", "name": [{"family": "back\\slash", "given": ["line\nbreak"]}]},
        {"resourceType": "Patient", "id": "c", "name": [{"family": "Smith", "given": ["status"]}],
         "multipleBirthInteger": 123},
        {"resourceType": "Patient", "id": "d", "meta": {"tag": [{"code": "wombat-tag"}]}},
    ])
    return s


def test_content_reads_what_was_sent_not_the_version_and_time_the_store_keeps(store: Store) -> None:
    stored = store.read("Patient", "d")
    assert stored is not None
    day, version = stored["meta"]["lastUpdated"][:10], stored["meta"]["versionId"]

    def found(term: str) -> list[str]:
        return sorted(rid for _, rid in search(store, SearchRequest("Patient", [("_content", term)])).keys)

    assert found(day) == []
    assert found(version) == ["a", "c"]  # in the narrative's xmlns (1999) and multipleBirthInteger 123 only
    assert found("wombat-tag") == ["d"]  # what the sender put in meta is searched


@pytest.mark.parametrize(("code", "term", "found"), [
    ("_content", 'O"Neil', ["a"]),
    ("_content", "zoË", ["a"]),
    ("_content", "back\\slash", ["b"]),
    ("_content", "line\nbreak", ["b"]),
    ("_content", "status", ["c"]),  # a value here, only a name elsewhere
    ("_content", "family", []),
    ("_content", "123", ["c"]),
    ("_content", '":"', []),
    ("_content", '","', []),
    ("_content", "' OR 1=1 --", []),
    ("_text", "Tom & Jerry", ["a"]),
    ("_text", "xy", ["a"]),  # x<b>y</b> reads xy
    ("_text", "<tag>", ["a"]),
    ("_text", "xmlns", []),
    ("_text", "amp", []),
])
def test_text_search(store: Store, code: str, term: str, found: list[str]) -> None:
    result = search(store, SearchRequest("Patient", [(code, term)]))
    assert sorted(rid for _, rid in result.keys) == found
