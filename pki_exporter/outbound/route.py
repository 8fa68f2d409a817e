"""The route of a tenant: the proxy of each URL, the TLS trust, the clients built on them."""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpx

from pki_exporter.config.model import ManagedIdentityCredential, TenantConfig
from pki_exporter.outbound.proxies import (
    NoProxy,
    OutboundError,
    Proxy,
    env_variable,
    environment_proxies,
    parse_proxy,
    read_credentials,
)

# -- the route ---------------------------------------------------------------------------


class Route:
    """One tenant's way out. Build it with ``tenant_route``; share it between the token
    session, the Graph client and the CRL fetcher of the tenant."""

    def __init__(
        self,
        *,
        ca_bundle: str | None = None,
        proxy: str | None = None,
        no_proxy: tuple[str, ...] = (),
        environ: Mapping[str, str] | None = None,
        credentials_env: str | None = None,
        credentials_file: str | None = None,
    ) -> None:
        """``proxy``: the configured ``proxy_url`` (wins over ``environ``); ``environ``: the
        variables to read a proxy from (None: no proxy from the environment)."""
        self.ca_bundle = ca_bundle
        self._credentials_env = credentials_env
        self._credentials_file = credentials_file
        self._problem: OutboundError | None = None
        self._by_scheme: dict[str, Proxy] = {}
        self._lock = threading.Lock()
        self._credentials: tuple[str, str] | None = None
        self._credentials_read = False
        self._context: ssl.SSLContext | None = None
        try:
            if proxy:
                parsed = parse_proxy(proxy, "proxy_url")
                self._by_scheme = {"http": parsed, "https": parsed}
                self.no_proxy = NoProxy.parse(no_proxy)
            elif environ is not None:
                self._by_scheme = environment_proxies(environ)
                found = env_variable(environ, "no_proxy")
                self.no_proxy = NoProxy.parse(found[1] if found else ())
            else:
                self.no_proxy = NoProxy()
        except OutboundError as exc:
            self.no_proxy = NoProxy()
            self._problem = exc

    @classmethod
    def direct(cls, ca_bundle: str | None = None) -> Route:
        """No proxy at all (managed identity's metadata endpoint, tests)."""
        return cls(ca_bundle=ca_bundle)

    # -- the decision ----------------------------------------------------------------

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy ``url`` goes through (credentials filled in), or None for direct.
        Raises OutboundError when the route cannot be used (named in the message)."""
        if self._problem is not None:
            raise self._problem
        parts = urlsplit(url)
        proxy = self._by_scheme.get(parts.scheme.lower())
        if proxy is None or self.no_proxy.matches(parts.hostname or ""):
            return None
        if proxy.username is None:
            credentials = self.credentials()
            if credentials is not None:
                proxy = Proxy(proxy.scheme, proxy.host, proxy.port, proxy.source, *credentials)
        return proxy

    def describe(self, url: str) -> str:
        """``direct`` or ``via proxy http://host:port`` (never credentials), for people."""
        if self._problem is not None:
            return f"unusable ({self._problem})"
        parts = urlsplit(url)
        proxy = self._by_scheme.get(parts.scheme.lower())
        if proxy is None or self.no_proxy.matches(parts.hostname or ""):
            return "direct"
        return f"via proxy {proxy.url}"

    def credentials(self) -> tuple[str, str] | None:
        """The proxy's (user, password) from the config's env or file, read once it is
        needed; an unreadable source raises every time (it may be fixed before a retry)."""
        with self._lock:
            if not self._credentials_read:
                self._credentials = read_credentials(self._credentials_env, self._credentials_file)
                self._credentials_read = True
            return self._credentials

    # -- TLS ---------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """The trust of every TLS session of this route, direct or through a proxy."""
        with self._lock:
            if self._context is None:
                self._context = ssl_context(self.ca_bundle)
            return self._context

    # -- clients -----------------------------------------------------------------------

    def httpx_transport(self, **kwargs: Any) -> httpx.BaseTransport:
        """A transport that sends each request the way ``proxy_for`` says (``kwargs`` go to
        each ``httpx.HTTPTransport``: ``retries``, ``limits``, ...)."""
        return _RoutingTransport(self, kwargs)

    def httpx_client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` on this route: ``kwargs`` as for httpx.Client (timeout, headers,
        ...), but never ``verify``, ``proxy`` or ``trust_env``: the route decides those."""
        for key in ("verify", "proxy", "proxies", "mounts", "trust_env"):
            if key in kwargs:
                raise TypeError(f"httpx_client: {key} is the route's to decide")
        transport = kwargs.pop("transport", None) or self.httpx_transport()
        return httpx.Client(transport=transport, trust_env=False, **kwargs)

    def requests_proxies(self, url: str) -> dict[str, str]:
        """``proxies=`` for one requests call (an empty dict: direct)."""
        proxy = self.proxy_for(url)
        if proxy is None:
            return {}
        return {urlsplit(url).scheme.lower(): proxy.with_credentials()}


def tenant_route(tenant: TenantConfig, environ: Mapping[str, str] | None = None) -> Route:
    """The route of a tenant: its ``proxy_url`` and ``no_proxy``, else (with
    ``proxy_from_environment``) the process environment, read now."""
    if environ is None:
        environ = os.environ
    return Route(
        ca_bundle=tenant.ca_bundle,
        proxy=tenant.proxy_url,
        no_proxy=tuple(tenant.no_proxy),
        environ=dict(environ) if tenant.proxy_from_environment else None,
        credentials_env=tenant.proxy_credentials_env,
        credentials_file=tenant.proxy_credentials_file,
    )


def describe_routes(tenant: TenantConfig, route: Route) -> str:
    """Where each endpoint of the tenant is reached: ``direct`` or ``via proxy URL`` (for
    the log and ``--config.check.online``; never credentials)."""
    if isinstance(tenant.credential, ManagedIdentityCredential):
        first = "managed identity endpoint direct (never through a proxy)"
    else:
        first = f"token endpoint {tenant.authority_host} {route.describe(tenant.authority_host)}"
    return f"{first}, Graph {tenant.graph_url} {route.describe(tenant.graph_url)}"


_CONTEXTS: dict[tuple[str | None, int, int], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The system's roots, certifi's, and the configured bundle (``ca_bundle`` is extra trust,
    not a replacement: a TLS-inspecting proxy's CA, a private endpoint's CA).

    Shared per bundle (and its size and mtime: a replaced file is read again): loading the
    roots takes a tenth of a second, which every reload would otherwise pay per route."""
    stamp = (0, 0)
    if ca_bundle:
        try:
            stat = os.stat(ca_bundle)
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)  # let load_verify_locations say what is wrong
    key = (ca_bundle, *stamp)
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=certifi.where())
            if ca_bundle:
                context.load_verify_locations(cafile=ca_bundle)
            if len(_CONTEXTS) >= 32:
                _CONTEXTS.pop(next(iter(_CONTEXTS)))
            _CONTEXTS[key] = context
        return context


class _RoutingTransport(httpx.BaseTransport):
    """One httpx transport per way out (direct, each proxy), chosen per request."""

    def __init__(self, route: Route, kwargs: dict[str, Any]) -> None:
        self._route = route
        self._kwargs = kwargs
        self._lock = threading.Lock()
        self._transports: dict[Proxy | None, httpx.HTTPTransport] = {}

    def _transport(self, proxy: Proxy | None) -> httpx.HTTPTransport:
        with self._lock:
            transport = self._transports.get(proxy)
            if transport is None:
                context = self._route.ssl_context()
                httpx_proxy = None
                if proxy is not None:
                    auth = (
                        None if proxy.username is None else (proxy.username, proxy.password or "")
                    )
                    httpx_proxy = httpx.Proxy(
                        proxy.url,
                        auth=auth,
                        ssl_context=context if proxy.scheme == "https" else None,
                    )
                transport = httpx.HTTPTransport(verify=context, proxy=httpx_proxy, **self._kwargs)
                self._transports[proxy] = transport
            return transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            proxy = self._route.proxy_for(str(request.url))
        except OutboundError as exc:
            raise RouteUnusable(str(exc), exc.reason, request=request) from None
        return self._transport(proxy).handle_request(request)

    def close(self) -> None:
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            transport.close()


class RouteUnusable(httpx.TransportError):
    """The route could not be used (httpx's side of OutboundError)."""

    def __init__(self, message: str, reason: str, *, request: httpx.Request) -> None:
        super().__init__(message, request=request)
        self.reason = reason
