"""The config's types: frozen msgspec Structs that hold every rule of their keys.

Each key's type says what it holds and how it is read, in one place (as
blackbox_exporter's ``UnmarshalYAML`` does: defaults, decoding and checks together):

- `Annotated` types carry msgspec `Meta` constraints (ranges, lengths, patterns);
- `Meta.extra` says what msgspec cannot: ``message`` (the words for a value that does not
  match the pattern), ``read`` (turns what the file holds into the value: ``5m`` -> 300.0,
  ``64MiB`` -> bytes, an https URL -> its origin; raises `Invalid`), ``show`` (how a bound
  is written back: ``7d``, ``1GiB``), ``file`` (a path read from the config's directory),
  ``unique`` (a key no two items of a list share), ``not_a_key`` (a field the file cannot
  set); and for `check`, what to look at outside the file: ``env`` (a variable that must
  be set), ``pem`` (a file holding that PEM block), ``pair`` (``user:password``);
- rules across fields are ``__post_init__`` methods that raise `Invalid`, and fill in what
  follows from other fields (a cloud's URLs).

`load` walks a YAML document along these definitions and words every message itself (no
second schema, no msgspec English). The Structs are also the values the rest of the exporter
reads: built once at load time, then only read (``tenant.graph_url``, ``config.crl``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, ClassVar, Literal, TypeAlias
from urllib.parse import urlsplit

import msgspec
from msgspec.structs import force_setattr

from pki_exporter.runtime.ids import GUID_PATTERN

__all__ = [
    "CLOUDS",
    "DEFAULT_WINDOWS",
    "LEAF_SOURCES",
    "MAX_BUDGET",
    "MAX_CONCURRENCY",
    "MAX_INTERVAL",
    "MAX_NAME_LENGTH",
    "MAX_TIMEOUT",
    "MAX_WINDOW_DAYS",
    "CARef",
    "CRLConfig",
    "CertificateCredential",
    "ClientSecretEnv",
    "ClientSecretFile",
    "ClientSecretInline",
    "Cloud",
    "Config",
    "Credential",
    "GraphBudgetConfig",
    "Invalid",
    "LeafSource",
    "ManagedIdentityCredential",
    "RefreshConfig",
    "TenantConfig",
    "WorkloadIdentityCredential",
    "duration_seconds",
]

# ----------------------------------------------------------------------------- limits

MAX_NAME_LENGTH = 64
MAX_CONCURRENCY = 64
MAX_WINDOW_DAYS = 3650
MAX_INTERVAL = 7 * 86400.0  # beyond a week the expiry windows would be stale anyway
MAX_TIMEOUT = 3600.0
MAX_BUDGET = 100_000  # Graph's own ceiling per app across all tenants is 130,000 per 10 s
MAX_HOST_LENGTH = 253
DEFAULT_WINDOWS = (7, 30, 90)
MAX_CRL_SIZE = 1 << 30  # 1 GiB: far beyond any real CRL (a 100,000-entry CRL is ~3 MB)
MAX_GRACE = 7 * 86400.0  # a CRL is valid for 7 days: a longer grace would hide every lapse

CLOUDS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "global": ("https://graph.microsoft.com", "https://login.microsoftonline.com"),
        "usgov": ("https://graph.microsoft.us", "https://login.microsoftonline.us"),
        "usgov-dod": ("https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
        "china": ("https://microsoftgraph.chinacloudapi.cn", "https://login.chinacloudapi.cn"),
    }
)
Cloud = Literal["global", "usgov", "usgov-dod", "china"]
LeafSource = Literal["action", "navigation"]
LEAF_SOURCES: tuple[LeafSource, ...] = ("action", "navigation")


class Invalid(ValueError):
    """A value or a combination of values the config refuses: `where` is the key path
    below the Struct that raised it (``""`` for the Struct or the value itself,
    ``client_id``, ``certification_authorities[1].id``), `message` the words for it."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


# ----------------------------------------------------------------------------- readers
# What a file holds -> the value a field keeps. Each gets a value of the field's YAML kind
# (a string for string fields, anything for the others) and raises `Invalid` when it cannot.

