"""What the browser's server refuses before any route sees a request: oversized bodies and foreign hosts.

``BodyLimit`` reads at most ``max_bytes`` of a request body (whatever Content-Length claims) and
answers 413 beyond that, so a huge JSON body costs the server ``max_bytes`` of memory, not its size.
``HostAllowList`` answers 400 to a ``Host`` header that is not one of the allowed names: a page on
``evil.example`` whose DNS name is rebound to 127.0.0.1 can otherwise read the local API
(DNS rebinding); the browser sends that page's own name as ``Host``.
"""

from __future__ import annotations

from typing import Iterable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 64 * 1024  # a live-text or steering request is a few KB (4,000 characters at most)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """ASGI middleware: request bodies above ``max_bytes`` get 413 without being read further."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _error(413, f"request body over {self.max_bytes:,} bytes")(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await _error(413, f"request body over {self.max_bytes:,} bytes")(scope, receive, send)
                return
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that answers ``messages`` first, then defers to the real one (disconnects)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class HostAllowList:
    """ASGI middleware: requests whose ``Host`` (port aside) is not in ``hosts`` get 400."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str] = LOOPBACK_HOSTS):
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        name = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if name not in self.hosts:
            await _error(400, f"Host {host!r} is not allowed (this server answers to {', '.join(sorted(self.hosts))})")(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)
