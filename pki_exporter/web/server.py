"""The exporter's own HTTP server: an event loop, and workers that answer whole requests.

Exporters are usually open on the network, so the server has to stay safe on its own
against idle, slow and hostile clients (docs/security.md, "Hostile and slow clients"):

- **No thread per connection, and no worker waits on a client.** One event loop
  (``selectors``) accepts connections, does the TLS handshakes, reads request heads *and
  bodies*, and sends the answers, all without blocking. Only a request that has arrived
  whole goes to one of the workers (``WORKERS`` threads), which compute the answer in
  memory (web/handler.py) and give it back to the loop to send. A client that trickles,
  stalls or reads slowly holds its socket and its buffer, never a worker.
- **Deadlines, not per-``recv`` timeouts.** A request (head and body) must arrive within
  ``Timeouts.head`` of its first byte (of the accept, for a new connection), whatever it
  trickles in between; an answer must be taken within ``Timeouts.write`` of its first
  byte sent; a kept-alive connection may idle ``Timeouts.idle``. Plain HTTP sent to the
  TLS port has its head read under the same head deadline, then gets Go's 400.
- **Bounded.** At most ``MAX_CONNECTIONS`` open connections: one more evicts the oldest
  one still waiting for its first request, else the oldest slow reader, else the oldest
  kept-alive one. Answers waiting for slow readers hold at most ``MAX_UNSENT`` bytes
  together (the oldest reader is closed to make room). Request line ``MAX_REQUEST_LINE`` (414), head ``MAX_HEAD`` (431), query
  ``MAX_QUERY`` (414), body ``MAX_BODY`` (413); every error is one line of text.
- **No file work on the loop.** TLS wraps each connection with the web config's context
  as it is; a thread of the server re-reads the web config and its certificate files
  every ``web_config_interval`` seconds (workers re-check it per request too), so that a
  rotated certificate reaches new connections without a restart and without the loop
  ever reading or parsing a file.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import logging
import resource
import selectors
import socket
import socketserver
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pki_exporter.metrics.exposition import RenderCache
from pki_exporter.runtime import logs
from pki_exporter.web.handler import (
    CONTENT_SECURITY_POLICY,
    MAX_BODY,
    MAX_QUERY,
    NO_STORE,
    SECURITY_HEADERS,
    Endpoints,
    RequestHandler,
    body_length,
    error_bytes,
    head_end,
)
from pki_exporter.web.toolkit import (
    HTTP_ON_HTTPS_RESPONSE,
    WebConfigProvider,
    looks_like_plain_http,
)

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAX_BODY",
    "MAX_QUERY",
    "NO_STORE",
    "SECURITY_HEADERS",
    "Endpoints",
    "ExporterServer",
    "State",
    "Timeouts",
    "serve",
]

log = logs.get("server")

MAX_CONNECTIONS = 512
"""Open connections at most (fewer when the open-files limit is low: its soft limit less
64); the oldest one still sending its first request head makes room for a new one. Two
Prometheus servers and a few browsers need a dozen."""
WORKERS = 8
"""Threads answering requests that have arrived whole (scrapes, pages, reloads)."""
HEAD_TIMEOUT = 10.0
"""Seconds from a request's first byte (or a connection's accept) to the end of its body."""
WRITE_TIMEOUT = 10.0
"""Seconds from an answer's first byte sent to its last: a client must take it by then."""
IDLE_TIMEOUT = 120.0
"""Seconds a kept-alive connection may wait for its next request (Prometheus reuses its
connection from one scrape to the next; 2 minutes cover a 1-minute scrape interval)."""
WEB_CONFIG_INTERVAL = 1.0
"""Seconds between two checks of the web config's files (a `stat()` each; parsed on change)."""
MAX_REQUEST_LINE = 8192
MAX_HEAD = 16384
MAX_UNSENT = 64 * 1024 * 1024
"""Bytes of answers held for slow readers, all connections together: past it, the oldest
of them is closed. A scrape's answer is kilobytes, a drill-down's at most a few MB."""
_SEND_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The server's deadlines, in seconds (tests shorten them; production keeps these)."""

    head: float = HEAD_TIMEOUT
    """A whole request (head and body), from its first byte or the connection's accept."""
    write: float = WRITE_TIMEOUT
    """A whole answer, from its first byte sent."""
    idle: float = IDLE_TIMEOUT
    """A kept-alive connection between two requests."""