# Patterns: searched as msgspec does (`re.search`), hence \A and \Z (not ^ and $, which let a
# trailing newline through). Identifiers are lower-cased before they are checked.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_PATTERN = rf"(?:{_LABEL}\.)+[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?"
HOST_PATTERN = rf"(?:{_LABEL}\.)*{_LABEL}"
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
_HOST = re.compile(HOST_PATTERN)

# Prometheus' duration syntax: units largest first, each at most once, whole numbers only.
_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?", re.ASCII
)
_DURATION_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000  # what fits Prometheus' int64 nanoseconds
_DURATION_EXPECTED = "expected a duration like 30s, 5m, 1h"
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)?", re.ASCII)
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_SIZE_UNITS |= {"kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3}


def duration_seconds(value: object) -> float:
    """A Prometheus duration (``500ms``, ``30s``, ``5m``, ``1h30m``, ``1d``, ``1w``) in
    seconds. ``0`` (string or number) is 0.0 and the field's bounds decide whether zero is
    allowed; any other bare number is refused, since its unit would be a guess."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return 0.0
    if not isinstance(value, str) or not value or len(value) > 64:
        raise Invalid("", _DURATION_EXPECTED)
    match = _DURATION.fullmatch(value)
    if value == "0":
        return 0.0
    if match is None:
        raise Invalid("", _DURATION_EXPECTED)
    total = sum(int(n) * unit for n, unit in zip(match.groups(), _DURATION_MS, strict=True) if n)
    if total > _MAX_DURATION_MS:
        raise Invalid("", "duration out of range")
    return total / 1000


def show_duration(seconds: float) -> str:
    """Seconds as the file writes them, in the largest whole unit (``7d``, ``1500ms``)."""
    if seconds == 0:
        return "0"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    milliseconds = round(seconds * 1000)
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def _size(value: object) -> int:
    """Bytes, from a number or ``64MiB`` (binary units) / ``64MB`` (decimal units)."""
    expected = "expected a size like 64MiB, 512KiB or a number of bytes"
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise Invalid("", expected)
    return int(match[1]) * _SIZE_UNITS[match[2] or "B"]


def _show_size(size: float) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{int(size) // _SIZE_UNITS[unit]}{unit}"
    return f"{int(size)}B"


def _lower(value: str) -> str:
    """GUIDs and host names compare lower-cased (ASCII only: ``"K"``, the Kelvin sign,
    would otherwise pass for a ``k``)."""
    return value.lower() if value.isascii() else value


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.isascii() and len(host) <= MAX_HOST_LENGTH and _HOST.fullmatch(host) is not None
    return True


def _origin(text: str, schemes: tuple[str, ...], example: str, inline: str = "") -> str:
    """``scheme://host[:port]``, lower-cased, from a URL that holds nothing else: roots
    get paths appended to them and carry tokens or secrets, so anything more is refused
    (`inline`: the words for ``user:password@``, else it is just more)."""
    parts_only = f"expected only scheme, host and port, like {example}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise Invalid("", parts_only) from None
    if parts.scheme.lower() not in schemes:
        kind = " or ".join(schemes)
        raise Invalid("", f"expected an {kind} URL like {example}")
    if "@" in parts.netloc and inline:
        raise Invalid("", inline)
    host = parts.hostname or ""
    extra = "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment
    if extra or not _valid_host(host):
        raise Invalid("", parts_only)
    shown = f"[{host}]" if ":" in host else host
    origin = f"{parts.scheme.lower()}://{shown}"
    return origin if port is None else f"{origin}:{port}"


def _https_root(text: str) -> str:
    return _origin(text, ("https",), "https://graph.example")


def _proxy_url(text: str) -> str:
    inline = "credentials written inline; use proxy_credentials_env or proxy_credentials_file"
    return _origin(text, ("http", "https"), "http://proxy.corp:3128", inline)


def _host_pattern(text: str) -> str:
    """A host name or IP, or ``*.`` + a domain for any of its subdomains."""
    host = text.strip().lower()
    bare = host[2:] if host.startswith("*.") else host
    if not bare or "*" in bare or not _valid_host(bare):
        raise Invalid("", "expected a host name, an IP, or *. and a domain")
    return host


def _no_proxy_entry(text: str) -> str:
    """A ``no_proxy`` entry as curl reads NO_PROXY: ``*``, a host or a domain
    (``.corp.example``, ``*.corp.example``), an IP or a CIDR; a port is ignored by the
    matcher (``pki_exporter/outbound``). Lower-cased; anything that would match nothing is
    refused with the reason."""
    entry = text.strip().lower()
    if entry == "*":
        return entry
    try:  # an IP, in its canonical form
        return str(ipaddress.ip_address(entry.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if "://" in entry:
        host = entry.split("://", 1)[1].split("/", 1)[0]
        raise Invalid("", f"{text.strip()!r} is a URL; write the host alone ({host})")
    if "/" in entry:
        try:
            return str(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise Invalid("", f"{text.strip()!r} is not a CIDR like 10.0.0.0/8") from None
    host = entry.removeprefix("*").removeprefix(".")
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if not host or not _valid_host(host):
        raise Invalid(
            "", f"{text.strip()!r}: expected a host, a domain (.corp.example), an IP or a CIDR"
        )
    return entry


def _comma_list(value: object) -> object:
    """``a,b`` as NO_PROXY writes it, or a YAML list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# ----------------------------------------------------------------------------- types


def _meta(**extra: object) -> msgspec.Meta:
    return msgspec.Meta(extra=extra)


def _unique(key: str, words: str, *, quote: bool = False) -> msgspec.Meta:
    """Items of a list whose `key` is that of an earlier item are refused: `words` and
    the value (`quote`: as a JSON string)."""

    def say(value: object) -> str:
        return f"{words} {json.dumps(value, ensure_ascii=False) if quote else value}"

    return _meta(unique=(key, say))


Guid = Annotated[
    str, msgspec.Meta(pattern=rf"\A{GUID_PATTERN}\Z"), _meta(read=_lower, message="not a GUID")
]
TenantId = Annotated[
    str,
    msgspec.Meta(pattern=rf"\A(?:{GUID_PATTERN}|{DOMAIN_PATTERN})\Z", max_length=MAX_HOST_LENGTH),
    _meta(read=_lower, message="not a GUID or a domain name like contoso.onmicrosoft.com"),
]
EnvName = Annotated[
    str,
    msgspec.Meta(pattern=rf"\A{ENV_NAME_PATTERN}\Z"),
    _meta(message="not an environment variable name", env=True),
]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
FilePath = Annotated[str, msgspec.Meta(min_length=1), _meta(file=True)]
CertificateFile = Annotated[FilePath, _meta(pem="CERTIFICATE")]
KeyFile = Annotated[FilePath, _meta(pem="PRIVATE KEY")]
HttpsRoot = Annotated[str, _meta(read=_https_root)]
Duration = Annotated[float, _meta(read=duration_seconds, show=show_duration)]
Size = Annotated[int, _meta(read=_size, show=_show_size)]
WindowDays = Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW_DAYS)]
Budget = Annotated[int, msgspec.Meta(ge=1, le=MAX_BUDGET)]
HostPattern = Annotated[str, _meta(read=_host_pattern)]
NoProxyEntry = Annotated[str, _meta(read=_no_proxy_entry)]
ProxyURL = Annotated[str, _meta(read=_proxy_url)]


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every config type: immutable, hashable, and refusing keys it does not know."""


# ----------------------------------------------------------------------------- refresh


class RefreshConfig(_Frozen, frozen=True, forbid_unknown_fields=True):
    interval: Annotated[Duration, msgspec.Meta(ge=0, le=MAX_INTERVAL)] = 300.0  # 0 = per scrape
    timeout: Annotated[Duration, msgspec.Meta(gt=0, le=MAX_TIMEOUT)] = 60.0  # one HTTP request
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY)] = 4  # CAs at once


# ----------------------------------------------------------------------------- CRLs


class CRLConfig(_Frozen, frozen=True, forbid_unknown_fields=True):
    """Revocation checks: every CRL that the tenant's certificates name (spec, "Revocation").

    Read on their own interval, apart from the Graph refresh and outside the Graph budget.
    ``allowed_hosts`` entries are a host name or IP, or ``*.`` + a domain for any of its
    subdomains (lower-cased); the port is not matched. Durations are seconds, ``max_size``
    bytes.
    """

    enabled: bool = True
    interval: Annotated[Duration, msgspec.Meta(gt=0, le=MAX_INTERVAL)] = 3600.0
    timeout: Annotated[Duration, msgspec.Meta(gt=0, le=MAX_TIMEOUT)] = 30.0  # one HTTP request
    max_size: Annotated[Size, msgspec.Meta(ge=1, le=MAX_CRL_SIZE)] = 64 << 20
    publication_grace: Annotated[Duration, msgspec.Meta(ge=0, le=MAX_GRACE)] = 4 * 3600.0
    allowed_hosts: tuple[HostPattern, ...] = ("*.pki.azure.net",)


# ----------------------------------------------------------------------------- credentials
# Tagged: the tag is the credential's key in the file. `body` names the one field that a
# scalar written directly under the key stands for (``client_secret_env: NAME``).


class ClientSecretEnv(_Frozen, frozen=True, forbid_unknown_fields=True, tag="client_secret_env"):
    body: ClassVar[str] = "env"
    env: EnvName  # name of the environment variable holding the secret


class ClientSecretFile(_Frozen, frozen=True, forbid_unknown_fields=True, tag="client_secret_file"):
    body: ClassVar[str] = "path"
    path: FilePath


class ClientSecretInline(_Frozen, frozen=True, forbid_unknown_fields=True, tag="client_secret"):
    body: ClassVar[str] = "value"
    value: NonEmpty

    def __repr__(self) -> str:
        return "ClientSecretInline(value=...)"  # never the secret


class CertificateCredential(_Frozen, frozen=True, forbid_unknown_fields=True, tag="certificate"):
    """A PEM key and certificate pair, or a PFX (PKCS#12) file; optionally a passphrase."""

    private_key_file: KeyFile | None = None
    certificate_file: CertificateFile | None = None
    pfx_file: FilePath | None = None
    passphrase_env: EnvName | None = None
    passphrase_file: FilePath | None = None

    def __post_init__(self) -> None:
        key, pem, pfx = self.private_key_file, self.certificate_file, self.pfx_file
        pair = "expected either private_key_file and certificate_file, or pfx_file"
        if pfx is not None and (key is not None or pem is not None):
            raise Invalid("", f"{pair}, not both")
        if pfx is None and key is None and pem is None:
            raise Invalid("", pair)
        if key is not None and pem is None:
            raise Invalid("certificate_file", "required with private_key_file")
        if pem is not None and key is None:
            raise Invalid("private_key_file", "required with certificate_file")
        if self.passphrase_env is not None and self.passphrase_file is not None:
            raise Invalid("", "expected at most one of passphrase_env, passphrase_file")


class WorkloadIdentityCredential(
    _Frozen, frozen=True, forbid_unknown_fields=True, tag="workload_identity"
):
    token_file: FilePath | None = None  # None -> AZURE_FEDERATED_TOKEN_FILE at use time


class ManagedIdentityCredential(
    _Frozen, frozen=True, forbid_unknown_fields=True, tag="managed_identity"
):
    client_id: Guid | None = None  # None -> system-assigned identity


Credential: TypeAlias = (
    ClientSecretEnv
    | ClientSecretFile
    | ClientSecretInline
    | CertificateCredential
    | WorkloadIdentityCredential
    | ManagedIdentityCredential
)

# ----------------------------------------------------------------------------- tenants


class CARef(_Frozen, frozen=True, forbid_unknown_fields=True):
    id: Guid  # lower-cased
    name: Name | None = None  # overrides the CA's display name in the `ca` label


class GraphBudgetConfig(_Frozen, frozen=True, forbid_unknown_fields=True):
    """Requests one tenant's app may send to Graph in any 20 s (token requests aside).

    The defaults stay under Microsoft's documented Intune limits per app and tenant
    (1,000 requests of any method and 100 POST/PUT/PATCH/DELETE per 20 s), with room for
    another app of the same tenant and for clock differences.
    """

    requests_per_20s: Budget = 900
    writes_per_20s: Budget = 90

    def __post_init__(self) -> None:
        if self.writes_per_20s > self.requests_per_20s:
            raise Invalid(
                "writes_per_20s",
                f"must not exceed requests_per_20s ({self.requests_per_20s}): "
                "writes are requests too",
            )


CertificationAuthorities = Annotated[
    Literal["all"]
    | Annotated[tuple[CARef, ...], msgspec.Meta(min_length=1), _unique("id", "duplicate CA id")],
    _meta(message='expected "all" or a list of CAs with id and optional name'),
]


class TenantConfig(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One tenant. ``authority_host`` and ``graph_url`` left out (empty) are the cloud's;
    ``client_id`` is required except with managed_identity (whose own client_id is the
    identity's)."""

    name: Name
    tenant_id: TenantId  # lower-cased GUID or domain name
    client_id: Guid | None = None  # lower-cased GUID; None only with managed_identity
    cloud: Cloud = "global"
    authority_host: HttpsRoot = ""  # https://host[:port], no trailing slash
    graph_url: HttpsRoot = ""  # https://host[:port], no trailing slash
    ca_bundle: CertificateFile | None = None
    credential: Credential
    certification_authorities: CertificationAuthorities = "all"
    leaf_source: LeafSource = "action"
    graph_budget: GraphBudgetConfig = GraphBudgetConfig()
    # Outbound proxy (spec, "Proxies"; the names of Prometheus' HTTP client config).
    proxy_url: ProxyURL | None = None  # http(s)://host[:port], no credentials, no path
    no_proxy: Annotated[tuple[NoProxyEntry, ...], _meta(read=_comma_list)] = ()
    proxy_from_environment: bool = True  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as curl
    proxy_credentials_env: Annotated[EnvName, _meta(pair=True)] | None = None  # user:password
    proxy_credentials_file: Annotated[FilePath, _meta(pair=True)] | None = None  # in a file

    def __post_init__(self) -> None:
        managed = isinstance(self.credential, ManagedIdentityCredential)
        if managed and self.client_id is not None:
            raise Invalid(
                "client_id",
                "not used with managed_identity; a user-assigned identity's client_id "
                "goes under credential.managed_identity",
            )
        if not managed and self.client_id is None:
            raise Invalid("client_id", "required")
        if self.proxy_credentials_env is not None and self.proxy_credentials_file is not None:
            raise Invalid(
                "", "expected at most one of proxy_credentials_env, proxy_credentials_file"
            )
        graph, authority = CLOUDS[self.cloud]
        force_setattr(self, "graph_url", self.graph_url or graph)
        force_setattr(self, "authority_host", self.authority_host or authority)

    @property
    def scope(self) -> str:
        return f"{self.graph_url}/.default"


# ----------------------------------------------------------------------------- the file

_NOT_A_KEY = _meta(not_a_key=True)


class Config(_Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    refresh: RefreshConfig = RefreshConfig()
    expiry_windows_days: Annotated[tuple[WindowDays, ...], msgspec.Meta(min_length=1)] = (
        DEFAULT_WINDOWS
    )
    crl: CRLConfig = CRLConfig()
    tenants: Annotated[
        tuple[TenantConfig, ...],
        msgspec.Meta(min_length=1),
        _unique("name", "duplicate tenant name", quote=True),
    ]
    warnings: Annotated[tuple[str, ...], _NOT_A_KEY] = ()  # what the loader noticed
    source: Annotated[str, _NOT_A_KEY] = ""  # and where the file came from

    def __post_init__(self) -> None:
        force_setattr(self, "expiry_windows_days", tuple(sorted(set(self.expiry_windows_days))))

    def advice(self) -> list[str]:
        """What works but should not: a refresh more often than once a minute, a secret
        written in the file (`load` adds a louder word when others can read that file)."""
        found = [
            f"tenants[{i}].credential.client_secret: secret written inline in the config "
            "file; use client_secret_env or client_secret_file"
            for i, tenant in enumerate(self.tenants)
            if isinstance(tenant.credential, ClientSecretInline)
        ]
        if 0 < self.refresh.interval < 60:
            short = show_duration(self.refresh.interval)
            found.insert(
                0, f"refresh.interval: {short} is below one minute; Graph throttles heavy readers"
            )
        return found
