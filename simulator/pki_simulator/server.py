"""The HTTPS transport: a threading HTTP/1.1 server with keep-alive on loopback.

(Without an SSL context it speaks plain HTTP: the IMDS listener, as on a real VM.)

The TLS handshake happens in the connection's own thread, never in the accept loop, so a
client that stalls mid-handshake cannot hold up everyone else. A request arrives when its
request line is read (``Request.arrival``, the log's ``monotonic``, the order Graph's
limits count in); it also carries when the kernel received it (``Request.received``, the
log's ``received``, from the socket's ``TCP_INFO``): a connection's thread starting, its
TLS handshake and the process waiting for a core come between the two, 0.14 s at the 90th
percentile and 0.32 s at the 99th for a connection's first request in a loaded test
session, enough for a test of the exporter's backoff to see a retry too soon. A
connection's first request also carries when the connection was opened
(``Request.opened``, the log's ``opened``: its ClientHello reached the kernel), since
the TLS handshake, and so that request's ``received``, waits for the connection's thread. Response
bodies are sent as
ready bytes with a Content-Length; the only unusual path is the "reset" fault, which
sends part of a body and then aborts the TCP connection with an RST.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from pki_simulator.messages import Request, Response, graph_error
from pki_simulator.render import gzip_bytes

log = logging.getLogger("pki_simulator")

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
MAX_BODY = 1 << 20
_COALESCE = 64 * 1024


_LAST_DATA_RECV = 52
"""Offset of ``tcpi_last_data_recv`` (milliseconds, a u32) in Linux's ``struct tcp_info``."""


def _received(connection: socket.socket) -> float | None:
    """``time.monotonic()`` when the kernel last received data on ``connection`` (the
    request just read), to the kernel's tick (1 to 4 ms); None where ``TCP_INFO`` is not."""
    try:
        info = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        now = time.monotonic()
        milliseconds: int = struct.unpack_from("I", info, _LAST_DATA_RECV)[0]
    except (AttributeError, OSError, struct.error):
        return None
    return now - milliseconds / 1000


class App(Protocol):
    """What the server needs from the simulator."""

    def handle(self, request: Request) -> Response: ...

    def log_request(
        self,
        request: Request,
        response: Response,
        *,
        bytes_sent: int,
        content_encoding: str | None,
        started: float,
        started_monotonic: float,
    ) -> None: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pki-exporter-simulator"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: SimulatorServer

    def setup(self) -> None:
        connection = self.request
        # When the client opened the connection (its last data so far, the TLS ClientHello;
        # or the TCP handshake's end, before any data): the TLS handshake below waits for
        # this thread to start, and the first request's ``received`` with it.
        self._opened: float | None = _received(connection)
        if isinstance(connection, ssl.SSLSocket):  # plain HTTP (the IMDS listener) has none
            connection.settimeout(HANDSHAKE_TIMEOUT)
            connection.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the request log is the record, stderr stays quiet."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _dispatch(self) -> None:
        started, started_monotonic = self.server.clock(), time.monotonic()
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path or "/",
            query_string=parts.query,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=self.headers,
            arrival=started_monotonic,
            received=_received(self.request),
            opened=self._opened,
        )
        self._opened = None
        body = self._read_body()
        if body is None:
            self.close_connection = True
            response = graph_error(request, 400, "BadRequest", "Unreadable request body.")
        else:
            request.body = body
            try:
                response = self.server.app.handle(request)
            except Exception:
                log.exception("simulator: error answering %s %s", self.command, request.path)
                response = graph_error(request, 500, "InternalServerError", "The simulator failed.")
        self._send(request, response, started, started_monotonic)

    def _send(
        self, request: Request, response: Response, started: float, started_monotonic: float
    ) -> None:
        """Log, then write: the entry exists before the client can see the answer, so a
        test that reads the log right after a response never races the server."""
        body = response.body
        encoding = None
        if response.compressible and body and request.accepts_gzip():
            body = response.gzip_body if response.gzip_body is not None else gzip_bytes(body)
            encoding = "gzip"
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {response.status} {phrase}"]
        if response.content_type:
            lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(body)}")
        if encoding:
            lines.append(f"Content-Encoding: {encoding}")
        if response.compressible:
            lines.append("Vary: Accept-Encoding")
        lines.append(f"request-id: {request.request_id}")
        lines.append(f"client-request-id: {request.client_request_id or request.request_id}")
        lines.append(f"Date: {formatdate(usegmt=True)}")
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if response.reset:
            body = body[: len(body) // 2]
        self.server.app.log_request(
            request,
            response,
            bytes_sent=len(head) + len(body),
            content_encoding=encoding,
            started=started,
            started_monotonic=started_monotonic,
        )
        try:
            if response.reset:
                self.wfile.write(head + body)
                self._reset()
            elif len(body) < _COALESCE:
                self.wfile.write(head + body)
            else:
                self.wfile.write(head)
                self.wfile.write(body)
        except (OSError, ssl.SSLError):
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send an RST instead of a FIN."""
        self.close_connection = True
        connection: ssl.SSLSocket = self.request
        with contextlib.suppress(OSError):
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        connection.close()


class SimulatorServer(ThreadingHTTPServer):
    """One listening socket, one daemon thread per connection, every connection tracked
    so that stopping the simulator also drops idle keep-alive clients."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        ssl_context: ssl.SSLContext | None,
        clock: Callable[[], float],
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.clock = clock
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.ssl_context is None:
            return sock, address
        wrapped = self.ssl_context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes and clients that hang up are routine here.
        log.debug(
            "simulator: connection from %s ended with an error", client_address, exc_info=True
        )

    def start_serving(self, role: str) -> threading.Thread:
        """Serve in a daemon thread named for ``role`` and the port (a stop is seen within
        50 ms); the Graph server, the CDN and the IMDS listener all start so."""
        thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"pki-exporter-simulator{role}:{self.server_port}",
            daemon=True,
        )
        thread.start()
        return thread

    def stop_serving(self, thread: threading.Thread | None) -> None:
        """Stop serving, drop every open connection, release the port, wait for ``thread``."""
        self.shutdown()
        self.close_connections()
        self.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError, ValueError):
                connection.shutdown(socket.SHUT_RDWR)
