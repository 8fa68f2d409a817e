"""The web config as a value: the toolkit's vocabulary and the types one valid file becomes.

The file format is the one every Prometheus exporter reads (prometheus/exporter-toolkit,
docs/web-configuration.md), so an operator can reuse the file they already have.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

#: Accepted `client_auth_type` values, as in the toolkit. RequireAnyClientCert (and its old
#: alias RequireClientCert) is recognised but refused: see `_UNSUPPORTED_CLIENT_AUTH`.
CLIENT_AUTH_TYPES: Final = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
#: Without client_ca/client_ca_file these verify a given client certificate against the
#: system's roots, as Go does when `ClientCAs` is nil.
VERIFYING: Final = ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")

TLS_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

#: Go crypto/tls names (those of `tls.CipherSuites()`, which the toolkit accepts) -> OpenSSL
#: names. TLS 1.3 suites cannot be chosen in Go nor in Python's ssl: accepted, no effect.
CIPHER_SUITES: Final[Mapping[str, str | None]] = MappingProxyType(
    {
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
        "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    }
)

#: Go curve names (the toolkit's list) -> OpenSSL names.
CURVES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "CurveP256": "prime256v1",
        "CurveP384": "secp384r1",
        "CurveP521": "secp521r1",
        "X25519": "X25519",
    }
)

#: The only headers `http_server_config.headers` may set, with their accepted values
#: (None: any value). Private in the toolkit "to ensure consistency in the ecosystem".
ALLOWED_HEADERS: Final[Mapping[str, tuple[str, ...] | None]] = MappingProxyType(
    {
        "Content-Security-Policy": None,
        "Strict-Transport-Security": None,
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": None,
    }
)

#: What Go's net/http answers when a plain-HTTP request reaches a TLS port.
HTTP_ON_HTTPS_RESPONSE: Final = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)


class WebConfigError(Exception):
    """An invalid web config, in one line: ``<file>: <key path>: <what is wrong>``."""


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    """`tls_server_config`, with the toolkit's key names; file paths are absolute."""

    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()
    client_allowed_sans: tuple[str, ...] = ()
    cert: str | None = None  # inline PEM, instead of cert_file
    key: str | None = field(default=None, repr=False)  # inline PEM, instead of key_file
    client_ca: str | None = None  # inline PEM, instead of client_ca_file


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`rate_limit`: one token every `interval` seconds, at most `burst` saved up."""

    interval: float
    burst: int


@dataclass(frozen=True, slots=True)
class WebConfig:
    """One valid web config file. `basic_auth_users` maps user name -> bcrypt hash."""

    tls: TLSServerConfig | None
    basic_auth_users: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: None: no limit (absent, or an interval of 0, as in the toolkit)
    rate_limit: RateLimit | None = None
    #: what differs from the toolkit but still serves (logged once at start)
    notes: tuple[str, ...] = ()
