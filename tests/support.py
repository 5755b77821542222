"""Test support importable from any test module (``from support import live_server``)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
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


def hl7_variants(path: Path, n: int, seed: int,
                 edit: Callable[[list[str], random.Random], None] | None = None) -> list[str]:
    """``n`` copies of an ER7 fixture with new control ids (MSH-10), message times (MSH-7), patient ids
    (PID-3) and names (PID-5); ``edit(fields, rng)`` changes each segment's fields further."""
    rng = random.Random(seed)
    base = path.read_text().replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    out = []
    for i in range(n):
        segs = []
        for seg in base.split("\r"):
            f = seg.split("|")
            if f[0] == "MSH":
                f[9] = f"{f[9]}-{i}"
                f[6] = f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 23):02d}0000"
            elif f[0] == "PID" and len(f) > 5:
                f[3] = f"P{seed}{i:05d}" + f[3][f[3].find("^"):] if "^" in f[3] else f"P{i}"
                f[5] = f"Name{rng.randint(0, 10**6)}" + f[5][f[5].find("^"):] if "^" in f[5] else f[5]
            if edit is not None:
                edit(f, rng)
            segs.append("|".join(f))
        out.append("\r".join(segs) + "\r")
    return out


def forget_mappings() -> None:
    """Clear every memo, plan, template and grouping recipe of the v2 mapper, and what the parser
    remembers of headers: what it maps next, it maps as a process that has seen nothing (the
    reference for its fast paths)."""
    from ingest.hl7v2 import er7, structure
    from mapping.v2 import forget

    forget()
    er7.forget()
    structure._RECIPES.clear()


def mapped_json(result: object) -> list[object]:
    """What a mapping result holds, for equality: resources, notes, patient id."""
    return [result.resources, result.notes, result.patient_id]


def warm_then_results(texts: list[str], results: list[tuple[str, str]]) -> tuple[str, list[object]]:
    """Map ``texts`` from a cold mapper, then the last of them with its first OBX segments' OBX-2 and
    OBX-5 set to ``results``, twice (the second time warm): (that message, its :func:`mapped_json`)."""
    from ingest.hl7v2.convert import map_message

    forget_mappings()
    for text in texts:
        map_message(text)
    segs = texts[-1].split("\r")
    obx = [i for i, seg in enumerate(segs) if seg.startswith("OBX|")]
    for i, (vtype, value) in zip(obx, results, strict=False):
        f = segs[i].split("|")
        f[2], f[5] = vtype, value
        segs[i] = "|".join(f)
    text = "\r".join(segs)
    map_message(text)
    return text, mapped_json(map_message(text))
