"""The outbound route of a tenant: which proxy (if any) each request takes, what TLS trusts,
and how a failure on the way is told.

Everything the exporter sends for a tenant (the token endpoint through MSAL's requests
session, Graph through httpx, CRLs and CA certificates through httpx) asks one ``Route``,
so that a proxy, ``no_proxy`` and ``ca_bundle`` mean the same for all of them. Before this
existed, the token session turned the environment off to make ``ca_bundle`` win over
``REQUESTS_CA_BUNDLE`` and so went direct while Graph went through ``HTTPS_PROXY``.

The decision for a URL, as curl makes it: the tenant's ``proxy_url`` with its
``no_proxy``; else, with ``proxy_from_environment``, ``https_proxy`` / ``http_proxy`` (then
``all_proxy``) and ``no_proxy``, lower case before upper case. The route reads no variable
after it is built and does no I/O until a proxied request needs the proxy's credentials.

Proxy credentials (``user:password``) come from ``proxy_credentials_env`` or
``proxy_credentials_file``, or from the environment's proxy URL; the password is registered
as a secret and the proxy is only ever shown as ``scheme://host:port``. They are read at
the first proxied request and kept for the life of the route (a reload builds a new one).

For a caller (the CRL fetcher, say): ``route = tenant_route(tenant)``, then
``route.httpx_client(timeout=..., headers=...)``; on an ``httpx.TransportError``,
``describe_failure(route, url, exc)`` gives the reason and the whole line; on a plain-HTTP
response, ``proxy_response_failure(route, url, status, phrase)`` tells a proxy's 407, and
``status_text(route, url, status, phrase)`` any other status (naming the proxy it came
through: a proxy answers plain-HTTP requests itself when it cannot reach the host).
"""

from pki_exporter.outbound.failures import (
    MAX_DETAIL,
    Failure,
    describe_failure,
    one_line,
    proxy_response_failure,
    status_text,
)
from pki_exporter.outbound.proxies import NoProxy, OutboundError, Proxy, parse_proxy
from pki_exporter.outbound.route import (
    Route,
    RouteUnusable,
    describe_routes,
    ssl_context,
    tenant_route,
)

__all__ = [
    "MAX_DETAIL",
    "Failure",
    "NoProxy",
    "OutboundError",
    "Proxy",
    "Route",
    "RouteUnusable",
    "describe_failure",
    "describe_routes",
    "one_line",
    "parse_proxy",
    "proxy_response_failure",
    "ssl_context",
    "status_text",
    "tenant_route",
]
