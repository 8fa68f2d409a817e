"""The only place that talks HTTP to Microsoft Graph.

Requests, retries, paging and the guard on ``@odata.nextLink`` live here. Every failure
leaves as a GraphError whose ``reason`` is one of the fixed set exported as the
``reason`` label, and whose message is one line fit for a log (Graph's error code,
message and request-id; never a token).
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpx
import msgspec

from pki_exporter import __version__, logs
from pki_exporter.collector import TURNS
from pki_exporter.credentials import AuthError, TokenProvider
from pki_exporter.fold import Fold
from pki_exporter.records import InvalidResponse, decode_ca, decode_ca_page, decode_leaf_page
from pki_exporter.retry import RETRY_STATUSES, RetryPolicy

log = logs.get("graph")

CA_COLLECTION = "/beta/deviceManagement/cloudCertificationAuthority"
LEAF_ACTION = "getAllCloudCertificationAuthorityLeafCertificates"
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
USER_AGENT = f"pki-exporter/{__version__}"


class GraphError(Exception):
    """A failed Graph operation, classified for the ``reason`` label."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class Cancelled(Exception):
    """The exporter is stopping; the refresh in progress is abandoned."""


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """System trust plus the configured bundle (``ca_bundle`` is extra trust, not a replacement)."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


class _ErrorBody(msgspec.Struct):
    error: dict[str, Any] | None = None


def _graph_error_text(response: httpx.Response) -> str:
    """Graph's error body as ``code: message`` on one line (Intune nests JSON in ``message``)."""
    code = message = ""
    try:
        body = msgspec.json.decode(response.content, type=_ErrorBody)
        if body.error:
            code = str(body.error.get("code") or "")
            message = str(body.error.get("message") or "")
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    message = " ".join(message.split())[:300]
    text = f"{code}: {message}" if code and message else code or message
    return text or response.reason_phrase or f"HTTP {response.status_code}"


def _reason_for_status(status: int) -> str:
    if status == 429:
        return "throttled"
    if status in (401, 403):
        return "auth"
    if 400 <= status < 500:
        return "http_4xx"
    return "http_5xx"


