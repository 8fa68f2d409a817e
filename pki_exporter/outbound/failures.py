"""A failed request told in one whole line: the host and port, the route, the cause, the
hint that fixes the common cases, and the ``reason`` it counts under."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from pki_exporter.outbound.proxies import OutboundError
from pki_exporter.outbound.route import Route, RouteUnusable

#: the longest upstream text (an exception's own words) kept in an error line
MAX_DETAIL = 600


# -- telling a failure -------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A failed request, told in one whole line: ``reason`` is the label it counts under."""

    reason: str
    message: str


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (``__cause__``, urllib3's ``reason``, exceptions
    passed as arguments), outermost first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # Not __context__: that is whatever was being handled, maybe long over (requests
        # wraps without ``from``, but passes the cause as an argument).
        inner: list[object] = [current.__cause__, getattr(current, "reason", None)]
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


def status_text(route: Route, url: str, status: int, phrase: str) -> str:
    """An HTTP status that is not a success, for an error line: ``HTTP 503`` direct; through
    a proxy ``via proxy URL: HTTP 503 Service Unavailable for host:port``, since a plain-HTTP
    answer may be the proxy's own (it could not reach the host, it refused the request)
    rather than the server's, and whoever reads the line must know the proxy was in the way."""
    via = route.describe(url)
    if not via.startswith("via proxy"):
        return f"HTTP {status}"
    return one_line(f"{via}: {f'HTTP {status} {phrase}'.strip()} for {_hostport(url)}")