class State(enum.Enum):
    """Where a connection is; the loop owns it in every state but ``BUSY``."""

    SNIFF = "sniff"
    """On the TLS port, nothing read yet: TLS or plain HTTP?"""
    HANDSHAKE = "handshake"
    PLAIN = "plain"
    """Plain HTTP on the TLS port: its head is read, then Go's 400 is sent."""
    HEAD = "head"
    """Waiting for (the rest of) a request head; a kept-alive connection waits here too."""
    BODY = "body"
    """The head is in; waiting for the rest of its body."""
    BUSY = "busy"
    """A worker is computing the answer."""
    WRITE = "write"
    """The loop is sending the answer."""


class _Conn:
    """One client connection."""

    __slots__ = (
        "accepted",
        "address",
        "buffer",
        "deadline",
        "keep",
        "need",
        "out",
        "sent",
        "served",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, address: Any, now: float, state: State) -> None:
        self.sock = sock
        self.address = address
        self.buffer = b""
        self.accepted = now
        self.deadline = now
        self.served = 0
        self.state = state
        self.need = 0  # bytes of head and body, once the head is in (State.BODY)
        self.out = memoryview(b"")  # the answer being sent (State.WRITE)
        self.sent = 0
        self.keep = False  # after the answer: read the next request, or close


