"""The exporter-toolkit web config (`--web.config.file`): TLS, basic auth, response headers.

The file format is the one every Prometheus exporter reads (prometheus/exporter-toolkit,
docs/web-configuration.md), so an operator can reuse the file they already have. Like the
toolkit, the file is re-read while the server runs: a changed password or a rotated
certificate takes effect on the next request or connection, without a restart. Unlike the
toolkit, the file is not parsed on every request: a `stat()` of the file and of the
certificate files it names tells when to read it again.

Start-up is strict (an invalid file stops the exporter with a one-line message naming the
key); a reload is forgiving (an invalid new file is reported once and the last good one
stays in force). Passwords, hashes and private keys never appear in messages or logs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import difflib
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import bcrypt
import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from pki_exporter.config.load import DuplicateKeyError, compose_yaml

__all__ = [
    "ALLOWED_HEADERS",
    "CIPHER_SUITES",
    "CLIENT_AUTH_TYPES",
    "CURVES",
    "HTTP_ON_HTTPS_RESPONSE",
    "TLS_VERSIONS",
    "ClientCertificateRejected",
    "RateLimit",
    "RateLimiter",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigError",
    "WebConfigProvider",
    "load_web_config",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- vocabulary

#: Accepted `client_auth_type` values, as in the toolkit. RequireAnyClientCert (and its old
#: alias RequireClientCert) is recognised but refused: see `_UNSUPPORTED_CLIENT_AUTH`.
CLIENT_AUTH_TYPES: Final = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_CLIENT_AUTH_ALIASES: Final = {"RequireClientCert": "RequireAnyClientCert"}
_UNSUPPORTED_CLIENT_AUTH: Final = (
    "is not supported: Python's ssl module cannot require a client certificate without "
    "verifying it; use RequireAndVerifyClientCert with client_ca_file"
)
_VERIFY_MODES: Final = {
    "NoClientCert": ssl.CERT_NONE,
    # Go asks for a certificate and ignores it; nothing here reads it, so not asking is the
    # same to the exporter (and Python cannot ask without verifying).
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: Without client_ca/client_ca_file these verify a given client certificate against the
#: system's roots, as Go does when `ClientCAs` is nil.
_VERIFYING: Final = ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
#: With http2 on (the default), Go refuses a TLS 1.2 cipher list without one of these.
_HTTP2_CIPHERS: Final = (
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
)
#: Go duration units, as time.ParseDuration reads them.
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

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

_TOP_KEYS: Final = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS: Final = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_HTTP_KEYS: Final = ("http2", "headers")
_RATE_KEYS: Final = ("interval", "burst")

# A bcrypt hash as htpasswd (-B), Python's bcrypt and Go's x/crypto/bcrypt write it.
_BCRYPT_RE: Final = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_BCRYPT_HINT: Final = (
    'not a bcrypt hash (expected "$2y$", "$2b$" or "$2a$", a two-digit cost and 53 '
    'characters, as "htpasswd -nBC 10" writes it)'
)
# Compared against when the user is unknown, so that timing does not tell which user
# names exist (the toolkit does the same). bcrypt of a random string, cost 10.
_DUMMY_HASH: Final = b"$2b$10$F1XddTVYYtYt37svW0m02eQeks/07XtTprws635OF4oYoj9P.rnLG"
_BCRYPT_MAX_PASSWORD: Final = 72  # bcrypt reads no further (Go and htpasswd truncate)
_AUTH_CACHE_SIZE: Final = 1024
# A file modified less than this before we looked at it may change again without its
# mtime moving (coarse file-system clocks): its content is compared until the window ends.
_RACY_NS: Final = 2_000_000_000


# --------------------------------------------------------------------------- public types


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


def load_web_config(path: str) -> WebConfig:
    """Read and fully validate a web config file (certificates and keys included)."""
    config, _context = _load(path, [])
    return config


# --------------------------------------------------------------------------- YAML walking


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "null"
    return "a scalar"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


class _Doc:
    """Typed reads from a composed YAML node tree; errors carry the file and key path.

    Walking nodes instead of `safe_load` output keeps scalars as written (`0` stays "0",
    as Go's YAML decoder reads it into a string) and lets repeated keys be refused.
    """

    def __init__(self, display: str) -> None:
        self.display = display

    def error(self, path: str, message: str) -> WebConfigError:
        text = f"{self.display}: {path}: {message}" if path else f"{self.display}: {message}"
        # One line, whatever the file holds: control characters are shown escaped.
        return WebConfigError("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))

    def mapping(
        self, node: yaml.Node, path: str, known: Sequence[str] | None
    ) -> dict[str, yaml.Node]:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(path, f"expected a mapping, got {_kind(node)}")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(path, f"keys must be strings, got {_kind(key_node)}")
            key = key_node.value
            where = f"{path}.{key}" if path else key
            if known is not None and key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise self.error(where, f"unknown key{hint}")
            if key in out:
                raise self.error(where, "repeated key")
            out[key] = value_node
        return out

    def string(self, node: yaml.Node | None, path: str) -> str | None:
        """A scalar as written; null and "" are None (unset, as in Go)."""
        if node is None or _is_null(node):
            return None
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(path, f"expected a string, got {_kind(node)}")
        value: str = node.value
        return value or None

    def boolean(self, node: yaml.Node | None, path: str, default: bool) -> bool:
        if node is None or _is_null(node):
            return default
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            return bool(yaml.SafeLoader.bool_values[node.value.lower()])
        raise self.error(path, "expected true or false")

    def strings(self, node: yaml.Node | None, path: str) -> tuple[str, ...]:
        if node is None or _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(path, f"expected a list of strings, got {_kind(node)}")
        out: list[str] = []
        for i, item in enumerate(node.value):
            value = self.string(item, f"{path}[{i}]")
            if value is None:
                raise self.error(f"{path}[{i}]", "expected a non-empty string")
            out.append(value)
        return tuple(out)


def _compose(text: str, doc: _Doc) -> yaml.Node | None:
    try:
        return compose_yaml(text)
    except DuplicateKeyError as e:
        raise doc.error(e.path, "repeated key") from None
    except yaml.MarkedYAMLError as e:
        # Never the YAML snippet itself: it may hold a hash or an inline key.
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise doc.error("", f"invalid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise doc.error("", f"invalid YAML: {type(e).__name__}") from None


# --------------------------------------------------------------------------- parsing


def _parse(text: str, doc: _Doc, base_dir: str) -> WebConfig:
    root = _compose(text, doc)
    if root is None:  # an empty file: no TLS, no auth, as in the toolkit
        return WebConfig(tls=None)
    if not isinstance(root, yaml.MappingNode):
        raise doc.error("", f"expected a mapping at the top level, got {_kind(root)}")
    top = doc.mapping(root, "", _TOP_KEYS)
    rate_limit = _parse_rate_limit(doc, top.get("rate_limit"))
    notes: list[str] = []
    tls = _parse_tls(doc, top.get("tls_server_config"), base_dir, notes)
    headers, http2 = _parse_http(doc, top.get("http_server_config"))
    if (
        tls is not None
        and http2
        and tls.cipher_suites
        and tls.min_version != "TLS13"
        and not set(tls.cipher_suites) & set(_HTTP2_CIPHERS)
    ):
        raise doc.error(
            "tls_server_config.cipher_suites",
            "lacks the cipher HTTP/2 requires (one of " + " or ".join(_HTTP2_CIPHERS) + "); "
            "add one, or set http_server_config.http2: false (the toolkit refuses it too)",
        )
    users = _parse_users(doc, top.get("basic_auth_users"))
    return WebConfig(
        tls=tls, basic_auth_users=users, headers=headers, rate_limit=rate_limit, notes=tuple(notes)
    )


def _parse_duration(doc: _Doc, node: yaml.Node | None, path: str) -> float:
    """A Go duration ("1s", "1m30s", "500ms") or an integer of nanoseconds, in seconds."""
    text = doc.string(node, path)
    if text is None:
        return 0.0
    if re.fullmatch(r"\d+", text):
        return int(text) * 1e-9
    total = 0.0
    pos = 0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise doc.error(path, f'invalid duration "{text}" (expected e.g. 1s, 500ms, 1m)')
    return total


def _parse_rate_limit(doc: _Doc, node: yaml.Node | None) -> RateLimit | None:
    if node is None:
        return None
    section = "rate_limit"
    keys = doc.mapping(node, section, _RATE_KEYS)
    interval = _parse_duration(doc, keys.get("interval"), f"{section}.interval")
    burst_text = doc.string(keys.get("burst"), f"{section}.burst") or "0"
    if not re.fullmatch(r"\d+", burst_text):
        raise doc.error(f"{section}.burst", f'expected a whole number >= 0, got "{burst_text}"')
    if interval == 0:  # the toolkit sets up no limiter at all
        return None
    return RateLimit(interval=interval, burst=int(burst_text))


def _parse_tls(
    doc: _Doc, node: yaml.Node | None, base_dir: str, notes: list[str]
) -> TLSServerConfig | None:
    if node is None:
        return None
    section = "tls_server_config"
    keys = doc.mapping(node, section, _TLS_KEYS)

    def text(key: str) -> str | None:
        return doc.string(keys.get(key), f"{section}.{key}")

    def path(key: str) -> str | None:
        value = text(key)
        return None if value is None else os.path.abspath(os.path.join(base_dir, value))

    # Any value set turns TLS on. (The toolkit looks at cert, key, CA and client_auth_type
    # only, and silently serves plain HTTP for e.g. `min_version` alone.)
    if all(
        _is_null(v) or (isinstance(v, yaml.ScalarNode) and v.value == "") for v in keys.values()
    ):
        return None

    auth_raw = text("client_auth_type") or "NoClientCert"
    auth = _CLIENT_AUTH_ALIASES.get(auth_raw, auth_raw)
    if auth not in CLIENT_AUTH_TYPES:
        raise doc.error(
            f"{section}.client_auth_type",
            f'unknown value "{auth_raw}" (expected one of {", ".join(CLIENT_AUTH_TYPES)})',
        )
    if auth == "RequireAnyClientCert":
        raise doc.error(f"{section}.client_auth_type", f"{auth_raw} {_UNSUPPORTED_CLIENT_AUTH}")

    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = text(key) or default
        if value not in TLS_VERSIONS:
            raise doc.error(
                f"{section}.{key}",
                f'unknown TLS version "{value}" (expected one of {", ".join(TLS_VERSIONS)})',
            )
        versions[key] = value
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise doc.error(
            f"{section}.min_version",
            f"{versions['min_version']} is above max_version {versions['max_version']}",
        )

    ciphers = doc.strings(keys.get("cipher_suites"), f"{section}.cipher_suites")
    for i, name in enumerate(ciphers):
        if name not in CIPHER_SUITES:
            raise doc.error(
                f"{section}.cipher_suites[{i}]",
                f'unknown cipher suite "{name}" (expected a Go crypto/tls name such as '
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)",
            )
    curves = doc.strings(keys.get("curve_preferences"), f"{section}.curve_preferences")
    for i, name in enumerate(curves):
        if name not in CURVES:
            raise doc.error(
                f"{section}.curve_preferences[{i}]",
                f'unknown curve "{name}" (expected one of {", ".join(CURVES)})',
            )
    if len(curves) > 1:
        notes.append(
            f"{section}.curve_preferences: Python's ssl can use one curve only: using "
            f"{curves[0]} (the first), not {', '.join(curves[1:])}"
        )

    config = TLSServerConfig(
        cert_file=path("cert_file"),
        key_file=path("key_file"),
        client_ca_file=path("client_ca_file"),
        client_auth_type=auth,
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        cipher_suites=ciphers,
        prefer_server_cipher_suites=doc.boolean(
            keys.get("prefer_server_cipher_suites"),
            f"{section}.prefer_server_cipher_suites",
            default=True,
        ),
        curve_preferences=curves,
        client_allowed_sans=doc.strings(
            keys.get("client_allowed_sans"), f"{section}.client_allowed_sans"
        ),
        cert=text("cert"),
        key=text("key"),
        client_ca=text("client_ca"),
    )
    for inline, file in (
        ("cert", "cert_file"),
        ("key", "key_file"),
        ("client_ca", "client_ca_file"),
    ):
        if getattr(config, inline) is not None and getattr(config, file) is not None:
            raise doc.error(f"{section}.{inline}", f"cannot be combined with {file}")
    if config.cert is None and config.cert_file is None:
        raise doc.error(section, "missing one of cert or cert_file")
    if config.key is None and config.key_file is None:
        raise doc.error(section, "missing one of key or key_file")
    has_ca = config.client_ca is not None or config.client_ca_file is not None
    if has_ca and auth == "NoClientCert":
        raise doc.error(
            f"{section}.client_ca_file",
            "set, but client_auth_type is NoClientCert (no client certificate would be "
            "asked for; set client_auth_type: RequireAndVerifyClientCert)",
        )
    if config.client_allowed_sans and auth != "RequireAndVerifyClientCert":
        raise doc.error(
            f"{section}.client_allowed_sans",
            "requires client_auth_type RequireAndVerifyClientCert",
        )
    return config


def _parse_http(doc: _Doc, node: yaml.Node | None) -> tuple[Mapping[str, str], bool]:
    """(headers, http2)."""
    if node is None:
        return MappingProxyType({}), True
    section = "http_server_config"
    keys = doc.mapping(node, section, _HTTP_KEYS)
    # http2 is accepted for compatibility; the exporter's server speaks HTTP/1.1.
    http2 = doc.boolean(keys.get("http2"), f"{section}.http2", default=True)
    headers: dict[str, str] = {}
    header_node = keys.get("headers")
    header_nodes = (
        {} if header_node is None else doc.mapping(header_node, f"{section}.headers", None)
    )
    for name, value_node in header_nodes.items():
        where = f"{section}.headers.{name}"
        if name not in ALLOWED_HEADERS:
            raise doc.error(
                where, f"header cannot be configured (allowed: {', '.join(ALLOWED_HEADERS)})"
            )
        value = doc.string(value_node, where)
        if value is None:  # "Unset if blank."
            continue
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value if c != "\t"):
            raise doc.error(where, "value contains a control character")
        allowed = ALLOWED_HEADERS[name]
        if allowed is not None and value not in allowed:
            raise doc.error(
                where, f'invalid value "{value}" (expected one of {", ".join(allowed)})'
            )
        headers[name] = value
    return MappingProxyType(headers), http2


def _parse_users(doc: _Doc, node: yaml.Node | None) -> Mapping[str, str]:
    if node is None:
        return MappingProxyType({})
    users: dict[str, str] = {}
    for name, value_node in doc.mapping(node, "basic_auth_users", None).items():
        where = f"basic_auth_users.{name}"
        if ":" in name:
            raise doc.error(where, 'user name must not contain ":"')
        if not isinstance(value_node, yaml.ScalarNode) or _is_null(value_node):
            raise doc.error(where, "expected a string (the bcrypt hash)")
        match = _BCRYPT_RE.fullmatch(value_node.value)
        if match is None:
            raise doc.error(where, _BCRYPT_HINT)
        cost = int(match.group(1))
        if not 4 <= cost <= 31:
            raise doc.error(where, f"bcrypt cost {cost} is outside 4..31")
        users[name] = value_node.value
    return MappingProxyType(users)


# --------------------------------------------------------------------------- files


@dataclass(frozen=True, slots=True)
class _FileState:
    """What a file looked like when it was read; tells whether it has changed since."""

    path: str
    stat: tuple[int, ...] | None  # None: missing or unreadable
    digest: bytes | None
    seen_ns: int

    @property
    def racy(self) -> bool:
        return self.stat is not None and self.seen_ns - self.stat[0] < _RACY_NS


def _stat_key(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


def _digest(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return None


class _Reader:
    """Reads files and remembers each one's state, so that a change can be noticed."""

    def __init__(self, watched: list[_FileState]) -> None:
        self.watched = watched

    def read(self, path: str) -> bytes:
        seen_ns = time.time_ns()
        key = _stat_key(path)  # before reading: a later write shows as a change
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            self.watched.append(_FileState(path, None, None, seen_ns))
            raise
        self.watched.append(_FileState(path, key, hashlib.sha256(data).digest(), seen_ns))
        return data


def _still_current(states: Sequence[_FileState]) -> tuple[bool, tuple[_FileState, ...]]:
    """(unchanged?, states to remember): racy files have their content compared."""
    now = time.time_ns()
    updated: list[_FileState] = []
    for state in states:
        key = _stat_key(state.path)
        if key != state.stat:
            return False, tuple(states)
        if state.racy:
            if _digest(state.path) != state.digest:
                return False, tuple(states)
            state = _FileState(state.path, key, state.digest, now)  # noqa: PLW2901
        updated.append(state)
    return True, tuple(updated)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds `data` (ssl loads certificate chains by path)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pki-exporter-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            path = f"/proc/self/fd/{fd}"
            if os.path.exists(path):
                yield path
                return
        finally:
            os.close(fd)
    fd, path = tempfile.mkstemp(prefix="pki-exporter-tls-")  # mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        yield path
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------- TLS material


@dataclass(frozen=True, slots=True)
class _TLSMaterial:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    client_ca_pem: bytes | None


def _no_password() -> bytes:
    raise ssl.SSLError("encrypted private key")


def _read_tls_material(tls: TLSServerConfig, doc: _Doc, reader: _Reader) -> _TLSMaterial:
    section = "tls_server_config"

    def source(inline: str, file: str) -> tuple[bytes, str, str]:
        """(bytes, key path, " in <file>" for messages)."""
        value: str | None = getattr(tls, inline)
        if value is not None:
            return value.encode(), f"{section}.{inline}", ""
        file_path: str = getattr(tls, file)
        try:
            return reader.read(file_path), f"{section}.{file}", f" in {file_path}"
        except OSError as e:
            raise doc.error(
                f"{section}.{file}", f"cannot read {file_path}: {e.strerror or e}"
            ) from None

    cert_pem, cert_where, cert_in = source("cert", "cert_file")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise doc.error(cert_where, f"no valid PEM certificate{cert_in}") from None

    key_pem, key_where, key_in = source("key", "key_file")
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise doc.error(
            key_where, f"the private key{key_in} is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise doc.error(key_where, f"no valid PEM private key{key_in}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        what = "cert_file" if tls.cert_file is not None else "cert"
        raise doc.error(key_where, f"private key does not match the certificate in {what}")

    ca_pem: bytes | None = None
    if tls.client_ca is not None or tls.client_ca_file is not None:
        ca_pem, ca_where, ca_in = source("client_ca", "client_ca_file")
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise doc.error(ca_where, f"no valid PEM certificate{ca_in}") from None
    return _TLSMaterial(cert_pem, key_pem, ca_pem)


class ClientCertificateRejected(ssl.SSLError):
    """The client certificate verified, but has none of `client_allowed_sans`."""


class _ServerSSLSocket(ssl.SSLSocket):
    """Checks `client_allowed_sans` as the last step of the handshake.

    Go checks the SANs inside the handshake (VerifyPeerCertificate); Python's ssl has no
    hook there, but every handshake of a socket wrapped by our contexts runs through this
    `do_handshake` (at `wrap_socket`, `accept()` on a wrapped listener, or explicitly), so
    the check cannot be forgotten by the server. The SANs come from the socket's context,
    which the SNI callback may have swapped for a newer one.
    """

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        context = self.context
        allowed = context.client_allowed_sans if isinstance(context, _ServerContext) else ()
        if allowed and not _has_allowed_san(self.getpeercert(binary_form=True), allowed):
            raise ClientCertificateRejected("client certificate has none of client_allowed_sans")


class _ServerContext(ssl.SSLContext):
    sslsocket_class = _ServerSSLSocket
    client_allowed_sans: tuple[str, ...] = ()


def _build_context(tls: TLSServerConfig, material: _TLSMaterial, doc: _Doc) -> ssl.SSLContext:
    section = "tls_server_config"
    ctx = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.client_allowed_sans = tls.client_allowed_sans
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    # No resumption: a session must never outlive the config that authenticated it.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    openssl_names = [n for n in (CIPHER_SUITES[c] for c in tls.cipher_suites) if n is not None]
    if openssl_names:
        try:
            ctx.set_ciphers(":".join(openssl_names))
        except ssl.SSLError:
            raise doc.error(
                f"{section}.cipher_suites", "this OpenSSL supports none of these cipher suites"
            ) from None
    if tls.curve_preferences:
        try:
            ctx.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
        except (ValueError, ssl.SSLError):
            raise doc.error(
                f"{section}.curve_preferences", "this OpenSSL does not support that curve"
            ) from None
    try:
        with (
            _memory_file(material.cert_pem) as cert_path,
            _memory_file(material.key_pem) as key_path,
        ):
            ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as e:
        raise doc.error(
            section, f"OpenSSL cannot use the certificate and key: {e.reason}"
        ) from None
    ctx.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    if material.client_ca_pem is None and tls.client_auth_type in _VERIFYING:
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # the system's roots, as Go
    if material.client_ca_pem is not None:
        try:
            ctx.load_verify_locations(cadata=material.client_ca_pem.decode("ascii", "replace"))
        except ssl.SSLError as e:
            where = "client_ca" if tls.client_ca is not None else "client_ca_file"
            raise doc.error(f"{section}.{where}", f"OpenSSL cannot use it: {e.reason}") from None
    return ctx


def _load(path: str, watched: list[_FileState]) -> tuple[WebConfig, ssl.SSLContext | None]:
    """Parse and validate `path`; append every file read (or tried) to `watched`."""
    doc = _Doc(path)
    reader = _Reader(watched)
    try:
        raw = reader.read(path)
    except OSError as e:
        raise doc.error("", f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise doc.error("", "not UTF-8 text") from None
    config = _parse(text, doc, os.path.dirname(path))
    if config.tls is None:
        return config, None
    material = _read_tls_material(config.tls, doc, reader)
    return config, _build_context(config.tls, material, doc)


# --------------------------------------------------------------------------- basic auth


def _parse_basic(authorization: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an `Authorization: Basic` header, as Go's Request.BasicAuth."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


class _AuthCache:
    """Bounded LRU of bcrypt verdicts keyed by (user, hash, HMAC of the password).

    The password itself is never kept: a per-process key makes the digest useless for
    offline guessing should memory leak.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[bytes, bytes, bytes], bool] = OrderedDict()
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)

    def key(self, user: bytes, hashed: bytes, password: bytes) -> tuple[bytes, bytes, bytes]:
        return user, hashed, hmac.digest(self._key, password, "sha256")

    def get(self, key: tuple[bytes, bytes, bytes]) -> bool | None:
        with self._lock:
            verdict = self._items.get(key)
            if verdict is not None:
                self._items.move_to_end(key)
            return verdict

    def put(self, key: tuple[bytes, bytes, bytes], verdict: bool) -> None:
        with self._lock:
            self._items[key] = verdict
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _has_allowed_san(der: bytes | None, allowed: Sequence[str]) -> bool:
    """Whether a certificate has one of `allowed` among its SANs, as Go prints them."""
    if not der:
        return False
    try:
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    values: set[str] = set(sans.get_values_for_type(x509.DNSName))
    values.update(sans.get_values_for_type(x509.RFC822Name))
    values.update(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    values.update(sans.get_values_for_type(x509.UniformResourceIdentifier))
    return not values.isdisjoint(allowed)


# --------------------------------------------------------------------------- rate limit


class RateLimiter:
    """A token bucket, as golang.org/x/time/rate's Limiter that the toolkit uses.

    It starts full (`burst` tokens) and gains one token every `interval` seconds, up to
    `burst`; a request takes one token or, when there is none, is answered 429. A burst
    of 0 refuses every request (as in Go).
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = limit.interval
        self._burst = float(limit.burst)
        self._clock = clock
        self._tokens = self._burst
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self._burst, self._tokens + elapsed / self._interval)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


# --------------------------------------------------------------------------- provider


class WebConfigProvider:
    """Holds the web config of a running server; re-reads the file when it changes.

    Thread-safe. Per request the server calls `authorize()` (which notices a changed file)
    and `response_headers()`; per accepted connection on a TLS port, `accept_tls()`, or
    `ssl_context().wrap_socket(sock, server_side=True)` itself.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()  # one bcrypt at a time, as in the toolkit
        self._cache = _AuthCache(_AUTH_CACHE_SIZE)
        self._context: ssl.SSLContext | None = None
        self._files: tuple[_FileState, ...] = ()
        if path is None:
            self._config = WebConfig(tls=None)
        else:
            watched: list[_FileState] = []
            self._config, context = _load(path, watched)
            self._files = tuple(watched)
            self._context = self._with_sni(context)
        self._tls_enabled = self._config.tls is not None
        # Fixed at start, as in the toolkit (a changed rate_limit needs a restart).
        limit = self._config.rate_limit
        self._limiter = RateLimiter(limit) if limit is not None else None
        for note in self._config.notes:
            log.warning("web config %s: %s", path, note)
        tls = self._config.tls
        if tls and tls.client_auth_type in _VERIFYING and not (tls.client_ca or tls.client_ca_file):
            log.info(
                "web config %s: client_auth_type %s without client_ca_file: client "
                "certificates are verified against the system's root CAs",
                path,
                tls.client_auth_type,
            )
        if self._config.basic_auth_users and not self._tls_enabled:
            log.warning(
                "web config %s: basic_auth_users without tls_server_config: passwords "
                "travel in clear text",
                path,
            )

    @property
    def tls_enabled(self) -> bool:
        """Whether the port speaks TLS; fixed at start, as in the toolkit."""
        return self._tls_enabled

    @property
    def config(self) -> WebConfig:
        """The web config in force (the last good one)."""
        return self._config

    def reload_if_changed(self) -> None:
        """Re-read the file when it, or a certificate file it names, has changed.

        A new file that is invalid is logged once (without secrets) and ignored: the last
        good config stays in force until the file changes again.
        """
        if self._path is None:
            return
        with self._lock:
            unchanged, states = _still_current(self._files)
            if unchanged:
                self._files = states
                return
            watched: list[_FileState] = []
            try:
                config, context = _load(self._path, watched)
                if (config.tls is not None) != self._tls_enabled:
                    raise _Doc(self._path).error(
                        "tls_server_config",
                        "TLS cannot be turned on or off while running; restart pki-exporter",
                    )
            except WebConfigError as e:
                log.warning("web config not reloaded, the previous one stays in force: %s", e)
            except Exception as e:  # never let a reload take the server down
                log.warning(
                    "web config %s not reloaded, the previous one stays in force: %s",
                    self._path,
                    type(e).__name__,
                )
            else:
                self._config = config
                self._context = self._with_sni(context)
                log.info("web config %s reloaded", self._path)
            self._files = tuple(watched)

    # -- TLS

    def ssl_context(self) -> ssl.SSLContext:
        """The server-side context for the next connection (fresh after a change).

        Wrap each accepted connection with the context this returns. A listening socket
        wrapped once also follows certificate, key and client CA rotation (the context's
        `sni_callback` swaps in the newest one); protocol versions and client_auth_type
        then stay as they were at start.
        """
        self.reload_if_changed()
        context = self._context
        if context is None:
            raise RuntimeError("TLS is not enabled in the web config")
        return context

    def _with_sni(self, context: ssl.SSLContext | None) -> ssl.SSLContext | None:
        if context is not None:
            context.sni_callback = self._sni_callback
        return context

    def _sni_callback(
        self, conn: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, used: ssl.SSLContext
    ) -> None:
        try:
            self.reload_if_changed()
            current = self._context
            if current is not None and current is not used:
                conn.context = current
        except Exception:  # an exception here would abort the handshake obscurely
            log.exception("web config: cannot switch to the new TLS context")

    def accept_tls(self, sock: socket.socket, timeout: float = 10.0) -> ssl.SSLSocket | None:
        """Turn an accepted TCP connection into a TLS one, in the connection's own thread.

        Answers a plain-HTTP request the way Go does (400, "Client sent an HTTP request to
        an HTTPS server.") and closes; closes on a failed handshake (which includes a
        client certificate without an allowed SAN). Returns the TLS socket with its
        previous timeout, or None when the connection is done with (it is then closed).
        """
        previous_timeout = sock.gettimeout()
        try:
            sock.settimeout(timeout)
            first = sock.recv(1, socket.MSG_PEEK)
            if not first:
                sock.close()
                return None
            if b"A" <= first <= b"Z":  # a TLS record starts with 0x16 (or 0x80 for SSLv2)
                _answer_plain_http(sock)
                return None
            conn = self.ssl_context().wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as e:
            log.debug("connection closed before TLS: %s", e)
            sock.close()
            return None
        try:
            conn.do_handshake()
            conn.settimeout(previous_timeout)
        except (OSError, ValueError) as e:
            log.debug("TLS handshake failed: %s", e)
            conn.close()
            return None
        return conn

    # -- HTTP

    def authorize(self, authorization: str | None) -> bool:
        """Check an `Authorization` header against the current file's basic_auth_users.

        True when no users are configured. User names are compared in constant time and
        unknown users still cost one bcrypt, so timing tells nothing about which exist.
        """
        self.reload_if_changed()
        users = self._config.basic_auth_users
        if not users:
            return True
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed: bytes | None = None
        for name, candidate in users.items():  # no early exit
            if hmac.compare_digest(name.encode(), user):
                hashed = candidate.encode("ascii")
        known = hashed is not None
        hashed = hashed or _DUMMY_HASH
        key = self._cache.key(user, hashed, password)
        verdict = self._cache.get(key)
        if verdict is None:
            with self._bcrypt_lock:
                try:
                    verdict = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed)
                except ValueError:
                    verdict = False
            self._cache.put(key, verdict)
        return known and verdict

    def allow_request(self) -> bool:
        """Whether `rate_limit` lets one more request through now (always, without one)."""
        return self._limiter is None or self._limiter.allow()

    def response_headers(self) -> Mapping[str, str]:
        """`http_server_config.headers` of the config in force, to add to every response."""
        return self._config.headers


def _answer_plain_http(sock: socket.socket) -> None:
    """Read the request head (so that closing sends no RST), answer 400, close."""
    try:
        sock.settimeout(1.0)
        seen = b""
        while b"\r\n\r\n" not in seen and len(seen) < 16384:
            chunk = sock.recv(4096)
            if not chunk:
                break
            seen += chunk
        sock.sendall(HTTP_ON_HTTPS_RESPONSE)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()
