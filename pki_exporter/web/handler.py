"""One HTTP request, answered by a worker: routes, authentication, the answers' bytes.

The event loop (web/server.py) hands over a request whose head and body have both arrived
(in ``conn.buffer``); the handler never reads from or writes to the socket. Its answer is
collected in memory and given back to the loop, which sends it under the write deadline:
a client that reads slowly holds a socket and its answer, never a worker.
"""

from __future__ import annotations

import gzip
import io
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from pki_exporter.runtime import logs
from pki_exporter.runtime.turns import Turns

if TYPE_CHECKING:
    from pki_exporter.web.server import ExporterServer

log = logs.get("server")

MAX_QUERY = 4096
MAX_BODY = 4096
"""Bytes of a POST body (``/-/reload`` expects none; a few are read and dropped)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""No script, no external load, no framing: the pages are static HTML with one <style>."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""On every answer; `http_server_config.headers` of the web config override them."""
NO_STORE = {"Cache-Control": "no-store"}
"""On answers that may carry personal data (/certificates)."""
RESERVED_PATHS = frozenset({"/", "/healthz", "/ready", "/-/reload", "/certificates"})
"""The paths `RequestHandler._route` answers itself: ``--web.telemetry-path`` may be none of them."""


@dataclass
class Endpoints:
    """What the server serves; the CLI wires these to the running exporter."""

    registry: CollectorRegistry
    ready: Callable[[], bool]
    status_page: Callable[[], str]
    telemetry_path: str = "/metrics"
    reload: Callable[[], str | None] | None = None
    """Reloads the config; returns an error line, or None on success. None = lifecycle API off."""
    certificates: Callable[[str, str], tuple[int, bytes, str]] | None = None
    """The drill-down: (query string, Accept header) -> (status, body, content type)."""
    turns: Turns = field(default_factory=Turns)
    """The process's CPU turns: refresh work gives way while /metrics is answered."""
    before_scrape: Callable[[], None] | None = None
    """Runs first on each /metrics request, before refresh work gives way (a refresh on
    scrape must not wait for the scrape)."""


