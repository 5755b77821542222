"""Cross-origin access, so browser apps (SMART apps launched from another origin) can call the API.

Any origin may call: the server has no cookies or sessions to protect, and no authorization server
(see docs/fhir_server.md on SMART). Preflights answer for the FHIR methods and the request headers FHIR
clients send; the response headers clients read (versions, locations) are exposed to scripts.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
REQUEST_HEADERS = (
    "Authorization", "Content-Type", "Accept", "If-Match", "If-None-Match", "If-None-Exist",
    "If-Modified-Since", "Prefer", "X-Requested-With", "Cache-Control",
)
EXPOSED_HEADERS = ("ETag", "Location", "Last-Modified", "Content-Location")
PREFLIGHT_CACHE_S = 600


def add_cors(app: FastAPI) -> None:
    """Answer CORS preflights and add ``Access-Control-*`` headers to every response the app builds."""
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=METHODS, allow_headers=REQUEST_HEADERS,
                       expose_headers=EXPOSED_HEADERS, max_age=PREFLIGHT_CACHE_S)
