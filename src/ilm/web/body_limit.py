"""A bound on request bodies under /api, checked before anyone reads them.

FastAPI reads a JSON or form body before it runs a route's dependencies, so
without a bound a client without a token could make the server hold a body of
any size in memory before its 401. Bodies under ``/api/`` are refused with 413
past ``API_BODY_LIMIT``: at once when Content-Length says so, else as soon as
the streamed body passes it. DICOMweb (STOW-RS) has its own bound
(``[http] max_request_bytes``), checked as the body streams in.
"""

from __future__ import annotations

import json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiBodyLimit", "API_BODY_LIMIT"]

# Policies are kilobytes, a peer's exported plan of 100,000 studies about 15 MB.
API_BODY_LIMIT = 64 * 1024 * 1024


class _TooLarge(Exception):
    pass


class ApiBodyLimit:
    """ASGI middleware: 413 for a body under /api/ larger than ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int = API_BODY_LIMIT) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body over the limit of {self.limit} bytes for /api "
                                     "(compare a larger plan with 'ilm plan --compare')"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/api/"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        over = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge()  # the app's answer to it (FastAPI: 400) is replaced by the 413
            return message

        async def watched(message: Message) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            pass
        if over:
            await self._refuse(send)
