"""``lczerolens serve``: the explorer as a local web page (the standard library's threading HTTP server).

It serves its own page, its two static files and JSON views of the source's positions and of positions reached
from them by legal moves; every other path is 404, a bad request 400 with the reason, and it goes on serving.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lczerolens.errors import LczeroLensError
from lczerolens.explorer.page import asset, served_page
from lczerolens.explorer.session import ExplorerSession

_TYPES = {"explorer.js": "text/javascript; charset=utf-8", "explorer.css": "text/css; charset=utf-8"}


def _handler(session: ExplorerSession) -> type[BaseHTTPRequestHandler]:
    page = served_page(f"lczerolens explorer: {session.title}").encode()
    meta = json.dumps(session.meta(), allow_nan=False).encode()
    # Fixed routes only: a path never reaches the file system, so no traversal can name another file.
    static = {f"/static/{name}": (asset(name).encode(), kind) for name, kind in _TYPES.items()}
    static["/"] = (page, "text/html; charset=utf-8")
    static["/index.html"] = static["/"]
    static["/api/meta"] = (meta, "application/json")

    class Handler(BaseHTTPRequestHandler):
        server_version = "lczerolens"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass  # quiet: the command prints its address once

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data, allow_nan=False).encode(), "application/json")

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            if parts.path in static:
                body, kind = static[parts.path]
                self._send(HTTPStatus.OK, body, kind)
                return
            if parts.path != "/api/view":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {parts.path}"})
                return
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            try:
                index = int(query.get("index", "0"))
            except ValueError:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"index must be a whole number, not {query['index']!r}"})
                return
            moves = [m for m in query.get("moves", "").split(",") if m]
            channel: int | None = None
            if query.get("channel"):
                try:
                    channel = int(query["channel"])
                except ValueError:
                    error = f"channel must be a whole number, not {query['channel']!r}"
                    self._json(HTTPStatus.BAD_REQUEST, {"error": error})
                    return
            try:
                view = session.view(
                    index,
                    moves,
                    query.get("target", "top"),
                    query.get("lens", session.default_lens),
                    layer=query.get("layer") or None,
                    channel=channel,
                    attention=query.get("attention") or None,
                    query=query.get("query") or None,
                )
            except (LczeroLensError, ValueError) as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": " ".join(str(exc).split())})
                return
            self._json(HTTPStatus.OK, view)

    return Handler


class ExplorerServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one :class:`ExplorerSession` (``daemon_threads``: exits cleanly)."""

    daemon_threads = True

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        return f"http://{host}:{port}/"

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, notebooks); ``shutdown()`` stops it."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


def make_server(session: ExplorerSession, host: str = "127.0.0.1", port: int = 8765) -> ExplorerServer:
    """An :class:`ExplorerServer` for ``session`` on ``host:port`` (port 0: any free port); not yet serving.

    Example
    -------
    >>> server = make_server(ExplorerSession(model, "game.pgn"), port=0)  # doctest: +SKIP
    >>> server.start(); print(server.url)  # doctest: +SKIP
    """
    return ExplorerServer((host, port), _handler(session))