def head_end(buffer: bytes) -> int:
    """Index just past the blank line ending a request head, or -1 (for the loop)."""
    ends = [i + n for i, n in ((buffer.find(b"\r\n\r\n"), 4), (buffer.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else -1


def body_length(head: bytes) -> int:
    """Bytes of body to wait for before handing the request on.

    The Content-Length of a POST or PUT that the handler will read (at most ``MAX_BODY``,
    no Transfer-Encoding); 0 for everything else, which the handler answers (or refuses:
    411, 413, 400) without a body. The first Content-Length counts, as for the handler.
    """
    lines = head.split(b"\n")
    if lines[0].split(b" ", 1)[0] not in (b"POST", b"PUT"):
        return 0
    length = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if colon and name == b"transfer-encoding" and value:
            return 0
        if colon and name == b"content-length" and length is None:
            length = value
    if length is None or not length.isdigit() or len(length) > 12 or int(length) > MAX_BODY:
        return 0
    return int(length)


def error_bytes(status: HTTPStatus, line: str) -> bytes:
    """A whole one-line error answer that closes the connection (for the loop)."""
    body = f"{line}\n".encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in SECURITY_HEADERS.items())
        + "\r\n"
    )
    return head.encode() + body


class RequestHandler(BaseHTTPRequestHandler):
    """One request from ``data`` (its head and body, as the loop received them); the
    answer goes to ``answer``, for the loop to send."""

    server: ExporterServer
    protocol_version = "HTTP/1.1"
    server_version = "pki-exporter"
    sys_version = ""

    def __init__(
        self, data: bytes, sock: socket.socket, address: Any, server: ExporterServer
    ) -> None:
        self._data = data  # `sock` is never read from or written to here
        self.leftover = b""
        """What followed the request in ``data`` (a pipelined request), when kept alive."""
        self.answer = b""
        super().__init__(sock, address, server)

    def setup(self) -> None:
        self.rfile = io.BytesIO(self._data)
        self.wfile = io.BytesIO()

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        self.leftover = self.rfile.read() if not self.close_connection else b""
        assert isinstance(self.wfile, io.BytesIO)
        self.answer = self.wfile.getvalue()

    def log_message(self, format: str, *args: Any) -> None:
        logs.event(
            log, logging.DEBUG, "http request", client=self.client_address[0], line=format % args
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """One line of text, as every other answer here (the stdlib's is an HTML page)."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        headers = {"Connection": "close"}
        # A client's mistake is a 4xx, as Go's servers answer: an unknown method gets 405
        # (the stdlib says 501), an HTTP version other than 1.x gets 400 (it says 505).
        if status == HTTPStatus.NOT_IMPLEMENTED:
            status, message = HTTPStatus.METHOD_NOT_ALLOWED, "Method not allowed"
            headers["Allow"] = "GET, HEAD, POST, PUT"
        elif status == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            status = HTTPStatus.BAD_REQUEST
        self.close_connection = True
        # A request line too broken to name a version still gets an HTTP/1.1 status line.
        self.request_version = "HTTP/1.1"
        line = message or status.phrase
        self._send(status, f"{line}\n".encode(), headers=headers)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":  # no status line, no headers: refused
            self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 is not supported")
            return False
        return True

    # -- plumbing ----------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        merged = {name.lower(): (name, value) for name, value in SECURITY_HEADERS.items()}
        for name, value in (headers or {}).items():
            merged[name.lower()] = (name, value)
        for name, value in self.server.web.response_headers().items():
            merged[name.lower()] = (name, value)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in merged.values():
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

    def _no_body(self) -> bool:
        """GET and HEAD take no body: one with a body is refused (and the connection closed,
        as the body is left unread)."""
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") not in (
            "0",
            "",
        ):
            self.send_error(HTTPStatus.BAD_REQUEST, f"a {self.command} request takes no body")
            return False
        return True

    def _route(self) -> None:
        if not self._no_body():
            return
        parts = urlsplit(self.path)
        path = parts.path
        if len(parts.query) > MAX_QUERY:
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, f"query longer than {MAX_QUERY}")
            return
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
                status, body, content_type = endpoints.certificates(
                    parts.query, self.headers.get("Accept", "")
                )
            except Exception:
                log.exception("rendering /certificates failed")
                status, body = HTTPStatus.INTERNAL_SERVER_ERROR, b"failed; see the exporter's log\n"
                content_type = "text/plain; charset=utf-8"
            self._send(status, body, content_type, dict(NO_STORE))
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
        endpoints = self.server.endpoints
        if endpoints.before_scrape is not None:
            try:
                endpoints.before_scrape()
            except Exception:
                self._metrics_failed()
                return
        with endpoints.turns.scrape():  # a refresh in progress gives way until the answer is sent
            self._scrape()

    def _metrics_failed(self) -> None:
        """A bug of ours while collecting: logged with its traceback, a one-line 500."""
        log.exception("collecting metrics failed")
        self._send(
            HTTPStatus.INTERNAL_SERVER_ERROR, b"collecting metrics failed; see the exporter's log\n"
        )

    def _scrape(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            # Rendered per family, with the unchanged families' text kept between scrapes.
            body = self.server.render_cache.render(
                self.server.endpoints.registry, encoder, content_type
            )
        except Exception:
            self._metrics_failed()
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
        """Drop a small request body (already in the buffer) so that the kept-alive
        connection stays in step; refuse a chunked or large one."""
        if self.headers.get("Transfer-Encoding"):
            self.send_error(HTTPStatus.LENGTH_REQUIRED, "a body needs a Content-Length")
            return False
        length = self.headers.get("Content-Length", "0") or "0"
        if not length.isdigit() or len(length) > 12:
            self.send_error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            return False
        if int(length) > MAX_BODY:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY}")
            return False
        # The loop waited for the whole body (under the request's deadline) before handing
        # the request over: a body that falls short here can only be a disagreement on the
        # head, and the connection is closed rather than read on.
        wanted = int(length)
        if len(self.rfile.read(wanted)) < wanted:
            self.close_connection = True
            return False
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
