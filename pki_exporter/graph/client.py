"""The only place that talks HTTP to Microsoft Graph.

Requests, retries, paging and the guard on ``@odata.nextLink`` live here. Every failure
leaves as a GraphError whose ``reason`` is one of the fixed set exported as the
``reason`` label, and whose message is one line fit for a log (Graph's error code,
message and request-id; never a token).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec

from pki_exporter import __version__, outbound
from pki_exporter.config.model import LeafSource
from pki_exporter.graph.budget import BudgetCancelled, BudgetExceeded, GraphBudget, Slot
from pki_exporter.graph.credentials import MSAL_THROTTLE_SECONDS, AuthError, TokenProvider
from pki_exporter.graph.records import (
    LEAF_FIELDS,
    InvalidResponse,
    LeafRecord,
    Misfit,
    decode_ca,
    decode_ca_page,
    decode_leaf_page,
)
from pki_exporter.graph.retry import (
    RETRY_STATUSES,
    RetryPolicy,
    parse_retry_after,
    retry_deadline,
)
from pki_exporter.runtime import logs
from pki_exporter.runtime.ids import is_guid
from pki_exporter.runtime.turns import Turns

log = logs.get("graph")

CA_COLLECTION = "/beta/deviceManagement/cloudCertificationAuthority"
LEAF_ACTION = "getAllCloudCertificationAuthorityLeafCertificates"
LEAF_NAVIGATION = "cloudCertificationAuthorityLeafCertificate"
NAVIGATION_QUERY = "$select=" + ",".join(LEAF_FIELDS)
"""The navigation property sends only the fields the metrics and the drill-down read."""
NAVIGATION_PREFER = "include-unknown-enum-members, odata.maxpagesize=999"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TOKEN_ENDPOINT = "token endpoint"  # noqa: S105 - a label, not a secret
USER_AGENT = f"pki-exporter/{__version__}"


class PageSink(Protocol):
    """Where ``GraphClient.fold_leaves`` puts each page (``aggregate.certificates.Fold``)."""

    def add(self, records: list[LeafRecord]) -> None: ...

    def add_invalid(self, count: int, misfits: Sequence[Misfit] = ()) -> None: ...


class GraphError(Exception):
    """A failed Graph operation, classified for the ``reason`` label."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class Cancelled(Exception):
    """The exporter is stopping; the refresh in progress is abandoned."""


