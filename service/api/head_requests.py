"""HEAD for every GET endpoint, as RFC 9110 expects of a server and as monitors probe.

FastAPI registers a route for exactly the methods it is given (Starlette's own routes add HEAD
to GET). A HEAD request is handed to the app as a GET; the server (uvicorn) still knows the
request was a HEAD and sends the headers only.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}  # a copy: the server's own scope stays HEAD
        await self.app(scope, receive, send)
