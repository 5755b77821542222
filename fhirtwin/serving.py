"""Run the FHIR API (uvicorn) and the MLLP listener in one process over one store.

One process owns the DuckDB file (it is the single writer), so the HTTP API and
the HL7v2 listener share an event loop and a Store, and a background thread refits
twins whose patients received new data; Ctrl-C or SIGTERM stops uvicorn, then the
listener drains in-flight messages before the store closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from fhir_server.app import create_app
from ingest.hl7v2.listener import start_mllp_server
from ingest.hl7v2.processor import default_mapper
from ingest.hl7v2.timezone import DEFAULT_TIMEZONE
from store.store import Store
from twin.service import TwinRefresher


async def _serve(store: Store, host: str, port: int, mllp_port: int, mllp_options: dict[str, Any],
                 log_level: str) -> None:
    config = uvicorn.Config(create_app(store), host=host, port=port, log_level=log_level, access_log=False)
    server = uvicorn.Server(config)
    mllp = await start_mllp_server(store, host, mllp_port, **mllp_options) if mllp_port else None
    refresher = TwinRefresher(store)
    refresher.start()
    try:
        await server.serve()
    finally:
        if mllp is not None:
            await mllp.shutdown()
        refresher.stop()


def serve(
    store: Store, host: str, port: int, *, mllp_port: int = 0, mllp_ack_after: str = "processed",
    mllp_map_timeout_s: float = 60.0, hl7_timezone: str = DEFAULT_TIMEZONE, log_level: str = "warning",
) -> None:
    """Serve FHIR on ``port`` (and MLLP on ``mllp_port`` unless 0) until interrupted.

    ``mllp_ack_after`` is the listener's original-mode ACK policy (``processed`` or ``commit``);
    ``mllp_map_timeout_s`` how long a batch's mapping may take before it is isolated message by message;
    ``hl7_timezone`` the zone of senders' times that carry no offset (``ingest.hl7v2.timezone``).
    """
    options = {"ack_after": mllp_ack_after, "map_timeout_s": mllp_map_timeout_s,
               "mapper": default_mapper(hl7_timezone)}
    asyncio.run(_serve(store, host, port, mllp_port, options, log_level))
