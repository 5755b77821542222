"""Point-in-time feature reads for the twins, as SQL over the store.

Every read takes an ``as_of`` instant: only resource versions written by then
are visible and only measurements taken by then are returned, so a twin fitted
"as of T" can never see the future.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from store.store import Store

_SERIES_SQL = """
WITH obs AS (
    SELECT id, patient_id, json FROM {rel}
    WHERE resource_type = 'Observation' AND patient_id IS NOT NULL
      AND coalesce(json ->> '$.status', 'final') NOT IN ('entered-in-error', 'cancelled', 'preliminary')
),
direct AS (
    SELECT patient_id, id, json ->> '$.effectiveDateTime' AS eff,
           TRY_CAST(json ->> '$.valueQuantity.value' AS DOUBLE) AS value
    FROM obs WHERE list_has_any(json_extract_string(json, '$.code.coding[*].code'), $codes)
),
comp AS (
    SELECT patient_id, id, json ->> '$.effectiveDateTime' AS eff,
           TRY_CAST(c ->> '$.valueQuantity.value' AS DOUBLE) AS value
    FROM (SELECT patient_id, id, json, unnest(json_extract(json, '$.component[*]')) AS c FROM obs)
    WHERE list_has_any(json_extract_string(c, '$.code.coding[*].code'), $codes)
)
SELECT patient_id, id, TRY_CAST(eff AS TIMESTAMPTZ) AS t, value FROM (
    SELECT * FROM direct UNION ALL SELECT * FROM comp
)
WHERE value IS NOT NULL AND TRY_CAST(eff AS TIMESTAMPTZ) <= $as_of
ORDER BY patient_id, t, id
"""


@dataclass(frozen=True)
class Series:
    """One patient's measurements of one quantity, in time order."""

    patient_id: str
    times: list[datetime]
    values: np.ndarray
    observation_ids: list[str]

    def years(self) -> np.ndarray:
        """Measurement times in years since the Unix epoch (for trend models)."""
        return np.array([t.timestamp() / (365.25 * 86400.0) for t in self.times])


def observation_series(store: Store, codes: Sequence[str], as_of: datetime) -> dict[str, Series]:
    """Quantity observations (top-level or component) with one of ``codes``, per patient, as known at ``as_of``."""
    sql = _SERIES_SQL.format(rel=store.as_of_sql(as_of))
    rows = store.cursor().execute(sql, {"codes": list(codes), "as_of": as_of}).fetchall()
    grouped: dict[str, tuple[list[datetime], list[float], list[str]]] = {}
    for pid, oid, t, value in rows:
        times, values, ids = grouped.setdefault(pid, ([], [], []))
        times.append(t)
        values.append(value)
        ids.append(oid)
    return {pid: Series(pid, t, np.array(v, dtype=float), ids) for pid, (t, v, ids) in grouped.items()}
