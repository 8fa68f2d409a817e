"""Requests and responses as plain values, between the HTTP server and the routes.

Routes never touch sockets: they get a `Request` and return a `Response`, and the server
decides how the bytes go out (gzip, a mid-body reset). That keeps the fake services
testable without a network and the transport free of Graph knowledge.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any

GRAPH_JSON = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
PLAIN_JSON = "application/json; charset=utf-8"


@dataclass
class Request:
    method: str
    path: str
    query_string: str
    query: dict[str, str]
    headers: Message
    body: bytes = b""
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: ``time.monotonic()`` when the request arrived (set by the server)
    arrival: float = field(default_factory=time.monotonic)
    #: ``time.monotonic()`` when the kernel received the request (server.py), if known
    received: float | None = None
    #: on a connection's first request: ``time.monotonic()`` when the client opened the
    #: connection (its ClientHello reached the kernel); None on later requests
    opened: float | None = None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)

    @property
    def client_request_id(self) -> str | None:
        return self.header("client-request-id")

    def prefers(self, preference: str) -> bool:
        wanted = preference.lower()
        return any(
            part.strip().split("=")[0].strip().lower() == wanted
            for value in self.headers.get_all("prefer") or ()
            for part in str(value).split(",")
        )

    def preference(self, preference: str) -> str | None:
        """The value of ``preference=value`` among the ``Prefer`` headers' comma-separated
        preferences (e.g. ``odata.maxpagesize`` in ``include-unknown-enum-members,
        odata.maxpagesize=999``), else None."""
        wanted = preference.lower()
        for value in self.headers.get_all("prefer") or ():
            for part in str(value).split(","):
                name, sep, setting = part.strip().partition("=")
                if sep and name.strip().lower() == wanted:
                    return setting.strip().strip('"')
        return None

    def accepts_gzip(self) -> bool:
        for value in self.headers.get_all("accept-encoding") or ():
            for part in str(value).split(","):
                name, _, params = part.strip().partition(";")
                if name.strip().lower() in ("gzip", "*"):
                    q = params.strip().lower()
                    if q.startswith("q="):
                        try:
                            return float(q[2:]) > 0
                        except ValueError:
                            return False
                    return True
        return False


@dataclass
class Response:
    """An answer, plus what the request log should say about the request."""

    status: int
    body: bytes = b""
    content_type: str | None = GRAPH_JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: precomputed gzip form of ``body`` (from the page cache)
    gzip_body: bytes | None = None
    compressible: bool = True
    #: send the headers and half of the body, then reset the connection
    reset: bool = False
    endpoint: str = "unknown"
    tenant_id: str | None = None
    ca_id: str | None = None
    page: int | None = None
    fault: str | None = None
    #: the app (token's client id) of a Graph request, for the request log
    app_id: str | None = None


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_response(
    status: int,
    value: Any,
    *,
    headers: list[tuple[str, str]] | None = None,
    endpoint: str = "unknown",
    tenant_id: str | None = None,
    content_type: str = PLAIN_JSON,
) -> Response:
    return Response(
        status=status,
        body=json_bytes(value),
        content_type=content_type,
        headers=list(headers or ()),
        endpoint=endpoint,
        tenant_id=tenant_id,
    )


def graph_error(
    request: Request,
    status: int,
    code: str,
    message: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    endpoint: str = "unknown",
) -> Response:
    """Graph's error body, with the ids a support ticket would quote."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request.request_id,
                "client-request-id": request.client_request_id or request.request_id,
            },
        }
    }
    return json_response(status, body, headers=headers, endpoint=endpoint, content_type=GRAPH_JSON)
