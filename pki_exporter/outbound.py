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
response, ``proxy_response_failure(route, url, status, phrase)`` tells a proxy's 407.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import certifi
import httpx

from pki_exporter.config.model import TenantConfig
from pki_exporter.runtime import logs

#: the longest upstream text (an exception's own words) kept in an error line
MAX_DETAIL = 600


class OutboundError(Exception):
    """A route that cannot be used as configured (unreadable proxy credentials, a proxy
    scheme we do not speak). One line, no secret; counts under ``reason``."""

    def __init__(self, message: str, reason: str = "network") -> None:
        super().__init__(message)
        self.reason = reason


# -- proxies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxy:
    """A proxy server; ``url`` (``scheme://host:port``) is what logs and errors show."""

    scheme: str
    host: str
    port: int
    source: str
    """Where it came from: ``proxy_url`` or the variable's name (``HTTPS_PROXY``)."""
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def with_credentials(self) -> str:
        """The URL with ``user:password@`` (percent-encoded), for the HTTP libraries only."""
        if self.username is None:
            return self.url
        userinfo = quote(self.username, safe="") + ":" + quote(self.password or "", safe="")
        return self.url.replace("://", f"://{userinfo}@", 1)


def parse_proxy(text: str, source: str) -> Proxy:
    """``[scheme://][user:password@]host[:port]`` -> Proxy (curl's default scheme is http)."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise OutboundError(
            f"{source}: {scheme} proxies are not supported (an http:// or https:// proxy is)"
        )
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise OutboundError(f"{source}: not a proxy URL (bad port)") from None
    if not host:
        raise OutboundError(f"{source}: not a proxy URL (no host)")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if password:
        logs.register_secret(password)
    return Proxy(
        scheme, host, port or (443 if scheme == "https" else 80), source, username, password
    )


# -- no_proxy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NoProxy:
    """``no_proxy`` as curl reads it: ``*``; a host name that matches itself and its
    subdomains (a leading dot or ``*.`` changes nothing); an IP; a CIDR. Ports in entries
    are ignored, as by curl."""

    everything: bool = False
    names: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: tuple[str, ...] | list[str] | str) -> NoProxy:
        if isinstance(entries, str):
            entries = entries.split(",")
        names: list[str] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        everything = False
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                everything = True
                continue
            network = _network(entry)
            if network is not None:
                networks.append(network)
                continue
            entry = entry.removeprefix("*").lstrip(".")
            host, _, port = entry.rpartition(":")
            if host and port.isdigit():
                entry = host
            if entry:
                names.append(entry.rstrip("."))
        return cls(everything, tuple(names), tuple(networks))

    def matches(self, host: str) -> bool:
        if self.everything:
            return True
        host = host.lower().strip("[]").rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(host == name or host.endswith("." + name) for name in self.names)
        return any(address in network for network in self.networks) or host in self.names


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    text = entry.strip("[]")
    if "]" in entry and entry.startswith("["):  # [::1]:443
        text = entry[1 : entry.index("]")]
    elif entry.count(":") == 1 and "/" not in entry:  # 10.0.0.1:443
        text = entry.split(":", 1)[0]
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


# -- the environment, as curl reads it ---------------------------------------------------


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(variable, value) of ``name`` in lower case, else upper case (curl's order)."""
    for variable in (name.lower(), name.upper()):
        value = environ.get(variable, "").strip()
        if value:
            return variable, value
    return None


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
                self._by_scheme = _environment_proxies(environ)
                found = _env(environ, "no_proxy")
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
            credentials = self._read_credentials()
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

    def _read_credentials(self) -> tuple[str, str] | None:
        with self._lock:
            if not self._credentials_read:
                self._credentials = _read_credentials(self._credentials_env, self._credentials_file)
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


def _environment_proxies(environ: Mapping[str, str]) -> dict[str, Proxy]:
    found: dict[str, Proxy] = {}
    fallback = _env(environ, "all_proxy")
    for scheme in ("http", "https"):
        entry = _env(environ, f"{scheme}_proxy") or fallback
        if entry is not None:
            found[scheme] = parse_proxy(entry[1], entry[0])
    return found


def _read_credentials(env: str | None, path: str | None) -> tuple[str, str] | None:
    if env:
        text = os.environ.get(env, "")
        if not text:
            raise OutboundError(f"proxy credentials: environment variable {env} is not set", "auth")
        where = f"environment variable {env}"
    elif path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OutboundError(
                f"proxy credentials: cannot read {path}: {exc.strerror or exc}", "auth"
            ) from None
        where = path
    else:
        return None
    user, colon, password = text.strip().partition(":")
    if not colon or not user:
        raise OutboundError(f"proxy credentials: {where} does not hold user:password", "auth")
    logs.register_secret(password)
    logs.register_secret(text.strip())
    return user, password


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The system's roots, certifi's, and the configured bundle (``ca_bundle`` is extra trust,
    not a replacement: a TLS-inspecting proxy's CA, a private endpoint's CA)."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
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