ssl_context = outbound.ssl_context
"""System trust plus the configured bundle (kept here for the benchmarks that import it)."""


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
    message = outbound.one_line(message)
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
        budget: GraphBudget | None = None,
        leaf_source: LeafSource = "action",
        transport: httpx.BaseTransport | None = None,
        turns: Turns | None = None,
        route: outbound.Route | None = None,
    ) -> None:
        """``turns``: the serving process's CPU turns, shared with its HTTP server, so that
        page decoding and folding give way to scrapes (None: turns of its own). ``route``:
        the tenant's way out (``outbound.tenant_route``); None: ``ca_bundle`` and the
        environment's proxies."""
        self._root = graph_url.rstrip("/")
        root = urlsplit(self._root)
        self._origin = (root.scheme.lower(), root.netloc.lower())
        self._tokens = tokens
        self._timeout = timeout
        self._on_response = on_response
        self._stop = stop or threading.Event()
        self._policy = policy or RetryPolicy()
        self._budget = budget
        self._leaf_source = leaf_source
        self._turns = turns or Turns()
        self._token_lock = threading.Lock()
        self._token_paused_until = 0.0
        self._token_failure: GraphError | None = None
        self._route = route or outbound.Route(ca_bundle=ca_bundle, environ=os.environ)
        self._route.ssl_context()  # now, not inside the first request (and its timeout)
        self._client = self._route.httpx_client(
            timeout=httpx.Timeout(timeout),
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
                "Prefer": "include-unknown-enum-members",
            },
            follow_redirects=False,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    # -- requests ----------------------------------------------------------------------

    def token(self, deadline: float) -> str:
        """A token for Graph. The token endpoint's own throttling and outages (429, 5xx,
        timeouts, resets) are retried like Graph's, with their own reason; refused
        credentials are final. Token requests take no slot of the Graph budget.

        The tenant's workers ask one at a time, and after a failure all of them wait for the
        same retry: a token endpoint that throttles sees one request per retry, not one per
        worker."""
        retries = 0
        while True:
            with self._token_lock:
                pause = self._token_paused_until - time.monotonic()
                failure = self._token_failure
                if pause <= 0 or failure is None:
                    try:
                        return self._tokens.token()
                    except AuthError as exc:
                        failure = GraphError(exc.reason, f"token: {exc}")
                        if not exc.transient:
                            raise failure from None
                        retries += 1
                        # MSAL answers from its own cache for the Retry-After (5 s without
                        # one) after a 429/5xx: retrying sooner would read that error again.
                        floor = 0.0
                        if exc.reason in ("throttled", "http_5xx"):
                            hinted = parse_retry_after(exc.retry_after, time.time())
                            floor = (MSAL_THROTTLE_SECONDS if hinted is None else hinted) + 0.25
                        pause = self._retry_delay(
                            failure, retries, exc.retry_after, deadline, TOKEN_ENDPOINT, floor
                        )
                        self._token_paused_until = time.monotonic() + pause
                        self._token_failure = failure
                elif time.monotonic() + pause >= retry_deadline(deadline, self._timeout):
                    raise GraphError(
                        failure.reason,
                        f"{failure} (the next token request would pass the deadline)",
                        failure.status,
                    )
            if self._stop.wait(pause):
                raise Cancelled

    def _send(
        self, method: str, url: str, deadline: float, prefer: str | None = None
    ) -> httpx.Response:
        """One request with the retry policy; returns a 2xx response with its body read."""
        retries = 0
        fresh_token = False
        previous: GraphError | None = None  # the failure the next attempt retries
        last_retry = retry_deadline(deadline, self._timeout)
        while True:
            if self._stop.is_set():
                raise Cancelled
            if previous is None and time.monotonic() >= deadline:
                raise GraphError(
                    "timeout", f"refresh deadline exceeded before {method} {_path(url)}"
                )
            token = self.token(deadline)
            slot = self._take_slot(method, url, deadline, previous)
            if previous is not None and time.monotonic() >= last_retry:
                # The wait, the token or the budget took what was left: a retry sent now
                # would be cut off, so the answer Graph gave stands.
                if slot is not None and self._budget is not None:
                    self._budget.give_back(slot)
                raise _too_late(previous)
            request_id = str(uuid.uuid4())
            headers = {"Authorization": f"Bearer {token}", "client-request-id": request_id}
            if prefer is not None:
                headers["Prefer"] = prefer
            timeout = min(self._timeout, max(0.001, deadline - time.monotonic()))
            failure: GraphError
            retry_after: str | None = None
            try:
                try:
                    response = self._client.request(method, url, headers=headers, timeout=timeout)
                finally:  # answered or failed: the request has arrived, if it ever will
                    if slot is not None and self._budget is not None:
                        self._budget.release(slot)
            except httpx.TransportError as exc:
                told = outbound.describe_failure(self._route, url, exc)
                failure = GraphError(told.reason, f"{method} {_path(url)}: {told.message}")
                if told.reason == "auth":
                    raise failure from None  # the proxy refused our credentials: final
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
                    previous = failure
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
                if status == 429 and self._budget is not None:
                    # Someone else spends the tenant's limit: every worker of it slows down.
                    self._budget.throttled(parse_retry_after(retry_after, time.time()))
            retries += 1
            previous = failure
            wait = self._retry_delay(failure, retries, retry_after, deadline, _path(url))
            if self._stop.wait(wait):
                raise Cancelled

    def _take_slot(
        self, method: str, url: str, deadline: float, previous: GraphError | None
    ) -> Slot | None:
        """A slot of the tenant's budget by ``deadline``; a retry's by the last moment it may be
        sent, or the failure it retries is the outcome."""
        if self._budget is None:
            return None
        if previous is not None:
            deadline = retry_deadline(deadline, self._timeout)
        try:
            return self._budget.acquire(method in WRITE_METHODS, deadline)
        except BudgetCancelled:
            raise Cancelled from None
        except BudgetExceeded as exc:
            if previous is not None:
                raise _too_late(previous) from None
            raise GraphError(
                "timeout",
                f"refresh deadline: {exc} before {method} {_path(url)} "
                "(raise graph_budget or refresh.interval for a tenant this large)",
            ) from None

    def _retry_delay(
        self,
        failure: GraphError,
        retries: int,
        retry_after: str | None,
        deadline: float,
        what: str,
        floor: float = 0.0,
    ) -> float:
        """The wait before the ``retries``-th retry; raises ``failure`` when none is left."""
        if retries >= self._policy.max_attempts:
            raise failure
        # An HTTP-date Retry-After is the server's wall clock: compare it with the real one
        # (the clock module may be frozen for certificate arithmetic, never for waits).
        wait = max(floor, self._policy.delay(retries, retry_after, time.time()))
        if wait > self._policy.max_retry_after or (
            time.monotonic() + wait >= retry_deadline(deadline, self._timeout)
        ):
            raise GraphError(
                failure.reason,
                f"{failure} (retry in {wait:.1f}s would pass the deadline)",
                failure.status,
            )
        token = what == TOKEN_ENDPOINT
        logs.event(
            log,
            logging.INFO,
            "retrying token request" if token else "retrying graph request",
            **({} if token else {"url": what}),
            reason=failure.reason,
            attempt=retries + 1,
            wait_seconds=round(wait, 3),
            error=str(failure),
        )
        return wait

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

    def fold_leaves(self, ca_id: str, fold: PageSink, deadline: float) -> int:
        """Read every leaf page of a CA into ``fold``; returns the number of pages.

        ``action`` POSTs the seed's action (and its nextLinks); ``navigation`` GETs the
        navigation property with ``$select`` and the largest page Graph offers: the same
        records, about a tenth of the bytes, from the ten times larger GET budget.
        """
        _require_guid(ca_id)
        base = f"{self._root}{CA_COLLECTION}/{ca_id}"
        method, prefer = "POST", None
        url: str | None = f"{base}/{LEAF_ACTION}"
        if self._leaf_source == "navigation":
            method, prefer = "GET", NAVIGATION_PREFER
            url = f"{base}/{LEAF_NAVIGATION}?{NAVIGATION_QUERY}"
        seen: set[str] = set()
        pages = 0
        while url:
            body = self._send(method, url, deadline, prefer).content
            # The CPU-bound parts of a page: one refresh thread at a time, after any scrape
            # (two turns, so that a scrape waits for half a page at most).
            with self._turns.cpu():
                try:
                    page = decode_leaf_page(body)
                except InvalidResponse as exc:
                    raise GraphError("invalid_response", f"{method} {_path(url)}: {exc}") from None
            del body
            with self._turns.cpu():
                fold.add(page.records)
                fold.add_invalid(page.invalid, page.misfits)
            pages += 1
            url = (
                self._check_next_link(page.next_link, seen) if page.next_link is not None else None
            )
        return pages


def _require_guid(ca_id: str) -> None:
    if not is_guid(ca_id):
        raise GraphError("invalid_response", f"CA id {ca_id[:64]!r} is not a GUID")


def _too_late(failure: GraphError) -> GraphError:
    """``failure`` as the outcome: its retry would have come too late to be answered."""
    return GraphError(
        failure.reason, f"{failure} (the retry would pass the deadline)", failure.status
    )


def _path(url: str) -> str:
    """A URL without its query (skip tokens are long and say nothing to a reader)."""
    parts = urlsplit(url)
    return parts.path + ("?…" if parts.query else "")
