"""The cyclic collector pause around bulk writes and worker chunks."""

from __future__ import annotations

import gc

import pytest

from store.gc_pause import paused_gc


def test_paused_gc_disables_the_collector_and_restores_it_even_on_error() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():  # nested: the outer pause owns the re-enabling
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_paused_gc_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_pauses_of_two_threads_overlap_without_resuming_the_collector_early() -> None:
    """A bulk import pauses from its preparing thread and its writer thread: the collector stays paused
    until the last pause ends, whichever began first."""
    import threading

    started, release = threading.Event(), threading.Event()

    def other() -> None:
        with paused_gc():
            started.set()
            release.wait()

    thread = threading.Thread(target=other)
    with paused_gc():
        thread.start()
        started.wait()
    assert not gc.isenabled()  # the other thread's pause goes on
    release.set()
    thread.join()
    assert gc.isenabled()
