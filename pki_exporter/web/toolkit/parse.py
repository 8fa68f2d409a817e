"""Parsing a web config file into a `WebConfig`: every key checked, errors in one line.

Start-up is strict (an invalid file stops the exporter with a one-line message naming the
key). Passwords, hashes and private keys never appear in messages.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

import yaml

from pki_exporter.config.load import DuplicateKeyError, compose_yaml
from pki_exporter.web.toolkit.model import (
    ALLOWED_HEADERS,
    CIPHER_SUITES,
    CLIENT_AUTH_TYPES,
    CURVES,
    TLS_VERSIONS,
    RateLimit,
    TLSServerConfig,
    WebConfig,
    WebConfigError,
)

_CLIENT_AUTH_ALIASES: Final = {"RequireClientCert": "RequireAnyClientCert"}
_UNSUPPORTED_CLIENT_AUTH: Final = (
    "is not supported: Python's ssl module cannot require a client certificate without "
    "verifying it; use RequireAndVerifyClientCert with client_ca_file"
)
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


class Doc:
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


def _compose(text: str, doc: Doc) -> yaml.Node | None:
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


def parse(text: str, doc: Doc, base_dir: str) -> WebConfig:
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


def _parse_duration(doc: Doc, node: yaml.Node | None, path: str) -> float:
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


def _parse_rate_limit(doc: Doc, node: yaml.Node | None) -> RateLimit | None:
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
    doc: Doc, node: yaml.Node | None, base_dir: str, notes: list[str]
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


def _parse_http(doc: Doc, node: yaml.Node | None) -> tuple[Mapping[str, str], bool]:
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


def _parse_users(doc: Doc, node: yaml.Node | None) -> Mapping[str, str]:
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
