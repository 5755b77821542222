"""Unexpected exceptions as an OperationOutcome, inside the CORS layer.

Starlette turns an exception no handler takes into a 500 in its outermost middleware, outside
every middleware the app adds: such a response carries no ``Access-Control-Allow-Origin``, so a
browser app sees a network error instead of the server's answer. This middleware sits inside
the CORS one and answers those exceptions itself (logged with their traceback for the operator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.responses import FHIRError, OutputFormat, error_response

log = logging.getLogger(__name__)


class InternalErrors:
    """ASGI middleware: an exception raised before the response started becomes a 500 OperationOutcome
    in the format ``fmt_of(request scope)`` names."""

    def __init__(self, app: ASGIApp, fmt_of: Callable[[Scope], OutputFormat]) -> None:
        self.app = app
        self.fmt_of = fmt_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # the client already has a status line: nothing sensible can follow
                raise
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            response = error_response(FHIRError(500, f"internal error: {type(exc).__name__}", code="exception"),
                                      self.fmt_of(scope))
            await response(scope, receive, send)
