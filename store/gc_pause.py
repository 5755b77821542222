"""Pausing Python's cyclic garbage collector while a bulk write allocates.

A bulk transaction creates a few objects per resource (results, map entries, Arrow inputs) and
none of them in reference cycles, so reference counting frees them all; the cyclic collector only
walks them. Its full passes walk every tracked object of the process, the map of current versions
included (one entry per stored resource), and cost the writer ~4 µs per resource on a 100,000-resource
import (docs/benchmarks/ingest.md). Paused, the collector resumes where it left off afterwards.

The collector is the process's, and a bulk import pauses it from two threads at once (the one
preparing chunks, the one writing them): pauses are counted, and the collector resumes when the last
one ends, if it ran before the first.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pauses = 0
_resume = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the body with the cyclic collector disabled (re-enabled after the last pause ends, if it was
    enabled before the first)."""
    global _pauses, _resume
    with _lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()
