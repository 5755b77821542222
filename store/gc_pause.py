"""Pausing Python's cyclic garbage collector while a bulk write allocates.

A bulk transaction creates a few objects per resource (results, map entries, Arrow inputs) and
none of them in reference cycles, so reference counting frees them all; the cyclic collector only
walks them. Its full passes walk every tracked object of the process, the map of current versions
included (one entry per stored resource), and cost the writer ~4 µs per resource on a 100,000-resource
import (docs/benchmarks/ingest.md). Paused, the collector resumes where it left off afterwards.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the body with the cyclic collector disabled (re-enabled after it, if it was enabled before)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
