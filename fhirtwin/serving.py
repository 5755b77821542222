"""Run the FHIR API (uvicorn) over a store."""

from __future__ import annotations

import uvicorn

from fhir_server.app import create_app
from store.store import Store


def serve(store: Store, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve the FHIR API until interrupted (Ctrl-C), then close the store cleanly."""
    app = create_app(store)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    uvicorn.Server(config).run()
