"""The writer's map of current versions, bounded by a memory budget.

Reads by id, conditional writes and replays compare with the current version of a resource;
a DuckDB point lookup costs ~0.5 ms, a dict lookup ~50 ns. So the store keeps the current
versions (serialized JSON, version, content hash, lastUpdated) in memory, written through after
each commit. Memory follows the budget, not the database: while every current version fits,
the map is *complete* (a miss means "no such resource", as fast as a hit); once it would
outgrow the budget, the versions written longest ago are dropped and a miss reads the row from
``resources_current`` (one query for a whole batch of keys). An import of a file larger than
memory thus keeps the resources it writes last, and the process does not grow with the file.

Only the writer (under the store's write lock) adds or drops entries; readers look up, on other
threads, without a lock. So an entry is replaced by one assignment (never removed and added
again), the order of writes is kept apart (an ``OrderedDict`` of keys only the writer touches),
and the map says it is incomplete before it drops anything: a reader never takes an existing
resource for absent. A miss is answered from the database and not added: a reader's row could be
older than a version the writer commits meanwhile, and the map must never go back in time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

Key = tuple[str, str]

ENTRY_OVERHEAD_BYTES = 500
"""Memory of one entry besides its JSON: key tuple, record, hash string, timestamp and dict slot (~310 bytes
by tracemalloc), a UUID id string (~85) and its place in the order of writes (~105)."""
EVICT_TO = 0.9
"""After an eviction the map holds at most this share of its budget (evictions come in batches)."""


@dataclass(slots=True)
class Current:
    """What the map holds for the current version of one resource."""

    version_id: int
    content_hash: str
    last_updated: datetime
    deleted: bool
    json: bytes | None


def entry_bytes(cur: Current) -> int:
    """The memory an entry is counted for."""
    return ENTRY_OVERHEAD_BYTES + (len(cur.json) if cur.json is not None else 0)


class CurrentCache:
    """Current versions by ``(type, id)``, at most ``budget_bytes`` of them (see the module docstring).

    ``load(keys)`` reads the current rows of ``keys`` from the database (absent keys are left out).
    """

    def __init__(self, budget_bytes: int, load: Callable[[list[Key]], dict[Key, Current]]) -> None:
        self.budget_bytes = budget_bytes
        self.complete = True
        self._map: dict[Key, Current] = {}
        self._written: OrderedDict[Key, None] = OrderedDict()
        """The keys, written longest ago first (the writer's alone)."""
        self._bytes = 0
        self._load = load

    def __len__(self) -> int:
        return len(self._map)

    @property
    def held_bytes(self) -> int:
        """The memory the entries are counted for."""
        return self._bytes

    def holds(self, key: Key) -> bool:
        """Whether :meth:`get` answers ``key`` without asking the database (a check for event loops)."""
        return self.complete or key in self._map

    def get(self, key: Key) -> Current | None:
        cur = self._map.get(key)
        if cur is not None or self.complete:
            return cur
        return self._load([key]).get(key)

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Current]:
        """The current versions of ``keys`` that exist (one database query for all misses)."""
        held = self._map
        found: dict[Key, Current] = {}
        missing: list[Key] = []
        for key in keys:
            cur = held.get(key)
            if cur is not None:
                found[key] = cur
            elif not self.complete:
                missing.append(key)
        if missing:
            found.update(self._load(missing))
        return found

    def put(self, key: Key, cur: Current) -> None:
        """Record a committed version (writer only)."""
        self.put_many(((key, cur),))

    def put_many(self, entries: Iterable[tuple[Key, Current]]) -> None:
        """Record committed versions (writer only), in one loop: a bulk commit has a hundred thousand
        (the map may exceed its budget by one call's entries before it evicts)."""
        held, written = self._map, self._written
        added = 0
        for key, cur in entries:
            old = held.get(key)
            held[key] = cur  # one assignment: readers see the old version or the new one
            if old is not None:
                added -= entry_bytes(old)
                written.move_to_end(key)
            else:
                written[key] = None
            added += entry_bytes(cur)
        self._bytes += added
        if self._bytes > self.budget_bytes:
            self._evict()

    def fill(self, entries: Iterable[tuple[Key, Current]], complete: bool) -> None:
        """Start from ``entries`` (oldest first), e.g. the database's current rows at start: one at a
        time, so a database larger than the budget is never held whole."""
        for entry in entries:
            self.put_many((entry,))
        self.complete = self.complete and complete

    def _evict(self) -> None:
        """Drop the entries written longest ago until the map holds ``EVICT_TO`` of its budget."""
        self.complete = False  # first: from now on a miss is read from the database
        held, written = self._map, self._written
        over = self._bytes - self.budget_bytes * EVICT_TO
        while over > 0 and written:
            key, _ = written.popitem(last=False)
            size = entry_bytes(held.pop(key))
            self._bytes -= size
            over -= size
