"""SQL-on-FHIR views over the store, run on demand or materialized as tables kept fresh by the writer.

A materialized view is a DuckDB table ``view_<name>`` with one extra leading
column ``fhirtwin_rid`` (the resource key), so that each committed write batch
refreshes only the rows of the resources it touched: delete their rows, run the
compiled view over just those resources, insert. Readers never see a view
behind the data it is computed from for longer than the write itself.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from mapping.fhirpath.values import sql_string
from mapping.viewdef import CompiledView, compile_view, run_compiled
from store.store import Store, WriteResult

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_REGISTRY_DDL = "CREATE TABLE IF NOT EXISTS view_registry (name VARCHAR PRIMARY KEY, resource VARCHAR, definition JSON)"


def _keyed(view: dict[str, Any]) -> dict[str, Any]:
    """The view with a leading ``fhirtwin_rid`` column holding each row's resource key."""
    keyed = dict(view)
    keyed["select"] = [{"column": [{"name": "fhirtwin_rid", "path": "getResourceKey()"}]}, *view.get("select", [])]
    return keyed


def run(store: Store, view: dict[str, Any], *, as_of_sql: str | None = None) -> tuple[CompiledView, list[dict]]:
    """Compile and run a view over the current resources (or a point-in-time relation)."""
    compiled = compile_view(view, as_of_sql or "resources")
    return compiled, run_compiled(store.cursor(), compiled)


class MaterializedViews:
    """Named views stored as tables and refreshed incrementally after every write."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.write_transaction() as con:
            con.execute(_REGISTRY_DDL)
        self._views: dict[str, dict[str, Any]] = {
            name: orjson.loads(defn)
            for name, defn in store.cursor().execute("SELECT name, definition FROM view_registry").fetchall()
        }
        store.on_commit(self._refresh_changed)

    @staticmethod
    def table(name: str) -> str:
        """The table holding a materialized view."""
        return f"view_{name}"

    def materialize(self, name: str, view: dict[str, Any]) -> int:
        """Create (or replace) the table of a view from all current data; returns its row count."""
        if not _NAME.match(name):
            raise ValueError(f"view name {name!r} must be letters, digits and _ (starting with a letter)")
        compiled = compile_view(_keyed(view), "resources")
        with self.store.write_transaction() as con:
            con.execute(f"CREATE OR REPLACE TABLE {self.table(name)} AS {compiled.sql}")
            con.execute(
                "INSERT OR REPLACE INTO view_registry VALUES (?, ?, ?)",
                [name, compiled.resource, orjson.dumps(view).decode()],
            )
            rows = con.execute(f"SELECT count(*) FROM {self.table(name)}").fetchone()[0]
        self._views[name] = view
        return rows

    def names(self) -> list[str]:
        """Materialized view names."""
        return sorted(self._views)

    def _refresh_changed(self, results: list[WriteResult]) -> None:
        by_type: dict[str, list[str]] = {}
        for r in results:
            by_type.setdefault(r.resource_type, []).append(r.id)
        for name, view in self._views.items():
            ids = by_type.get(view.get("resource", ""))
            if not ids:
                continue
            id_list = ", ".join(sql_string(i) for i in ids)
            source = (
                f"(SELECT * FROM resources WHERE resource_type = {sql_string(view['resource'])} AND id IN ({id_list}))"
            )
            compiled = compile_view(_keyed(view), source)
            with self.store.write_transaction() as con:
                con.execute(f"DELETE FROM {self.table(name)} WHERE fhirtwin_rid IN ({id_list})")
                con.execute(f"INSERT INTO {self.table(name)} {compiled.sql}")
