"""The config's types: frozen msgspec Structs that say what each key holds.

Types, required fields, defaults, ranges and patterns live here, next to each field;
`load` converts a file's YAML into these types with `msgspec.convert` and words msgspec's
errors as the config's one-line messages. What a Struct cannot say (durations, the one credential of a
tenant, https roots, duplicate names, files and environment variables) is code in
`load` and `check`.

The Structs are also the values the rest of the exporter reads: a `TenantConfig` is built
once at load time and then only read (``tenant.graph_url``, ``tenant.scope``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Literal, TypeAlias

import msgspec

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
    "LeafSource",
    "ManagedIdentityCredential",
    "RefreshConfig",
    "TenantConfig",
    "WorkloadIdentityCredential",
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

# Patterns: msgspec searches with `re.search`, hence \A and \Z (not ^ and $, which let a
# trailing newline through). Identifiers are lower-cased before they are checked.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_PATTERN = rf"(?:{_LABEL}\.)+[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?"
HOST_PATTERN = rf"(?:{_LABEL}\.)*{_LABEL}"
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"

Guid = Annotated[str, msgspec.Meta(pattern=rf"\A{GUID_PATTERN}\Z")]
TenantId = Annotated[
    str,
    msgspec.Meta(pattern=rf"\A(?:{GUID_PATTERN}|{DOMAIN_PATTERN})\Z", max_length=MAX_HOST_LENGTH),
]
EnvName = Annotated[str, msgspec.Meta(pattern=rf"\A{ENV_NAME_PATTERN}\Z")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
WindowDays = Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW_DAYS)]
Budget = Annotated[int, msgspec.Meta(ge=1, le=MAX_BUDGET)]


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every config type: immutable, hashable, and refusing keys it does not know."""


# ----------------------------------------------------------------------------- refresh


class RefreshConfig(_Frozen, frozen=True, forbid_unknown_fields=True):
    interval: Annotated[float, msgspec.Meta(ge=0, le=MAX_INTERVAL)] = 300.0  # s; 0 = per scrape
    timeout: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)] = 60.0  # s, one HTTP request
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY)] = 4  # CAs at once


# ----------------------------------------------------------------------------- CRLs


class CRLConfig(_Frozen, frozen=True, forbid_unknown_fields=True):
    """Revocation checks: every CRL that the tenant's certificates name (spec, "Revocation").

    Read on their own interval, apart from the Graph refresh and outside the Graph budget.
    ``allowed_hosts`` entries are a host name or IP, or ``*.`` + a domain for any of its
    subdomains (lower-cased); the port is not matched.
    """

    enabled: bool = True
    interval: Annotated[float, msgspec.Meta(gt=0, le=MAX_INTERVAL)] = 3600.0  # s
    timeout: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)] = 30.0  # s, one HTTP request
    max_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_CRL_SIZE)] = 64 << 20  # bytes
    publication_grace: Annotated[float, msgspec.Meta(ge=0, le=MAX_GRACE)] = 4 * 3600.0  # s
    allowed_hosts: tuple[str, ...] = ("*.pki.azure.net",)


# ----------------------------------------------------------------------------- credentials
# Tagged so that msgspec can tell them apart in `TenantConfig.credential`; the tag is the
# credential's key in the file.


class ClientSecretEnv(_Frozen, frozen=True, forbid_unknown_fields=True, tag="client_secret_env"):
    env: EnvName  # name of the environment variable holding the secret


class ClientSecretFile(_Frozen, frozen=True, forbid_unknown_fields=True, tag="client_secret_file"):
    path: NonEmpty


class ClientSecretInline(_Frozen, frozen=True, forbid_unknown_fields=True, tag="client_secret"):
    value: NonEmpty

    def __repr__(self) -> str:
        return "ClientSecretInline(value=...)"  # never the secret


class CertificateCredential(_Frozen, frozen=True, forbid_unknown_fields=True, tag="certificate"):
    """A PEM key and certificate pair, or a PFX (PKCS#12) file; optionally a passphrase.

    Which combinations are allowed is a rule across fields: `load._certificate_rule`."""

    private_key_file: NonEmpty | None = None
    certificate_file: NonEmpty | None = None
    pfx_file: NonEmpty | None = None
    passphrase_env: EnvName | None = None
    passphrase_file: NonEmpty | None = None


class WorkloadIdentityCredential(
    _Frozen, frozen=True, forbid_unknown_fields=True, tag="workload_identity"
):
    token_file: NonEmpty | None = None  # None -> AZURE_FEDERATED_TOKEN_FILE at use time


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


LeafSource = Literal["action", "navigation"]
LEAF_SOURCES: tuple[LeafSource, ...] = ("action", "navigation")


class GraphBudgetConfig(_Frozen, frozen=True, forbid_unknown_fields=True):
    """Requests one tenant's app may send to Graph in any 20 s (token requests aside).

    The defaults stay under Microsoft's documented Intune limits per app and tenant
    (1,000 requests of any method and 100 POST/PUT/PATCH/DELETE per 20 s), with room for
    another app of the same tenant and for clock differences. `writes_per_20s` must not
    exceed `requests_per_20s` (a rule across fields, in `load`).
    """

    requests_per_20s: Budget = 900
    writes_per_20s: Budget = 90


class TenantConfig(_Frozen, frozen=True, forbid_unknown_fields=True):
    name: Name
    tenant_id: TenantId  # lower-cased GUID or domain name
    client_id: Guid | None  # lower-cased GUID; None only with managed_identity
    cloud: Cloud
    authority_host: NonEmpty  # https://host[:port], no trailing slash
    graph_url: NonEmpty  # https://host[:port], no trailing slash
    ca_bundle: NonEmpty | None
    credential: Credential
    certification_authorities: (
        Literal["all"] | Annotated[tuple[CARef, ...], msgspec.Meta(min_length=1)]
    )
    leaf_source: LeafSource = "action"
    graph_budget: GraphBudgetConfig = GraphBudgetConfig()
    # Outbound proxy (spec, "Proxies"; the names of Prometheus' HTTP client config).
    proxy_url: NonEmpty | None = None  # http(s)://host[:port], no credentials, no path
    no_proxy: tuple[str, ...] = ()  # host suffixes (".corp.example"), hosts, IPs, CIDRs
    proxy_from_environment: bool = True  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as curl
    proxy_credentials_env: EnvName | None = None  # user:password in this variable
    proxy_credentials_file: NonEmpty | None = None  # user:password in this file

    @property
    def scope(self) -> str:
        return f"{self.graph_url}/.default"


# ----------------------------------------------------------------------------- the file


class Config(_Frozen, frozen=True, forbid_unknown_fields=True):
    refresh: RefreshConfig
    expiry_windows_days: Annotated[tuple[WindowDays, ...], msgspec.Meta(min_length=1)]
    tenants: Annotated[tuple[TenantConfig, ...], msgspec.Meta(min_length=1)]
    warnings: tuple[str, ...]  # not keys of the file: what the loader noticed
    source: str  # and where the file came from
    crl: CRLConfig = CRLConfig()