class ExporterServer(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        endpoints: Endpoints,
        web: WebConfigProvider,
        *,
        timeouts: Timeouts = Timeouts(),
        workers: int = WORKERS,
        web_config_interval: float = WEB_CONFIG_INTERVAL,
        max_unsent: int = MAX_UNSENT,
    ) -> None:
        self.endpoints = endpoints
        self.web = web
        self.timeouts = timeouts
        self.workers = workers
        self.web_config_interval = web_config_interval
        self.max_unsent = max_unsent
        #: the text of unchanged families, kept from one scrape to the next
        self.render_cache = RenderCache()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        # Before binding: a failed bind calls server_close(), which closes these.
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}  # by id(), for the loop only
        self._returned: collections.deque[tuple[_Conn, bytes, bool, bytes]] = collections.deque()
        self._jobs: collections.deque[_Conn] = collections.deque()
        self._jobs_ready = threading.Semaphore(0)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        super().__init__(address, socketserver.BaseRequestHandler)  # unused: see _work
        self.socket.setblocking(False)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
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
        for n in range(self.workers):
            threading.Thread(target=self._work, name=f"pki-http-{n}", daemon=True).start()
        watcher = None
        if self.web.tls_enabled:
            watcher = threading.Thread(
                target=self._watch_web_config, name="pki-http-web-config", daemon=True
            )
            watcher.start()
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
                    elif id(key.data) not in self._conns:
                        continue  # closed earlier in this round (evicted)
                    elif key.data.state is State.WRITE:
                        self._write(key.data)
                    else:
                        self._readable(key.data)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + min(0.25, self.timeouts.head / 4)
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._stop.set()
            for _ in range(self.workers):
                self._jobs_ready.release()  # an empty queue tells a worker to leave
            for key in list(selector.get_map().values()):
                selector.unregister(key.fileobj)
            if watcher is not None:
                watcher.join()  # workers are not waited for: one may still be answering
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

    def _watch(self, conn: _Conn, events: int) -> None:
        """Have the selector report `events` of the connection (registered or not)."""
        try:
            self._selector.modify(conn.sock, events, conn)
        except KeyError:
            self._selector.register(conn.sock, events, conn)

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
            now = time.monotonic()
            conn = _Conn(sock, address, now, State.SNIFF if self.web.tls_enabled else State.HEAD)
            conn.deadline = now + self.timeouts.head
            self._conns[id(conn)] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict(self) -> bool:
        """Close the oldest connection still waiting for its first request, else the oldest
        slow reader, else the oldest kept-alive one: a flood cannot lock a scraper out."""

        def rank(c: _Conn) -> tuple[int, float]:
            tier = 1 if c.state is State.WRITE else (2 if c.served else 0)
            return tier, c.accepted

        candidates = [c for c in self._conns.values() if c.state is not State.BUSY]
        if not candidates:
            return False
        logs.event(log, logging.DEBUG, "connection limit reached; closing the oldest idle one")
        self._close(min(candidates, key=rank))
        return True

    def _sweep(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self.socket, selectors.EVENT_READ, "accept")
        late = [c for c in self._conns.values() if c.state is not State.BUSY and c.deadline <= now]
        for conn in late:
            if conn.state is State.BODY:
                self._refuse(conn, HTTPStatus.REQUEST_TIMEOUT, "request body not received in time")
            elif conn.state is State.HEAD and conn.buffer:
                self._refuse(conn, HTTPStatus.REQUEST_TIMEOUT, "request head not received in time")
            else:  # idle, mid-handshake, or an answer not taken in time
                logs.event(log, logging.DEBUG, "deadline passed", state=conn.state.value)
                if conn.state is State.WRITE:
                    # A reset, not a FIN behind the unsent rest: the kernel drops the
                    # megabytes it still buffers instead of trickling them out for the
                    # slow reader after the deadline.
                    with contextlib.suppress(OSError):
                        conn.sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self._conns.pop(id(conn), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _refuse(self, conn: _Conn, status: HTTPStatus, line: str) -> None:
        """Answer a request the loop will not hand on, and close."""
        self._send(conn, error_bytes(status, line), keep=False)

    def _readable(self, conn: _Conn) -> None:
        if conn.state is State.SNIFF:
            try:
                first = conn.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                first = b""
            if not first:
                self._close(conn)
                return
            if looks_like_plain_http(first):  # Go's 400, once its head is in
                conn.state = State.PLAIN
            else:
                self._wrap(conn)
                return
        if conn.state is State.HANDSHAKE:
            assert isinstance(conn.sock, ssl.SSLSocket)
            try:
                conn.sock.do_handshake()
            except ssl.SSLWantReadError:
                self._watch(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:  # the send buffer is full: wait until it drains
                self._watch(conn, selectors.EVENT_WRITE)
                return
            except (OSError, ValueError) as exc:
                logs.event(log, logging.DEBUG, "TLS handshake failed", error=str(exc))
                self._close(conn)
                return
            conn.state = State.HEAD
            self._watch(conn, selectors.EVENT_READ)
        self._read(conn)

    def _wrap(self, conn: _Conn) -> None:
        """TLS with the context in force: no file is read here (see _watch_web_config)."""
        self._selector.unregister(conn.sock)
        try:
            conn.sock = self.web.current_ssl_context().wrap_socket(
                conn.sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            logs.event(log, logging.DEBUG, "TLS wrap failed", error=str(exc))
            self._conns.pop(id(conn), None)
            conn.sock.close()
            return
        conn.state = State.HANDSHAKE
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._readable(conn)

    def _read(self, conn: _Conn) -> None:
        limit = conn.need if conn.state is State.BODY else MAX_HEAD + 1
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
            if not conn.buffer and conn.state is State.HEAD:
                # A request starts: it must be in whole within the head deadline.
                conn.deadline = min(conn.deadline, time.monotonic() + self.timeouts.head)
            conn.buffer += data
            if len(conn.buffer) >= limit or not isinstance(conn.sock, ssl.SSLSocket):
                break
            if not conn.sock.pending():
                break
        self._check(conn)

    def _check(self, conn: _Conn) -> None:
        """Act on what the buffer holds: wait for more, refuse, or hand the request on."""
        buffer = conn.buffer
        if conn.state is State.PLAIN:
            if head_end(buffer[: MAX_HEAD + 4]) >= 0 or len(buffer) > MAX_HEAD:
                self._send(conn, HTTP_ON_HTTPS_RESPONSE, keep=False)
            return
        if conn.state is State.HEAD and buffer:
            end = head_end(buffer[: MAX_HEAD + 4])
            line_end = buffer.find(b"\n")
            if (line_end < 0 and len(buffer) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
                self._refuse(conn, HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
                return
            if end < 0 and len(buffer) > MAX_HEAD:
                self._refuse(
                    conn, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"
                )
                return
            if end < 0:
                return
            conn.need = end + body_length(buffer[:end])
            conn.state = State.BODY
        if conn.state is State.BODY and len(buffer) >= conn.need:
            self._selector.unregister(conn.sock)
            conn.state = State.BUSY
            self._jobs.append(conn)
            self._jobs_ready.release()

    def _send(self, conn: _Conn, answer: bytes, *, keep: bool) -> None:
        """Send `answer` from the loop, under the write deadline; then read on or close."""
        conn.state = State.WRITE
        conn.out, conn.sent, conn.keep = memoryview(answer), 0, keep
        conn.deadline = time.monotonic() + self.timeouts.write
        self._write(conn)
        if conn.state is State.WRITE:  # not all taken at once: held in memory meanwhile
            self._limit_unsent(conn)

    def _limit_unsent(self, newest: _Conn) -> None:
        """Close the oldest slow readers while the answers held exceed ``max_unsent``."""
        writing = sorted(
            (c for c in self._conns.values() if c.state is State.WRITE and c is not newest),
            key=lambda c: c.deadline,
        )
        unsent = sum(len(c.out) - c.sent for c in writing) + len(newest.out) - newest.sent
        for conn in writing:
            if unsent <= self.max_unsent:
                break
            unsent -= len(conn.out) - conn.sent
            logs.event(log, logging.DEBUG, "answers held past the limit; closing the oldest")
            self._close(conn)

    def _write(self, conn: _Conn) -> None:
        while conn.sent < len(conn.out):
            try:
                conn.sent += conn.sock.send(conn.out[conn.sent : conn.sent + _SEND_CHUNK])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self._watch(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._watch(conn, selectors.EVENT_READ)
                return
            except (OSError, ValueError):
                self._close(conn)
                return
        conn.out = memoryview(b"")
        if not conn.keep or self._stop.is_set():
            self._close(conn)
            return
        conn.state = State.HEAD
        conn.deadline = time.monotonic() + (
            self.timeouts.head if conn.buffer else self.timeouts.idle
        )
        self._watch(conn, selectors.EVENT_READ)
        if conn.buffer:  # a pipelined request
            self._check(conn)
        elif isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
            self._read(conn)

    def _take_back(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._returned:
            conn, answer, keep, leftover = self._returned.popleft()
            if id(conn) not in self._conns:
                continue  # closed by shutdown
            conn.served += 1
            conn.buffer = leftover
            if answer:
                self._send(conn, answer, keep=keep)
            else:
                self._close(conn)

    # -- the other threads -------------------------------------------------------------

    def _work(self) -> None:
        while True:
            self._jobs_ready.acquire()
            try:
                conn = self._jobs.popleft()
            except IndexError:
                return  # the loop has stopped
            answer, keep, leftover = b"", False, b""
            try:
                handler = RequestHandler(conn.buffer, conn.sock, conn.address, self)
                answer, keep, leftover = (
                    handler.answer,
                    not handler.close_connection,
                    handler.leftover,
                )
            except Exception:  # a bug of ours, not a client's doing: worth a traceback
                log.exception("answering a request failed")
            self._returned.append((conn, answer, keep, leftover))
            self._wake()

    def _watch_web_config(self) -> None:
        """Re-read the web config and its TLS files when they change, off the loop."""
        while not self._stop.wait(self.web_config_interval):
            try:
                self.web.reload_if_changed()
            except Exception:  # never let a reload take the server down
                log.exception("checking the web config failed")


def serve(server: ExporterServer) -> threading.Thread:
    """Serve in a background thread (the main thread waits for signals)."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="pki-http", daemon=True
    )
    thread.start()
    return thread