# -- telling a failure -------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A failed request, told in one whole line: ``reason`` is the label it counts under."""

    reason: str
    message: str


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (``__cause__``, ``__context__``, urllib3's ``reason``,
    exceptions passed as arguments), outermost first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner: list[object] = [
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
        ]
        inner.extend(current.args)
        queue.extend(e for e in inner if isinstance(e, BaseException))


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` on one line; past ``limit`` characters (a long upstream body) it is cut and
    says so. Callers put the cause first, so that a cut never loses it."""
    text = " ".join(text.split())
    if len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    host = parts.hostname or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect_status(exc: BaseException) -> int | None:
    """The status of a refused CONNECT. Neither library keeps it as a number: httpcore
    raises ``ProxyError("%d %s")`` and http.client ``OSError("Tunnel connection failed:
    %d %s")``, both built from the proxy's status line; the number is read back from there."""
    for cause in _causes(exc):
        if type(cause).__name__ != "ProxyError" and not (
            type(cause) is OSError and str(cause).startswith("Tunnel connection failed:")
        ):
            continue
        text = str(cause).removeprefix("Tunnel connection failed:").strip()
        head = text[:3]
        if head.isdigit() and (len(text) == 3 or text[3] == " "):
            return int(head)
    return None


def describe_failure(route: Route, url: str, exc: BaseException) -> Failure:
    """An exception raised on the way to ``url`` (httpx or requests) as one whole line that
    names the host and port, the route (``via proxy ...``) and the hint that fixes the
    common cases; its reason is ``timeout``, ``auth`` (the proxy refused our credentials,
    or they cannot be read) or ``network``."""
    target = _hostport(url)
    shown = url.split("?", 1)[0] + ("?…" if "?" in url else "")  # skip tokens say nothing
    via = route.describe(url)
    prefix = f"{via}: " if via.startswith("via proxy") else ""
    proxy_hint = via.startswith("via proxy")
    reason_of = getattr(exc, "reason", None)
    if isinstance(exc, (OutboundError, RouteUnusable)) and isinstance(reason_of, str):
        return Failure(reason_of, str(exc))
    status = _connect_status(exc) if proxy_hint else None
    if status is not None:
        return _proxy_status(route, url, status, _status_text(exc))
    causes = list(_causes(exc))
    timeout = any(
        isinstance(c, (httpx.TimeoutException, socket.timeout, TimeoutError))
        or type(c).__name__
        in ("ConnectTimeout", "ReadTimeout", "ConnectTimeoutError", "ReadTimeoutError")
        for c in causes
    )
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            hint = (
                "if the proxy inspects TLS, add its CA to ca_bundle"
                if proxy_hint
                else "add the CA that issued the server's certificate to ca_bundle"
            )
            detail = cause.verify_message or cause.reason or str(cause)
            return Failure(
                "network",
                one_line(f"{prefix}TLS to {target}: certificate verify failed: {detail} ({hint})"),
            )
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            if proxy_hint:
                return Failure(
                    "network",
                    one_line(
                        f"{prefix}cannot connect to the proxy: connection refused "
                        f"(is it running? tried {shown})"
                    ),
                )
            return Failure("network", one_line(f"connection refused by {target} (tried {shown})"))
        if isinstance(cause, socket.gaierror):
            where = "the proxy's host" if proxy_hint else "host"
            return Failure(
                "network",
                one_line(f"{prefix}cannot resolve {where} of {url}: {cause.strerror or cause}"),
            )
    if timeout:
        phase = (
            "connecting to"
            if any("Connect" in type(c).__name__ or "Pool" in type(c).__name__ for c in causes)
            else "waiting for an answer from"
        )
        return Failure("timeout", one_line(f"{prefix}timed out {phase} {target} (tried {shown})"))
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            return Failure("network", one_line(f"{prefix}TLS to {target}: {cause}"))
    innermost = causes[-1] if causes else exc
    text = str(innermost) or type(innermost).__name__
    return Failure("network", one_line(f"{prefix}{target}: {text}"))


def _status_text(exc: BaseException) -> str:
    for cause in _causes(exc):
        text = str(cause).removeprefix("Tunnel connection failed:").strip()
        if text[:3].isdigit():
            return text
    return str(exc)


def _proxy_status(route: Route, url: str, status: int, text: str) -> Failure:
    via = route.describe(url)
    target = _hostport(url)
    if status == 407:
        return Failure(
            "auth",
            one_line(
                f"{via}: {text} for {target} (the proxy refused its credentials: check "
                "proxy_credentials_env / proxy_credentials_file)"
            ),
        )
    return Failure("network", one_line(f"{via}: {text} for CONNECT {target}"))


def proxy_response_failure(route: Route, url: str, status: int, phrase: str) -> Failure | None:
    """A plain-HTTP response that came from the proxy itself rather than the origin: a 407
    (only proxies send it) when ``url`` went through one. None for any other answer."""
    if status != 407 or not route.describe(url).startswith("via proxy"):
        return None
    return _proxy_status(route, url, status, f"{status} {phrase}".strip())
