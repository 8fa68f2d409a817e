"""Proxies and ``no_proxy`` as curl reads them, and the proxy's credentials.

Parsing only: which proxy a URL takes is ``route.Route``'s to decide.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from pki_exporter.runtime import logs


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


def env_variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(variable, value) of ``name`` in lower case, else upper case (curl's order)."""
    for variable in (name.lower(), name.upper()):
        value = environ.get(variable, "").strip()
        if value:
            return variable, value
    return None


def environment_proxies(environ: Mapping[str, str]) -> dict[str, Proxy]:
    found: dict[str, Proxy] = {}
    fallback = env_variable(environ, "all_proxy")
    for scheme in ("http", "https"):
        entry = env_variable(environ, f"{scheme}_proxy") or fallback
        if entry is not None:
            found[scheme] = parse_proxy(entry[1], entry[0])
    return found


def read_credentials(env: str | None, path: str | None) -> tuple[str, str] | None:
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
