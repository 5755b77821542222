"""The mapper's output for the whole shared corpus equals the pinned snapshot.

The snapshot (``fixtures/mapping/v2_corpus_resources.json``, built by
``fixtures/scripts/build_v2_corpus_snapshot.py``) was taken from the table interpreter
before the generated fast path replaced it: same resources, same ids, same order,
same notes. Each message is mapped twice, because the second pass runs on warm memos
(conversions, compiled segment maps), which is the path a feed takes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HL7V2 = ROOT / ".." / "shared" / "data" / "hl7v2"
SNAPSHOT = ROOT / "fixtures" / "mapping" / "v2_corpus_resources.json"


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_v2_corpus_snapshot",
                                                  ROOT / "fixtures" / "scripts" / "build_v2_corpus_snapshot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text())


def test_every_corpus_message_maps_to_the_snapshot(snapshot: dict[str, Any]) -> None:
    builder = _builder()
    messages = list(builder.corpus_messages(HL7V2))
    assert sorted(where for where, _ in messages) == sorted(snapshot)
    for rnd in ("cold", "warm"):
        differ = [where for where, msg in messages if builder.snapshot_of(msg) != snapshot[where]]
        assert not differ, f"{rnd}: {len(differ)} messages differ from the snapshot, e.g. {differ[:5]}"


def test_snapshot_is_substantial(snapshot: dict[str, Any]) -> None:
    assert len(snapshot) >= 170
    assert sum(len(s["resources"]) for s in snapshot.values()) > 1000
