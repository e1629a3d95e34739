"""A WSGI app served on a real port in a background thread.

The emulators are real HTTP servers so that the code under test goes through its whole
network stack (``requests``, connection pools, timeouts), exactly as in production.
"""

from __future__ import annotations

import ssl
import threading
import typing as t

from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server

if t.TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType

    from _typeshed.wsgi import WSGIApplication


class ThreadedServer:
    """Serve ``app`` on ``host:port`` (``port=0`` picks a free port) in a daemon thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        app: WSGIApplication,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._app = app
        self.host = host
        self._ssl_context = ssl_context
        self._requested_port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not running; call start() first")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (``https`` with TLS; no trailing slash)."""
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        server = make_server(
            self.host,
            self._requested_port,
            self._app,
            threaded=True,
            ssl_context=self._ssl_context,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self._app).__name__}-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
