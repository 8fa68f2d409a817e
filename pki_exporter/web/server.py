"""The exporter's own HTTP endpoints: /metrics, /, /healthz, /ready, /-/reload.

A stdlib ThreadingHTTPServer is enough: /metrics renders a few thousand lines from a
prepared snapshot, and each connection gets its own thread, so a slow scraper never
blocks another. TLS handshakes happen in the connection's thread, not the accept loop,
and TLS and basic auth come from the exporter-toolkit style web config (webconfig.py).
"""

from __future__ import annotations

import gzip
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from pki_exporter.metrics.collector import render, scrape
from pki_exporter.runtime import logs
from pki_exporter.web.toolkit.config import WebConfigProvider

log = logs.get("server")

CLIENT_TIMEOUT = 60.0
"""Seconds an idle or slow client may hold a connection thread."""


@dataclass
class Endpoints:
    """What the server serves; the CLI wires these to the running exporter."""

    registry: CollectorRegistry
    ready: Callable[[], bool]
    status_page: Callable[[], str]
    telemetry_path: str = "/metrics"
    reload: Callable[[], str | None] | None = None
    """Reloads the config; returns an error line, or None on success. None = lifecycle API off."""
    certificates: Callable[[str], tuple[int, bytes, str]] | None = None
    """The drill-down: query string -> (status, body, content type). None = not served."""


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], endpoints: Endpoints, web: WebConfigProvider
    ) -> None:
        self.endpoints = endpoints
        self.web = web
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CLIENT_TIMEOUT)
        if not self.web.tls_enabled:
            super().finish_request(request, client_address)
            return
        # The handshake runs here, in the connection's thread, never in the accept loop.
        connection = self.web.accept_tls(request, timeout=CLIENT_TIMEOUT)
        if connection is None:
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logs.event(log, logging.DEBUG, "connection error", client=str(client_address[0]))


class _Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"
    server_version = "pki-exporter"
    sys_version = ""
    # Headers and body leave in two writes: with Nagle's algorithm the body would wait for
    # the client's delayed ACK of the headers (40 ms on Linux) on every kept-alive scrape.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        logs.event(
            log, logging.DEBUG, "http request", client=self.client_address[0], line=format % args
        )

    # -- plumbing ----------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in self.server.web.response_headers().items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def version_string(self) -> str:
        return self.server_version  # no trailing space for the empty sys_version

    def _authorized(self) -> bool:
        # rate_limit first, as in the toolkit; /healthz is left out, as it is of auth
        if not self.server.web.allow_request():
            self._send(HTTPStatus.TOO_MANY_REQUESTS, b"Too Many Requests\n")
            return False
        if self.server.web.authorize(self.headers.get("Authorization")):
            return True
        self._send(
            HTTPStatus.UNAUTHORIZED,
            b"Unauthorized\n",
            headers={"WWW-Authenticate": 'Basic realm="pki-exporter"'},
        )
        return False

    def _route(self) -> None:
        path = urlsplit(self.path).path
        endpoints = self.server.endpoints
        if path == "/healthz":
            # Liveness says nothing but "the process answers": left open for probes.
            self._send(HTTPStatus.OK, b"ok\n")
            return
        if not self._authorized():
            return
        if path == endpoints.telemetry_path:
            self._metrics()
        elif path == "/":
            self._send(HTTPStatus.OK, endpoints.status_page().encode(), "text/html; charset=utf-8")
        elif path == "/certificates" and endpoints.certificates is not None:
            try:
                status, body, content_type = endpoints.certificates(urlsplit(self.path).query)
            except Exception:
                log.exception("rendering /certificates failed")
                status, body = HTTPStatus.INTERNAL_SERVER_ERROR, b"failed; see the exporter's log\n"
                content_type = "text/plain; charset=utf-8"
            self._send(status, body, content_type)
        elif path == "/ready":
            if endpoints.ready():
                self._send(HTTPStatus.OK, b"ready\n")
            else:
                self._send(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    b"not ready: not every CA has had a refresh attempt yet\n",
                )
        elif path == "/-/reload":
            self._send(
                HTTPStatus.METHOD_NOT_ALLOWED,
                b"Only POST or PUT requests allowed.\n",
                headers={"Allow": "POST, PUT"},
            )
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not found\n")

    def _metrics(self) -> None:
        with scrape():  # a refresh in progress gives way until the answer is sent
            self._scrape()

    def _scrape(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            # Rendered per family, with the unchanged families' text kept between scrapes.
            body = render(self.server.endpoints.registry, encoder, content_type)
        except Exception:
            log.exception("collecting metrics failed")
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                b"collecting metrics failed; see the exporter's log\n",
            )
            return
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(HTTPStatus.OK, body, content_type, headers)

    # -- methods -----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _discard_body(self) -> bool:
        """Read (and drop) a request body so that the kept-alive connection stays in step."""
        length = self.headers.get("Content-Length", "0") or "0"
        if not length.isdigit() or int(length) > 1 << 20:
            self.close_connection = True
            self._send(
                HTTPStatus.BAD_REQUEST, b"Bad Content-Length\n", headers={"Connection": "close"}
            )
            return False
        if int(length):
            self.rfile.read(int(length))
        return True

    def do_POST(self) -> None:
        if not self._discard_body():
            return
        path = urlsplit(self.path).path
        if path != "/-/reload":
            if self._authorized():
                self._send(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    b"Method not allowed\n",
                    headers={"Allow": "GET, HEAD"},
                )
            return
        if not self._authorized():
            return
        reload = self.server.endpoints.reload
        if reload is None:
            self._send(HTTPStatus.FORBIDDEN, b"Lifecycle API is not enabled.\n")
            return
        error = reload()
        if error is None:
            self._send(HTTPStatus.OK, b"config reloaded\n")
        else:
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"failed to reload config: {error}\n".encode()
            )

    do_PUT = do_POST


SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005).
A scrape takes the GIL back a dozen times (socket, /proc, gzip); while a refresh decodes
pages, each of those waits up to this long (docs/performance.md)."""


def serve(server: ExporterServer) -> threading.Thread:
    """Serve in a background thread (the main thread waits for signals)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="pki-http", daemon=True
    )
    thread.start()
    return thread
