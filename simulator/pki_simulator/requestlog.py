"""The request log: what each request was and how it was answered, for exact assertions.

Entries hold no credentials by construction: there is no field for a header value of
``Authorization`` or for a form body, only ``had_authorization``.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RequestLogEntry:
    """One answered request. ``endpoint`` names the route (``token``, ``openid_configuration``,
    ``ca_list``, ``ca_get``, ``leaves``, ``leaves_nav``, ``leaves_count``, ``control``, ...);
    ``time`` comes from the simulator's clock; ``duration`` is the time taken to produce the
    answer (the entry is written just before the answer is sent); ``monotonic`` is
    ``time.monotonic()`` at the request's arrival (for sliding-window checks); ``app_id`` is
    the client id of the bearer token of a Graph request (None for other requests);
    ``fault`` names the fault that shaped the answer (``graph_limit`` for a 429 of
    `GraphLimits`, ``query_broker``, ``throttle``, ...)."""

    time: float
    method: str
    path: str
    query: str
    status: int
    endpoint: str
    tenant_id: str | None
    ca_id: str | None
    page: int | None
    client_request_id: str | None
    request_id: str
    user_agent: str | None
    prefer: str | None
    accept_encoding: str | None
    content_encoding: str | None
    had_authorization: bool
    fault: str | None
    bytes_sent: int
    duration: float
    monotonic: float = 0.0
    app_id: str | None = None
    retry_after: str | None = None
    """The answer's ``Retry-After`` header, when it had one."""
    received: float | None = None
    """``time.monotonic()`` when the kernel received the request (None where unknown):
    ``monotonic`` less the simulator's own delays (a connection's thread starting, its TLS
    handshake, the process waiting for a core), for checks of a client's timing."""
    opened: float | None = None
    """On a connection's first request, ``time.monotonic()`` when the client opened the
    connection (its ClientHello reached the kernel): the TLS handshake waited for the
    simulator's thread, and ``received`` with it. None on a connection's later requests."""
    answered: float = 0.0
    """``time.monotonic()`` when the answer was ready to send (the entry is written then): a
    client's wait before its next request starts after this, however late the simulator's
    thread got to the request."""

    @property
    def sent(self) -> float:
        """When the client sent the request, as the simulator's kernel saw it: ``opened`` on
        a connection's first request, else ``received``; ``monotonic`` where neither is
        known. For checks of a client's timing (``monotonic`` comes after the simulator's
        thread got to the request: tenths of a second later on a loaded machine)."""
        for moment in (self.opened, self.received):
            if moment is not None:
                return moment
        return self.monotonic

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """A bounded, thread-safe list of entries (oldest dropped beyond ``maxlen``)."""

    def __init__(self, maxlen: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[RequestLogEntry] = deque(maxlen=maxlen)

    def append(self, entry: RequestLogEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[RequestLogEntry]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
