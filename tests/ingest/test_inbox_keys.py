"""The inbox's Bloom filter of message keys, filled from DuckDB at start: no stored key is ever missed
(a miss would let a resend through as a new message)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ingest.hl7v2.inbox import Inbox, KeyFilter, ensure_inbox
from store.store import Store


def test_keys_filled_in_sql_are_the_keys_python_checks(tmp_path: Path) -> None:
    keys = [f"LAB|HOSP|{i}" for i in range(20_000)] + ["ÄPP|Ωmega Klinik|Ünïcode-1", "A|B|", "|", "x" * 500]
    with Store(tmp_path / "k.duckdb") as store:
        ensure_inbox(store)
        con = store.cursor()
        con.register("k", pa.table({"key": keys}))
        con.execute("INSERT INTO hl7_inbox (inbox_id, received, msg_key, content_hash, status, enhanced, raw, "
                    "size_bytes) SELECT row_number() OVER (), now(), key, 'h', 'processed', false, 'x', 1 FROM k")
        loaded = Inbox(store)._keys
        assert all(k in loaded for k in keys)
        added = KeyFilter(capacity=len(keys))
        for k in keys:
            added.add(k)
        assert all(k in added for k in keys)
        false_positives = sum(f"OTHER|{i}" in loaded for i in range(20_000))
        assert false_positives < 200  # false positives only cost a lookup; ~0.1% expected at this size
