"""Writing view rows as CSV, JSON, NDJSON or Parquet (to a file or standard output)."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq


def _cell(value: Any) -> Any:
    """CSV cells: nested values as JSON text, None as empty."""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return "" if value is None else value


def write_rows(rows: list[dict[str, Any]], columns: list[str], fmt: str, out: Path | None) -> None:
    """Write rows in ``fmt``; Parquet needs a file."""
    if fmt == "parquet":
        if out is None:
            raise SystemExit("--format parquet needs --out FILE")
        table = pa.Table.from_pylist(
            [{c: (orjson.dumps(r[c]).decode() if isinstance(r[c], dict | list) else r[c]) for c in columns} for r in rows]
        )
        pq.write_table(table, out)
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(r[c]) for c in columns] for r in rows)
        data = buf.getvalue().encode()
    elif fmt == "json":
        data = orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n"
    else:
        data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        out.write_bytes(data)
