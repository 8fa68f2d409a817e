"""The fake Microsoft Graph (beta): the Cloud PKI CA collection and its leaf certificates.

Only what the exporter may call is served, with Graph's manners: opaque absolute
``@odata.nextLink`` URLs that work for GET and POST alike, the evolvable-enum rule for the
CA status, Intune-style error bodies (a JSON document inside ``message``), and 400 for the
query options Intune refuses.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pki_exporter.simulator.authority import TokenInfo
from pki_exporter.simulator.dataset import CAData, Dataset, TenantData
from pki_exporter.simulator.faults import FaultSet, Scope
from pki_exporter.simulator.messages import (
    GRAPH_JSON,
    Request,
    Response,
    graph_error,
    json_bytes,
)
from pki_exporter.simulator.render import (
    ACTION,
    LEAF_CONTEXT,
    NAVIGATION,
    PREFIX,
    LeafPages,
    make_skiptoken,
    navigation_url,
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
_NAV_OPTIONS = {"$select", "$filter", "$skiptoken", "$count", "$orderby"}
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
        return (
            paged("leaves_nav", "nav", ca_id)
            if method == "GET"
            else not_allowed("leaves_nav", ca_id)
        )
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
            filtered = self._filter(request)
            if isinstance(filtered, Response):
                return filtered
            return Response(
                200, str(self._count(pages, ca, filtered)).encode(), content_type="text/plain"
            )
        page = route.page or 0
        if page >= ca.pages:
            return graph_error(request, 400, "BadRequest", "The $skiptoken is invalid.")
        if route.endpoint == "leaves":
            return self._leaves(request, pages, ca, page)
        return self._navigation(request, pages, ca, page)

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

    def _filter(self, request: Request) -> tuple[str, str] | Response | None:
        text = request.query.get("$filter")
        if text is None:
            return None
        match = _FILTER.match(text)
        if match is None or match.group(1) not in LEAF_FIELDS:
            return graph_error(request, 400, "BadRequest", f"Invalid filter clause: {text}")
        return match.group(1), match.group(2).replace("''", "'")

    @staticmethod
    def _matching(records: list[Any], filtered: tuple[str, str] | None) -> list[Any]:
        if filtered is None:
            return records
        name, wanted = filtered
        return [r for r in records if isinstance(r, dict) and r.get(name) == wanted]

    def _count(self, pages: LeafPages, ca: CAData, filtered: tuple[str, str] | None) -> int:
        if filtered is None:
            return ca.spec.certificates
        return sum(len(self._matching(pages.records(ca, p), filtered)) for p in range(ca.pages))

    def _navigation(self, request: Request, pages: LeafPages, ca: CAData, page: int) -> Response:
        unknown = [k for k in request.query if k.startswith("$") and k not in _NAV_OPTIONS]
        if unknown:
            return graph_error(
                request,
                400,
                "BadRequest",
                intune_message(request, f"The query parameter '{unknown[0]}' is not supported."),
            )
        filtered = self._filter(request)
        if isinstance(filtered, Response):
            return filtered
        select_text = request.query.get("$select")
        select: list[str] | None = None
        if select_text is not None:
            select = [s.strip() for s in select_text.split(",") if s.strip()]
            bad = [s for s in select if s not in LEAF_FIELDS]
            if bad or not select:
                return graph_error(
                    request,
                    400,
                    "BadRequest",
                    f"Could not find a property named '{bad[0] if bad else ''}' on type "
                    "'microsoft.graph.cloudCertificationAuthorityLeafCertificate'.",
                )
        records = self._matching(pages.records(ca, page), filtered)
        if select is not None:
            records = [
                {k: r[k] for k in select if k in r} if isinstance(r, dict) else r for r in records
            ]
        context = self._base_url() + LEAF_CONTEXT
        if select is not None:
            context = context.replace(")", "(" + ",".join(select) + "))", 1)
        body: dict[str, Any] = {"@odata.context": context}
        if page == 0 and request.query.get("$count", "").lower() == "true":
            body["@odata.count"] = self._count(pages, ca, filtered)
        body["value"] = records
        if page + 1 < ca.pages:
            url = navigation_url(
                self._base_url(), ca.spec.id, select_text, request.query.get("$filter")
            )
            sep = "&" if "?" in url else "?"
            body["@odata.nextLink"] = (
                f"{url}{sep}$skiptoken={make_skiptoken('nav', ca.spec.id, page + 1)}"
            )
        return Response(200, json_bytes(body), content_type=GRAPH_JSON)
