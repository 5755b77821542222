"""Running a compiled view on a DuckDB connection and returning plain Python rows."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from mapping.viewdef.compile import CompiledView, compile_view


def _decode(value: Any, is_json: bool) -> Any:
    if not is_json or value is None:
        return value
    if isinstance(value, list):
        return [None if v is None else json.loads(v) for v in value]
    return json.loads(value)


def run_compiled(con: duckdb.DuckDBPyConnection, compiled: CompiledView) -> list[dict[str, Any]]:
    """Execute ``compiled`` and return one dict per row, JSON columns decoded to Python objects."""
    rows = con.execute(compiled.sql).fetchall()
    cols = compiled.columns
    return [{c.name: _decode(v, c.is_json) for c, v in zip(cols, row, strict=True)} for row in rows]


def run_view(con: duckdb.DuckDBPyConnection, view: dict[str, Any], source: str = "resources") -> list[dict[str, Any]]:
    """Compile ``view`` against ``source`` and run it (see ``compile_view`` for the source contract)."""
    return run_compiled(con, compile_view(view, source))
