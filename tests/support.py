"""Test support importable from any test module (``from support import live_server``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(app: object) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread; yields the FHIR base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        server.should_exit = True
        thread.join(timeout=10)




FHIRTWIN = [sys.executable, "-m", "fhirtwin.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``fhirtwin`` command line and capture what it prints."""
    return subprocess.run(
        [*FHIRTWIN, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def wait_for_serve(proc: subprocess.Popen[str], http_port: int, mllp_port: int | None = None, timeout: float = 40) -> None:
    """Block until a ``fhirtwin serve`` subprocess answers HTTP (and accepts MLLP connections)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if mllp_port:
                socket.create_connection(("127.0.0.1", mllp_port), timeout=1).close()
            httpx.get(f"http://127.0.0.1:{http_port}/fhir/metadata", timeout=2)
            return
        except (OSError, httpx.TransportError):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}") from None
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start") from None
            time.sleep(0.1)


def map_v2_fixture(name: str) -> object:
    """Map ``fixtures/hl7v2/<name>`` to FHIR, checking it mapped and that every resource loads into the
    strict fhirclient R4 models."""
    from fhirclient.models.fhirelementfactory import FHIRElementFactory

    from ingest.hl7v2.convert import map_message

    result = map_message((FIXTURES / "hl7v2" / name).read_bytes())
    assert result.mapped, result.notes
    for res in result.resources:
        FHIRElementFactory.instantiate(res["resourceType"], res)
    return result


def hanging_mapper(msg: object, hang_s: float) -> object:
    """The real v2 mapper, made to hang for ``hang_s`` on MRN HANG and to end its process on MRN CRASH
    (fault injection). Module-level, so mapping worker processes can import it."""
    from ingest.hl7v2.processor import map_v2

    if msg.segment("PID").get(3) == "HANG":  # type: ignore[attr-defined]
        time.sleep(hang_s)
    if msg.segment("PID").get(3) == "CRASH":  # type: ignore[attr-defined]
        os._exit(3)  # a worker process dying under it (a segfault, the OOM killer)
    return map_v2(msg)  # type: ignore[arg-type]