class GraphClient:
    """A tenant's Graph connection: one httpx client, the tenant's tokens, the retry policy."""

    def __init__(
        self,
        graph_url: str,
        tokens: TokenProvider,
        *,
        timeout: float,
        ca_bundle: str | None = None,
        on_response: Callable[[int], None] = lambda _code: None,
        stop: threading.Event | None = None,
        policy: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._root = graph_url.rstrip("/")
        root = urlsplit(self._root)
        self._origin = (root.scheme.lower(), root.netloc.lower())
        self._tokens = tokens
        self._timeout = timeout
        self._on_response = on_response
        self._stop = stop or threading.Event()
        self._policy = policy or RetryPolicy()
        self._client = httpx.Client(
            verify=ssl_context(ca_bundle),
            timeout=httpx.Timeout(timeout),
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
                "Prefer": "include-unknown-enum-members",
            },
            follow_redirects=False,
            trust_env=True,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    # -- requests ----------------------------------------------------------------------

    def _send(self, method: str, url: str, deadline: float) -> httpx.Response:
        """One request with the retry policy; returns a 2xx response with its body read."""
        retries = 0
        fresh_token = False
        while True:
            if self._stop.is_set():
                raise Cancelled
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GraphError(
                    "timeout", f"refresh deadline exceeded before {method} {_path(url)}"
                )
            try:
                token = self._tokens.token()
            except AuthError as exc:
                raise GraphError("auth", f"token: {exc}") from None
            request_id = str(uuid.uuid4())
            headers = {"Authorization": f"Bearer {token}", "client-request-id": request_id}
            timeout = min(self._timeout, remaining)
            failure: GraphError
            retry_after: str | None = None
            try:
                response = self._client.request(method, url, headers=headers, timeout=timeout)
            except httpx.TimeoutException as exc:
                failure = GraphError(
                    "timeout", f"{method} {_path(url)}: timed out ({type(exc).__name__})"
                )
            except httpx.TransportError as exc:
                failure = GraphError(
                    "network", f"{method} {_path(url)}: {type(exc).__name__}: {_first(exc)}"
                )
            else:
                # httpx ties a response and its stream in a reference cycle, so the body it
                # holds (a page: over a megabyte) would wait for the cyclic GC, a few pages'
                # worth at a time. Without the stream, it goes with the response.
                response.stream = httpx.ByteStream(b"")
                self._on_response(response.status_code)
                status = response.status_code
                if 200 <= status < 300:
                    return response
                graph_request_id = response.headers.get("request-id", "")
                detail = _graph_error_text(response)
                failure = GraphError(
                    _reason_for_status(status),
                    f"{method} {_path(url)}: HTTP {status} {detail} (request-id {graph_request_id or '-'},"
                    f" client-request-id {request_id})",
                    status,
                )
                if status == 401 and not fresh_token:
                    # The token may have been revoked or expired early: one retry with a fresh one.
                    fresh_token = True
                    self._tokens.invalidate()
                    logs.event(
                        log,
                        logging.INFO,
                        "graph answered 401; retrying with a fresh token",
                        url=_path(url),
                    )
                    continue
                if status not in RETRY_STATUSES:
                    raise failure
                retry_after = response.headers.get("Retry-After")
            retries += 1
            if retries >= self._policy.max_attempts:
                raise failure
            # An HTTP-date Retry-After is Graph's wall clock: compare it with the real one
            # (the clock module may be frozen for certificate arithmetic, never for waits).
            wait = self._policy.delay(retries, retry_after, time.time())
            if wait > self._policy.max_retry_after or time.monotonic() + wait >= deadline:
                raise GraphError(
                    failure.reason,
                    f"{failure} (retry in {wait:.1f}s would pass the deadline)",
                    failure.status,
                )
            logs.event(
                log,
                logging.INFO,
                "retrying graph request",
                url=_path(url),
                reason=failure.reason,
                attempt=retries + 1,
                wait_seconds=round(wait, 3),
            )
            if self._stop.wait(wait):
                raise Cancelled

    def _check_next_link(self, link: object, seen: set[str]) -> str:
        """The bearer token goes to the configured Graph root only: refuse any other origin."""
        if not isinstance(link, str) or not link:
            raise GraphError("invalid_response", "@odata.nextLink is not a URL")
        parts = urlsplit(link)
        if (parts.scheme.lower(), parts.netloc.lower()) != self._origin:
            raise GraphError(
                "invalid_response",
                f"refused @odata.nextLink to {parts.scheme}://{parts.netloc}: not the configured Graph root",
            )
        if link in seen:
            raise GraphError(
                "invalid_response", "@odata.nextLink repeats an earlier page (paging loop)"
            )
        seen.add(link)
        return link

    # -- operations --------------------------------------------------------------------

    def list_cas(self, deadline: float) -> list[Mapping[str, Any]]:
        """Every CA of the tenant (the collection may page)."""
        cas: list[Mapping[str, Any]] = []
        url: str | None = self._root + CA_COLLECTION
        seen: set[str] = set()
        while url:
            response = self._send("GET", url, deadline)
            try:
                page, next_link = decode_ca_page(response.content)
            except InvalidResponse as exc:
                raise GraphError("invalid_response", f"GET {_path(url)}: {exc}") from None
            cas.extend(page)
            url = self._check_next_link(next_link, seen) if next_link is not None else None
        return cas

    def get_ca(self, ca_id: str, deadline: float) -> Mapping[str, Any]:
        _require_guid(ca_id)
        url = f"{self._root}{CA_COLLECTION}/{ca_id}"
        response = self._send("GET", url, deadline)
        try:
            return decode_ca(response.content)
        except InvalidResponse as exc:
            raise GraphError("invalid_response", f"GET {_path(url)}: {exc}") from None

    def fold_leaves(self, ca_id: str, fold: Fold, deadline: float) -> int:
        """Read every leaf page of a CA into ``fold``; returns the number of pages."""
        _require_guid(ca_id)
        url: str | None = f"{self._root}{CA_COLLECTION}/{ca_id}/{LEAF_ACTION}"
        seen: set[str] = set()
        pages = 0
        while url:
            body = self._send("POST", url, deadline).content
            # The CPU-bound parts of a page: one refresh thread at a time, after any scrape
            # (two turns, so that a scrape waits for half a page at most).
            with TURNS.cpu():
                try:
                    page = decode_leaf_page(body)
                except InvalidResponse as exc:
                    raise GraphError("invalid_response", f"POST {_path(url)}: {exc}") from None
            del body
            with TURNS.cpu():
                fold.add(page.records)
                fold.add_invalid(page.invalid)
            pages += 1
            url = (
                self._check_next_link(page.next_link, seen) if page.next_link is not None else None
            )
        return pages


def _require_guid(ca_id: str) -> None:
    if not GUID.match(ca_id):
        raise GraphError("invalid_response", f"CA id {ca_id[:64]!r} is not a GUID")


def _path(url: str) -> str:
    """A URL without its query (skip tokens are long and say nothing to a reader)."""
    parts = urlsplit(url)
    return parts.path + ("?…" if parts.query else "")


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
