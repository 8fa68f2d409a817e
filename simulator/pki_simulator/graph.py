"""The fake Microsoft Graph (beta): the Cloud PKI CA collection and its leaf certificates.

Only what the exporter may call is served, with Graph's manners: opaque absolute
``@odata.nextLink`` URLs that work for GET and POST alike, the evolvable-enum rule for the
CA status, Intune-style error bodies (a JSON document inside ``message``), and 400 for the
query options Intune refuses.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from pki_simulator.authority import TokenInfo
from pki_simulator.dataset import CAData, Dataset, TenantData
from pki_simulator.faults import FaultSet, Scope
from pki_simulator.messages import GRAPH_JSON, Request, Response, graph_error, json_bytes
from pki_simulator.render import (
    ACTION,
    LEAF_CONTEXT,
    NAVIGATION,
    PREFIX,
    LeafPages,
    NavPosition,
    make_nav_token,
    make_skiptoken,
    navigation_url,
    read_nav_token,
    read_skiptoken,
)

LEAF_FIELDS = (
    "id", "subjectName", "issuerId", "issuerName", "certificateStatus",
    "validityStartDateTime", "validityEndDateTime", "crlDistributionPointUrl",
    "certificationAuthorityIssuerUri", "ocspResponderUri", "thumbprint", "serialNumber",
    "revocationDateTime", "deviceName", "userPrincipalName", "deviceId", "userId",
    "devicePlatform", "keyUsages", "extendedKeyUsages", "certificationAuthorityVersionNumber",
)  # fmt: skip
_FILTER = re.compile(r"^\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*$")
#: the fields the navigation property can $filter on (validityEndDateTime: $orderby only)
FILTERABLE = ("certificateStatus",)
_ORDER = re.compile(r"^\s*(\w+)(?:\s+(asc|desc))?\s*$", re.IGNORECASE)
_DIGITS = re.compile(r"^[0-9]{1,18}$")
_NAV_OPTIONS = {"$select", "$filter", "$skiptoken", "$count", "$orderby", "$top", "$skip"}
_COUNT_OPTIONS = {"$filter"}
#: the largest page the navigation property serves (``Prefer: odata.maxpagesize``)
MAX_PAGE_SIZE = 999
_VIEWS = 8
_LEAF_TYPE = "microsoft.graph.cloudCertificationAuthorityLeafCertificate"
_CA_LIST_CONTEXT = "/beta/$metadata#deviceManagement/cloudCertificationAuthority"


@dataclass(frozen=True)
class GraphRoute:
    """A parsed Graph request: which endpoint, which CA, which page (0-based)."""

    endpoint: str
    ca_id: str | None = None
    page: int | None = None
    error: Response | None = None


def is_graph_path(path: str) -> bool:
    lowered = path.lower()
    return lowered.startswith(("/beta/", "/v1.0/")) or lowered in ("/beta", "/v1.0")


def _not_found_segment(request: Request, segment: str) -> Response:
    return graph_error(
        request, 400, "BadRequest", f"Resource not found for the segment '{segment}'."
    )


def intune_message(request: Request, text: str) -> str:
    """Intune wraps its own error document in Graph's ``message`` as a JSON string."""
    return json.dumps(
        {
            "_version": 3,
            "Message": f"{text} - Operation ID (for customer support): {uuid.uuid4()} - "
            f"Activity ID: {request.client_request_id or request.request_id} - "
            f"Url: https://fef.simulated.manage.microsoft.com{request.path}",
            "CustomApiErrorPhrase": "",
            "RetryAfter": None,
            "ErrorSourceService": "",
            "HttpHeaders": "{}",
        },
        separators=(",", ":"),
    )


