"""The server behind ``personachat web``: textual-serve, with the checks a local web app needs.

textual-serve accepts the app's WebSocket from any page, and browsers let any site open a
WebSocket to ``ws://127.0.0.1:PORT``: a page in another tab could type prompts into the app
(cross-site WebSocket hijacking). So the WebSocket is accepted only from a page this server served:
its ``Origin`` must be the address the browser used to reach us (the ``Host``). Served on loopback,
the ``Host`` must also name this machine (``127.0.0.1``, ``localhost``, ``[::1]``), which stops a
site whose name resolves to 127.0.0.1 (DNS rebinding). The page connects back to the address it was
loaded from, so ``localhost`` and ``127.0.0.1`` both work, and so does a server on ``0.0.0.0``.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import web
from textual_serve.server import Server

log = logging.getLogger("personachat.web")


class GuardedServer(Server):
    """textual-serve's server, refusing connections that do not come from its own page."""

    def __init__(self, command: str, host: str, port: int, *, title: str, loopback: bool) -> None:
        super().__init__(command, host=host, port=port, title=title)
        self.loopback = loopback  # served on this machine only: the Host must name it too

    def refusal(self, request: web.Request, *, websocket: bool) -> str | None:
        """Why ``request`` is refused, or None."""
        host = request.host
        name = urlsplit(f"//{host}").hostname or ""
        if self.loopback and name not in ("localhost", "::1") and not name.startswith("127."):
            return f"Host {host!r} is not this machine"
        origin = request.headers.get("Origin")
        if websocket and (origin is None or urlsplit(origin).netloc.lower() != host.lower()):
            return f"Origin {origin!r} is not this server ({host})"
        return None

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        reason = self.refusal(request, websocket=False)
        if reason:
            log.warning("refused %s: %s", request.path, reason)
            raise web.HTTPForbidden(text=f"personachat web: {reason}\n")
        # The page's WebSocket goes back to the address the browser used. textual-serve builds
        # the page from public_url before its first await, so setting it here is per request.
        self.public_url = f"{request.scheme}://{request.host}"
        response: web.StreamResponse = await super().handle_index(request)
        return response

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        reason = self.refusal(request, websocket=True)
        if reason:
            log.warning("refused a WebSocket: %s", reason)
            raise web.HTTPForbidden(text=f"personachat web: {reason}\n")
        return await super().handle_websocket(request)


def serve(command: str, host: str, port: int, *, title: str, loopback: bool) -> None:
    """Serve ``command`` (one process per browser tab) until Ctrl+C."""
    GuardedServer(command, host, port, title=title, loopback=loopback).serve()
