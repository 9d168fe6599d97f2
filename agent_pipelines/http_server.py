"""Serve an ASGI app with uvicorn from a background thread, for tests and embedded servers.

The socket is bound before the thread starts, so port 0 picks a free port that is known up
front, and `serve_in_thread` returns only once the server accepts connections: callers never
race the startup.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from functools import cache
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.auto import AutoHTTPProtocol

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 10.0


def uvicorn_config(app: ASGIApp, **kwargs: Any) -> uvicorn.Config:
    """The project's uvicorn defaults: quiet, no lifespan, the fastest loop and parser installed."""
    # loop/http "auto" pick uvloop and httptools when installed, asyncio and h11 otherwise.
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "loop": "auto",
        "http": "auto",
        "backlog": 4096,
    }
    return uvicorn.Config(app, **{**options, **kwargs})


class HeaderDeadline:
    """Mixed into uvicorn's HTTP protocol: a connection whose request headers have not all
    arrived `header_timeout_s` after it opened (or after its previous response) is closed.

    uvicorn has no such timeout, so a client trickling one header byte at a time (slowloris)
    would hold a connection for ever; enough of them exhaust the server's connections.
    """

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        # A new request replaces `cycle`; the same cycle at the deadline means no new headers.
        cycle = getattr(self, "cycle", None)
        loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[attr-defined]
        self._header_deadline = loop.call_later(self.header_timeout_s, self._headers_overdue, cycle)

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _headers_overdue(self, cycle: object) -> None:
        self._header_deadline = None
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        if getattr(self, "cycle", None) is cycle and not transport.is_closing():
            logger.warning("closed a connection whose request headers took over %ss", self.header_timeout_s)
            transport.close()


@cache
def guarded_http_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's fastest installed HTTP protocol, with a deadline for request headers."""
    return type(
        f"Guarded{AutoHTTPProtocol.__name__}",
        (HeaderDeadline, AutoHTTPProtocol),
        {"header_timeout_s": header_timeout_s},
    )


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RunningServer:
    """A uvicorn server serving from a daemon thread; a context manager that stops it."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port
        self.url = url_for(host, port)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop at once: requests still in flight are cut off."""
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            logger.warning("server on %s did not stop within %ss", self.url, timeout_s)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_in_thread(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, name: str = "http-server", **config: Any
) -> RunningServer:
    """Serve `app` from a daemon thread; returns once it accepts connections.

    `config` overrides `uvicorn_config`'s defaults. The host process's logging configuration is
    left alone (uvicorn only sets its loggers' levels).
    """
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, **{"log_config": None, **config}))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"{name}-{bound_port}", daemon=True
    )
    thread.start()
    running = RunningServer(server, thread, host, bound_port)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            running.stop(timeout_s=1.0)
            sock.close()
            raise RuntimeError(f"{name} did not start on {running.url}")
        time.sleep(0.005)
    return running