def resolve(request: Request) -> GraphRoute:
    """Which Graph endpoint a request is for (no tenant knowledge needed yet)."""
    raw = request.path.rstrip("/")
    if not raw.lower().startswith(PREFIX.lower()):
        first = raw.split("/")[2:3]
        return GraphRoute("unknown", error=_not_found_segment(request, "/".join(first) or raw))
    tail = raw[len(PREFIX) :]
    if tail and not tail.startswith("/"):
        # e.g. the top-level .../cloudCertificationAuthorityLeafCertificate: in the schema,
        # but 404 on a real tenant
        return GraphRoute(
            "unknown",
            error=graph_error(
                request, 404, "ResourceNotFound", intune_message(request, "Not found")
            ),
        )
    rest = [unquote(s) for s in tail.split("/")[1:]]
    token = request.query.get("$skiptoken")
    method = request.method

    def not_allowed(endpoint: str, ca_id: str | None = None) -> GraphRoute:
        return GraphRoute(
            endpoint,
            ca_id,
            error=graph_error(
                request,
                405,
                "BadRequest",
                f"The HTTP method '{method}' is not supported for this resource.",
            ),
        )

    def paged(endpoint: str, view: str, ca_id: str) -> GraphRoute:
        if token is None:
            return GraphRoute(endpoint, ca_id or None, 0)
        parsed = read_skiptoken(token)
        if parsed is None or parsed[0] != view or parsed[1] != ca_id.lower():
            return GraphRoute(
                endpoint,
                ca_id or None,
                error=graph_error(request, 400, "BadRequest", "The $skiptoken is invalid."),
            )
        return GraphRoute(endpoint, ca_id or None, parsed[2])

    if not rest:
        return paged("ca_list", "calist", "") if method == "GET" else not_allowed("ca_list")
    ca_id = rest[0]
    if len(rest) == 1:
        return GraphRoute("ca_get", ca_id) if method == "GET" else not_allowed("ca_get", ca_id)
    segment = rest[1].lower()
    if len(rest) == 2 and segment == ACTION.lower():
        if method == "POST" or (method == "GET" and token is not None):
            return paged("leaves", "action", ca_id)
        return not_allowed("leaves", ca_id)
    if segment == NAVIGATION.lower() and len(rest) == 2:
        if method != "GET":
            return not_allowed("leaves_nav", ca_id)
        if token is None:
            return GraphRoute("leaves_nav", ca_id, 0)
        position = read_nav_token(token)
        if position is None or position.ca_id != ca_id.lower():
            return GraphRoute(
                "leaves_nav",
                ca_id,
                error=graph_error(request, 400, "BadRequest", "The $skiptoken is invalid."),
            )
        return GraphRoute("leaves_nav", ca_id, position.page)
    if segment == NAVIGATION.lower() and len(rest) == 3 and rest[2] == "$count":
        return (
            GraphRoute("leaves_count", ca_id)
            if method == "GET"
            else not_allowed("leaves_count", ca_id)
        )
    return GraphRoute("unknown", ca_id, error=_not_found_segment(request, rest[-1]))


def ca_value(ca: CAData, include_unknown_enum_members: bool) -> dict[str, Any]:
    """The CA resource; ``expired`` sits after the enum's sentinel, so it needs the Prefer."""
    value = dict(ca.record())
    if value.get("certificationAuthorityStatus") == "expired" and not include_unknown_enum_members:
        value["certificationAuthorityStatus"] = "unknownFutureValue"
    return value


