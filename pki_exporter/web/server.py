"""The exporter's own HTTP endpoints: /metrics, /, /certificates, /healthz, /ready, /-/reload.

Exporters are usually open on the network, so the server has to stay safe on its own
against idle, slow and hostile clients (docs/security.md, "Hostile and slow clients"):

- **No thread per connection.** One event loop (``selectors``) accepts connections, does
  the TLS handshakes without blocking, and reads request heads. A connection costs a
  socket and at most ``MAX_HEAD`` bytes of buffer until its whole request head has
  arrived; only then is it handed to one of ``WORKERS`` threads, which answer one request
  and give the connection back to the loop (keep-alive) or close it.
- **Bounded.** At most ``MAX_CONNECTIONS`` open connections: one more evicts the oldest
  one that has not yet sent a whole request. A request head must arrive within
  ``HEAD_TIMEOUT`` of its first byte (of the connection, for a new one), a kept-alive
  connection may idle ``IDLE_TIMEOUT``, and a worker waits at most ``IO_TIMEOUT`` for a
  body or for the client to take the answer: a trickling client (slowloris) holds
  nothing but its socket, and a worker never for long.
- **Caps.** Request line ``MAX_REQUEST_LINE`` (414), head ``MAX_HEAD`` (431), query
  ``MAX_QUERY`` (414); GET and HEAD take no body (400), a POST at most ``MAX_BODY`` bytes
  (413) and no chunked body (411). Every error is one line of text, never a traceback.

TLS and basic auth come from the exporter-toolkit style web config (web/toolkit); each
connection is wrapped with the context current at its accept, so rotated certificates
take effect without a restart.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gzip
import io
import logging
import resource
import selectors
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from pki_exporter.metrics.exposition import RenderCache
from pki_exporter.runtime import logs
from pki_exporter.runtime.turns import Turns
from pki_exporter.web.toolkit import WebConfigProvider, answer_plain_http

log = logs.get("server")

MAX_CONNECTIONS = 512
"""Open connections at most (fewer when the open-files limit is low: its soft limit less
64); the oldest one still sending its first request head makes room for a new one. Two
Prometheus servers and a few browsers need a dozen."""
WORKERS = 8
"""Threads answering requests whose head has arrived (scrapes, pages, reloads)."""
HEAD_TIMEOUT = 10.0
"""Seconds from a request's first byte (or a connection's accept) to the end of its head."""
IDLE_TIMEOUT = 120.0
"""Seconds a kept-alive connection may wait for its next request (Prometheus reuses its
connection from one scrape to the next; 2 minutes cover a 1-minute scrape interval)."""
IO_TIMEOUT = 10.0
"""Seconds a worker waits for a request body, or for the client to take the answer."""
MAX_REQUEST_LINE = 8192
MAX_HEAD = 16384
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
RESERVED_PATHS = frozenset({"/", "/healthz", "/ready", "/-/reload", "/certificates"})
"""The paths `_Handler._route` answers itself: ``--web.telemetry-path`` may be none of them."""
"""On answers that may carry personal data (/certificates)."""


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


class _Conn:
    """One client connection while the loop owns it."""

    __slots__ = ("accepted", "address", "buffer", "deadline", "served", "sock", "state")

    def __init__(self, sock: socket.socket, address: Any, now: float, state: str) -> None:
        self.sock = sock
        self.address = address
        self.buffer = b""
        self.accepted = now
        self.deadline = now + HEAD_TIMEOUT
        self.served = 0
        self.state = state  # "sniff" (TLS port, nothing read), "handshake", "http"


def _head_end(buffer: bytes) -> int:
    """Index just past the blank line ending a request head, or -1."""
    ends = [i + n for i, n in ((buffer.find(b"\r\n\r\n"), 4), (buffer.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else -1


def _error_bytes(status: HTTPStatus, line: str) -> bytes:
    body = f"{line}\n".encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in SECURITY_HEADERS.items())
        + "\r\n"
    )
    return head.encode() + body


class ExporterServer(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], endpoints: Endpoints, web: WebConfigProvider
    ) -> None:
        self.endpoints = endpoints
        self.web = web
        #: the text of unchanged families, kept from one scrape to the next
        self.render_cache = RenderCache()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        # Before binding: a failed bind calls server_close(), which closes these.
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}  # by id(), for the loop only
        self._returned: collections.deque[tuple[_Conn, bool]] = collections.deque()
        self._jobs: collections.deque[_Conn] = collections.deque()
        self._jobs_ready = threading.Semaphore(0)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        super().__init__(address, socketserver.BaseRequestHandler)  # unused: see _answer
        self.socket.setblocking(False)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._workers: list[threading.Thread] = []
        self._accept_paused_until = 0.0
        self._accept_warned = -60.0
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        #: MAX_CONNECTIONS, or fewer when the open-files limit would not leave room for
        #: Graph's connections, the config and TLS files beside them
        self.max_connections = (
            MAX_CONNECTIONS
            if soft == resource.RLIM_INFINITY
            else min(MAX_CONNECTIONS, max(16, soft - 64))
        )

    # -- the loop ----------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        self._stop.clear()
        for n in range(WORKERS):
            worker = threading.Thread(target=self._work, name=f"pki-http-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        selector = self._selector
        selector.register(self.socket, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_sweep = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for key, _ in selector.select(max(0.0, min(poll_interval, next_sweep - now))):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._take_back()
                    else:
                        self._readable(key.data)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + 0.25
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            for _ in self._workers:
                self._jobs_ready.release()  # an empty queue tells a worker to leave
            for key in list(selector.get_map().values()):
                selector.unregister(key.fileobj)
            self._workers.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe: the loop is waking anyway
            self._wake_w.send(b"x")

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: make room, else pause accepting
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._evict():
                    continue
                now = time.monotonic()
                if now >= self._accept_warned + 60:
                    self._accept_warned = now
                    logs.event(log, logging.WARNING, "cannot accept a connection", error=str(exc))
                self._selector.unregister(self.socket)
                self._accept_paused_until = now + 0.5
                return
            if len(self._conns) >= self.max_connections:
                self._evict()
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                # Headers and body leave in two writes: with Nagle's algorithm the body would
                # wait for the client's delayed ACK of the headers (40 ms) on every scrape.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(
                sock, address, time.monotonic(), "sniff" if self.web.tls_enabled else "http"
            )
            self._conns[id(conn)] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict(self) -> bool:
        """Close the oldest connection still waiting for its first request head (else the
        oldest waiting one): a flood of idle connections cannot lock a scraper out."""
        waiting = [c for c in self._conns.values() if not c.state.endswith("busy")]
        if not waiting:
            return False
        fresh = [c for c in waiting if c.served == 0]
        victim = min(fresh or waiting, key=lambda c: c.accepted)
        logs.event(log, logging.DEBUG, "connection limit reached; closing the oldest idle one")
        self._close(victim)
        return True

    def _sweep(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self.socket, selectors.EVENT_READ, "accept")
        for conn in [
            c for c in self._conns.values() if not c.state.endswith("busy") and c.deadline <= now
        ]:
            if conn.buffer and conn.state == "http":
                self._refuse(conn, HTTPStatus.REQUEST_TIMEOUT, "request head not received in time")
            else:
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self._conns.pop(id(conn), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _refuse(self, conn: _Conn, status: HTTPStatus, line: str) -> None:
        """Answer a request the loop will not hand on, without blocking, and close."""
        with contextlib.suppress(OSError, ValueError):
            conn.sock.send(_error_bytes(status, line))
        self._close(conn)

    def _readable(self, conn: _Conn) -> None:
        if conn.state == "sniff":
            try:
                first = conn.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                first = b""
            if not first:
                self._close(conn)
                return
            if b"A" <= first <= b"Z":  # plain HTTP to the TLS port: Go's 400, in a worker
                conn.state = "plain"
                self._dispatch(conn)
                return
            self._selector.unregister(conn.sock)
            try:
                conn.sock = self.web.ssl_context().wrap_socket(
                    conn.sock, server_side=True, do_handshake_on_connect=False
                )
            except (OSError, ValueError) as exc:
                logs.event(log, logging.DEBUG, "TLS wrap failed", error=str(exc))
                self._conns.pop(id(conn), None)
                conn.sock.close()
                return
            conn.state = "handshake"
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        if conn.state == "handshake":
            assert isinstance(conn.sock, ssl.SSLSocket)
            try:
                conn.sock.do_handshake()
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:  # the send buffer is full: wait until it drains
                self._selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
                return
            except (OSError, ValueError) as exc:
                logs.event(log, logging.DEBUG, "TLS handshake failed", error=str(exc))
                self._close(conn)
                return
            conn.state = "http"
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        self._read(conn)

    def _read(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (OSError, ValueError):
                self._close(conn)
                return
            if not data:
                self._close(conn)
                return
            if not conn.buffer:  # a request starts: its head must follow quickly
                conn.deadline = min(conn.deadline, time.monotonic() + HEAD_TIMEOUT)
            conn.buffer += data
            if len(conn.buffer) > MAX_HEAD or not isinstance(conn.sock, ssl.SSLSocket):
                break
            if not conn.sock.pending():
                break
        self._check_head(conn)

    def _check_head(self, conn: _Conn) -> None:
        buffer = conn.buffer
        if not buffer:
            return
        end = _head_end(buffer[: MAX_HEAD + 4])
        line_end = buffer.find(b"\n")
        if (line_end < 0 and len(buffer) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
            self._refuse(conn, HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
        elif end < 0 and len(buffer) > MAX_HEAD:
            self._refuse(conn, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        elif end >= 0:
            self._dispatch(conn)

    def _dispatch(self, conn: _Conn) -> None:
        self._selector.unregister(conn.sock)
        conn.state = "busy" if conn.state != "plain" else "plain-busy"
        self._jobs.append(conn)
        self._jobs_ready.release()

    def _take_back(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._returned:
            conn, keep = self._returned.popleft()
            if not keep or self._stop.is_set():
                self._close(conn)
                continue
            try:
                conn.sock.setblocking(False)
            except OSError:
                self._close(conn)
                continue
            conn.state = "http"
            now = time.monotonic()
            conn.deadline = now + (HEAD_TIMEOUT if conn.buffer else IDLE_TIMEOUT)
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.buffer:  # a pipelined request
                self._check_head(conn)
            elif isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                self._read(conn)

    # -- the workers -------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            self._jobs_ready.acquire()
            try:
                conn = self._jobs.popleft()
            except IndexError:
                return  # the loop has stopped
            keep = False
            try:
                if conn.state == "plain-busy":
                    answer_plain_http(conn.sock)
                else:
                    keep = self._answer(conn)
            except (OSError, ValueError) as exc:  # the client went away, timed out, or reset
                logs.event(log, logging.DEBUG, "connection error", error=str(exc))
            except Exception:  # a bug of ours, not a client's doing: worth a traceback
                log.exception("answering a request failed")
            self._returned.append((conn, keep))
            self._wake()

    def _answer(self, conn: _Conn) -> bool:
        """Answer the request at the head of the connection's buffer; True to keep it."""
        conn.sock.settimeout(IO_TIMEOUT)
        handler = _Handler(conn, self)
        conn.served += 1
        conn.buffer = handler.leftover
        return not handler.close_connection


class _Handler(BaseHTTPRequestHandler):
    """One request: its head is in the buffer, its body (if any) still on the socket."""

    server: ExporterServer
    protocol_version = "HTTP/1.1"
    server_version = "pki-exporter"
    sys_version = ""

    def __init__(self, conn: _Conn, server: ExporterServer) -> None:
        self._conn = conn
        self.leftover = b""
        super().__init__(conn.sock, conn.address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._conn.buffer)
        self.wfile = socketserver._SocketWriter(self.request)  # type: ignore[attr-defined]

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        self.leftover = self.rfile.read() if not self.close_connection else b""

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
        """Read (and drop) a small request body so that the kept-alive connection stays in
        step; refuse a chunked or large one."""
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
        wanted = int(length)
        got = len(self.rfile.read(wanted))
        while got < wanted:  # the rest is still on the socket
            chunk = self.connection.recv(wanted - got)
            if not chunk:
                self.close_connection = True
                return False
            got += len(chunk)
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


def serve(server: ExporterServer) -> threading.Thread:
    """Serve in a background thread (the main thread waits for signals)."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="pki-http", daemon=True
    )
    thread.start()
    return thread