class Graph:
    """Answers resolved Graph requests for the tenant a bearer token belongs to."""

    def __init__(
        self,
        state: Callable[[], tuple[Dataset, LeafPages]],
        faults: FaultSet,
        base_url: Callable[[], str],
    ) -> None:
        self._state = state
        self._faults = faults
        self._base_url = base_url
        self._views_lock = threading.Lock()
        #: filtered/ordered views, most recent last: key -> (the page cache, records)
        self._views: OrderedDict[Any, tuple[LeafPages, list[Any]]] = OrderedDict()

    def handle(self, request: Request, route: GraphRoute, token: TokenInfo) -> Response:
        dataset, pages = self._state()
        tenant = dataset.tenant(token.tenant_id)
        if tenant is None:
            return graph_error(request, 401, "InvalidAuthenticationToken", "Unknown tenant.")
        if route.endpoint == "ca_list":
            return self._ca_list(request, dataset, tenant, route.page or 0)
        ca = tenant.ca(route.ca_id or "")
        if ca is None or ca.spec.id.lower() in self._faults.gone_cas(tenant.spec.tenant_id):
            return graph_error(
                request,
                404,
                "ResourceNotFound",
                intune_message(request, "An error has occurred"),
            )
        if route.endpoint == "ca_get":
            value = ca_value(ca, request.prefers("include-unknown-enum-members"))
            value = {
                "@odata.context": self._base_url() + _CA_LIST_CONTEXT + "/$entity",
                **value,
            }
            return Response(200, json_bytes(value))
        if route.endpoint == "leaves_count":
            return self._count_endpoint(request, pages, ca)
        page = route.page or 0
        if route.endpoint == "leaves":
            if page >= ca.pages:
                return graph_error(request, 400, "BadRequest", "The $skiptoken is invalid.")
            return self._leaves(request, pages, ca, page)
        return self._navigation(request, pages, ca)

    def _ca_list(
        self, request: Request, dataset: Dataset, tenant: TenantData, page: int
    ) -> Response:
        gone = self._faults.gone_cas(tenant.spec.tenant_id)
        visible = [ca for ca in tenant.cas if ca.spec.id.lower() not in gone]
        size = dataset.spec.ca_page_size
        include = request.prefers("include-unknown-enum-members")
        chunk = visible[page * size : (page + 1) * size]
        if page and not chunk:
            return graph_error(request, 400, "BadRequest", "The $skiptoken is invalid.")
        body: dict[str, Any] = {
            "@odata.context": self._base_url() + _CA_LIST_CONTEXT,
            "value": [ca_value(ca, include) for ca in chunk],
        }
        if (page + 1) * size < len(visible):
            body["@odata.nextLink"] = (
                f"{self._base_url()}{PREFIX}?$skiptoken={make_skiptoken('calist', '', page + 1)}"
            )
        return Response(200, json_bytes(body))

    def _leaves(self, request: Request, pages: LeafPages, ca: CAData, page: int) -> Response:
        foreign = None
        if page + 1 < ca.pages:
            fault = self._faults.take(
                Scope("graph", ca.tenant.spec.tenant_id, ca.spec.id, page), ("foreign_next_link",)
            )
            if fault is not None:
                foreign = fault.next_link_base or "https://another-host.invalid"
        gzip = request.accepts_gzip()
        response = Response(
            200,
            pages.body(ca, page, gzip=False, next_link_base=foreign),
            fault="foreign_next_link" if foreign else None,
        )
        if gzip:
            response.gzip_body = pages.body(ca, page, gzip=True, next_link_base=foreign)
        return response

    # --- the navigation property --------------------------------------------------------

    def _filter(self, request: Request) -> tuple[str, str] | Response | None:
        text = request.query.get("$filter")
        if text is None:
            return None
        match = _FILTER.match(text)
        if match is None:
            return graph_error(request, 400, "BadRequest", f"Invalid filter clause: {text}")
        name = match.group(1)
        if name not in LEAF_FIELDS:
            return _no_property(request, name)
        if name not in FILTERABLE:
            return graph_error(
                request,
                400,
                "BadRequest",
                intune_message(request, f"Filtering on the property '{name}' is not supported."),
            )
        return name, match.group(2).replace("''", "'")

    def _order(self, request: Request) -> list[tuple[str, bool]] | Response | None:
        text = request.query.get("$orderby")
        if text is None:
            return None
        clauses: list[tuple[str, bool]] = []
        for clause in text.split(","):
            match = _ORDER.match(clause)
            if match is None:
                return graph_error(request, 400, "BadRequest", f"Invalid $orderby: {text}")
            if match.group(1) not in LEAF_FIELDS:
                return _no_property(request, match.group(1))
            clauses.append((match.group(1), (match.group(2) or "asc").lower() == "desc"))
        return clauses

    def _unknown_options(self, request: Request, allowed: set[str]) -> Response | None:
        unknown = [k for k in request.query if k.startswith("$") and k not in allowed]
        if not unknown:
            return None
        return graph_error(
            request,
            400,
            "BadRequest",
            intune_message(request, f"The query parameter '{unknown[0]}' is not supported."),
        )

    def _view(
        self,
        pages: LeafPages,
        ca: CAData,
        filtered: tuple[str, str] | None,
        order: list[tuple[str, bool]] | None,
    ) -> list[Any] | None:
        """The CA's records filtered and ordered (cached), or None for the plain action
        order, which is read page by page instead of all at once."""
        if filtered is None and not order:
            return None
        key = (ca.tenant.spec.tenant_id, ca.spec.id, filtered, tuple(order or ()))
        with self._views_lock:
            found = self._views.get(key)
            if found is not None and found[0] is pages:
                self._views.move_to_end(key)
                return found[1]
        records = pages.slice(ca, 0, sum(ca.page_sizes))
        if filtered is not None:
            name, wanted = filtered
            records = [r for r in records if isinstance(r, dict) and r.get(name) == wanted]
        for name, descending in reversed(order or ()):
            records.sort(key=functools.partial(_order_key, name=name), reverse=descending)
        with self._views_lock:
            self._views[key] = (pages, records)
            while len(self._views) > _VIEWS:
                self._views.popitem(last=False)
        return records

    def _count_endpoint(self, request: Request, pages: LeafPages, ca: CAData) -> Response:
        bad = self._unknown_options(request, _COUNT_OPTIONS)
        if bad is not None:
            return bad
        filtered = self._filter(request)
        if isinstance(filtered, Response):
            return filtered
        view = self._view(pages, ca, filtered, None)
        count = sum(ca.page_sizes) if view is None else len(view)
        return Response(200, str(count).encode(), content_type="text/plain")

    def _navigation(self, request: Request, pages: LeafPages, ca: CAData) -> Response:
        bad = self._unknown_options(request, _NAV_OPTIONS)
        if bad is not None:
            return bad
        filtered = self._filter(request)
        if isinstance(filtered, Response):
            return filtered
        order = self._order(request)
        if isinstance(order, Response):
            return order
        select_text = request.query.get("$select")
        select: list[str] | None = None
        if select_text is not None:
            select = [s.strip() for s in select_text.split(",") if s.strip()]
            bad_fields = [s for s in select if s not in LEAF_FIELDS]
            if bad_fields or not select:
                return _no_property(request, bad_fields[0] if bad_fields else "")
        numbers: dict[str, int] = {}
        for option in ("$top", "$skip"):
            text = request.query.get(option)
            if text is None:
                continue
            if not _DIGITS.match(text):
                return graph_error(
                    request, 400, "BadRequest", f"Invalid value '{text}' for {option}."
                )
            numbers[option] = int(text)
        headers: list[tuple[str, str]] = []
        size: int | None = None
        wanted = request.preference("odata.maxpagesize")
        if wanted is not None and _DIGITS.match(wanted) and int(wanted) > 0:
            size = min(int(wanted), MAX_PAGE_SIZE)
            headers.append(("Preference-Applied", f"odata.maxpagesize={size}"))
        token = request.query.get("$skiptoken")
        position = read_nav_token(token) if token is not None else None
        view = self._view(pages, ca, filtered, order)
        total = sum(ca.page_sizes) if view is None else len(view)
        if position is not None:
            page, start, stop = position.page, position.start, position.stop
            size = size or position.size
        else:
            page, start = 0, numbers.get("$skip", 0)
            stop = start + numbers["$top"] if "$top" in numbers else -1
            size = size or ca.spec.page_size
        end = total if stop < 0 else min(stop, total)
        last = max(start, min(start + size, end))
        context = self._base_url() + LEAF_CONTEXT
        if select is not None:
            context = context.replace(")", "(" + ",".join(select) + "))", 1)
        head: dict[str, Any] = {"@odata.context": context}
        if position is None and request.query.get("$count", "").lower() == "true":
            head["@odata.count"] = total
        if view is None:
            # the plain order: records ready-encoded per action page (large CAs)
            parts = pages.encoded_slice(ca, start, last, None if select is None else tuple(select))
            values = b"[" + b",".join(parts) + b"]"
        else:
            records = view[start:last]
            if select is not None:
                records = [
                    {k: r[k] for k in select if k in r} if isinstance(r, dict) else r
                    for r in records
                ]
            values = json_bytes(records)
        tail = b""
        if last < end:
            url = navigation_url(
                self._base_url(),
                ca.spec.id,
                select_text,
                request.query.get("$filter"),
                request.query.get("$orderby"),
            )
            sep = "&" if "?" in url else "?"
            following = NavPosition(ca.spec.id, page + 1, last, size, stop)
            link = f"{url}{sep}$skiptoken={make_nav_token(following)}"
            tail = b',"@odata.nextLink":' + json_bytes(link)
        body = json_bytes(head)[:-1] + b',"value":' + values + tail + b"}"
        response = Response(200, body, content_type=GRAPH_JSON, headers=headers)
        if view is None and request.accepts_gzip():
            # same options, same position: same bytes; compress each page once
            where = (page, start, last, size, stop, "@odata.count" in head)
            key = (ca.tenant.spec.tenant_id, ca.spec.id, select_text, *where)
            response.gzip_body = pages.nav_gzip(key, body)
        return response


def _no_property(request: Request, name: str) -> Response:
    return graph_error(
        request,
        400,
        "BadRequest",
        f"Could not find a property named '{name}' on type '{_LEAF_TYPE}'.",
    )


def _order_key(record: Any, name: str) -> tuple[int, float, str]:
    """Nulls (and non-objects) first, then dates in time order, then other values as text."""
    value = record.get(name) if isinstance(record, dict) else None
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, str) and name.endswith("DateTime"):
        try:
            return (1, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp(), "")
        except ValueError:
            pass
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (2, float(value), "")
    return (3, 0.0, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
