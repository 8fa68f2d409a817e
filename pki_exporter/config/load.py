"""Where the config file is read: YAML text -> a frozen, typed `Config`.

Every problem is a `ConfigError` whose text is one line, ``<key path>: <what was expected>``
(``tenants[0].client_id: not a GUID``), so that ``--config.check``, a refused start and a
refused reload all say the same thing. The rules are the spec's "Config file" section.

Three steps:

1. `read_yaml` / `compose_yaml`: the one YAML reader of the exporter (this file and the web
   config). It refuses a key written twice in one mapping (``tenants[0].name: duplicate
   key``) instead of silently keeping the last one.
2. `_Prepare`: what a Struct cannot say. A key set to ``null`` is the same as leaving it
   out; durations become seconds; relative file paths are resolved; each tenant's one
   credential, its cloud's URLs and the rules across fields (``writes_per_20s <=
   requests_per_20s``, duplicate names and CA ids, https roots) are applied. A value that
   breaks such a rule is replaced by an `_Invalid` holding its message, and unknown keys
   are moved to the front of their mapping, so that the conversion below meets the
   problems in the order a reader of the file would.
3. `msgspec.convert` into the Structs of `model` (unknown keys, required keys, types,
   ranges, patterns), and `_message` words msgspec's error as the config's message.

No value of a secret (inline client secret, file contents) ever enters a message.
`load_config` resolves relative file paths against the config file's directory, as
Prometheus does; `parse_config` leaves them as written. What looks outside the file
(environment variables, secret and certificate files) is in `check`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import yaml

from pki_exporter.config.model import (
    CLOUDS,
    DEFAULT_WINDOWS,
    HOST_PATTERN,
    LEAF_SOURCES,
    MAX_BUDGET,
    MAX_CONCURRENCY,
    MAX_CRL_SIZE,
    MAX_GRACE,
    MAX_HOST_LENGTH,
    MAX_INTERVAL,
    MAX_NAME_LENGTH,
    MAX_TIMEOUT,
    MAX_WINDOW_DAYS,
    CARef,
    CertificateCredential,
    ClientSecretEnv,
    ClientSecretFile,
    ClientSecretInline,
    Config,
    Credential,
    CRLConfig,
    GraphBudgetConfig,
    ManagedIdentityCredential,
    RefreshConfig,
    TenantConfig,
    WorkloadIdentityCredential,
)

__all__ = [
    "ConfigError",
    "DuplicateKeyError",
    "compose_yaml",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_yaml",
]

_S = TypeVar("_S", bound=msgspec.Struct)


class ConfigError(Exception):
    """An invalid config; ``str(error)`` is one line: ``<key path>: <message>``.

    ``path`` is empty for problems of the document as a whole (YAML syntax, empty file).
    """

    path: str
    message: str

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        text = f"{path}: {message}" if path else message
        super().__init__(" ".join(text.splitlines()))


# ----------------------------------------------------------------------------- limits

MAX_FILE_BYTES = 1 << 20  # a config file, a secret or a certificate is far smaller


def _keys(struct: type[msgspec.Struct], *leave_out: str) -> tuple[str, ...]:
    return tuple(name for name in struct.__struct_fields__ if name not in leave_out)


# The keys of each mapping of the file: the fields of its Struct.
_TOP_KEYS = _keys(Config, "warnings", "source")
_REFRESH_KEYS = _keys(RefreshConfig)
_TENANT_KEYS = _keys(TenantConfig)
_BUDGET_KEYS = _keys(GraphBudgetConfig)
_CERTIFICATE_KEYS = _keys(CertificateCredential)
_CA_KEYS = _keys(CARef)
_CRL_KEYS = _keys(CRLConfig)
_CREDENTIALS: dict[str, type[Credential]] = {
    str(kind.__struct_config__.tag): kind
    for kind in (
        ClientSecretEnv,
        ClientSecretFile,
        ClientSecretInline,
        CertificateCredential,
        WorkloadIdentityCredential,
        ManagedIdentityCredential,
    )
}
_CREDENTIAL_KINDS = tuple(_CREDENTIALS)

_HOST = re.compile(HOST_PATTERN)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
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
_SIZE_EXPECTED = "expected a size like 64MiB, 512KiB or a number of bytes"
_PROXY_EXPECTED = "expected an http or https URL like http://proxy.corp:3128"
_URL_EXPECTED = "expected an https URL like https://graph.example"
_URL_PARTS = "expected only scheme, host and port, like https://graph.example"
_TENANT_ID_EXPECTED = "not a GUID or a domain name like contoso.onmicrosoft.com"
_CAS_EXPECTED = 'expected "all" or a list of CAs with id and optional name'
_INLINE_ADVICE = (
    "secret written inline in the config file; use client_secret_env or client_secret_file"
)

# ----------------------------------------------------------------------------- entry points


def load_config(path: str) -> Config:
    """Read and validate the file at `path`; relative paths inside it are resolved from its
    directory. An unreadable file is a `ConfigError` on `path`."""
    text, context = _read_file(path)
    return _build(text, context)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate config text; `source` is only recorded (file paths stay as written)."""
    return _build(text, _Context(source, None, None))


def parse_duration(text: str | int | float, path: str) -> float:
    """A Prometheus duration (``500ms``, ``30s``, ``5m``, ``1h30m``, ``1d``, ``1w``) in
    seconds. ``0`` (string or number) is 0.0 and callers decide whether zero is allowed;
    any other bare number is refused, since its unit would be a guess."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text == 0:
        return 0.0
    if not isinstance(text, str) or not text or len(text) > 64:
        raise ConfigError(path, _DURATION_EXPECTED)
    if text == "0":
        return 0.0
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ConfigError(path, _DURATION_EXPECTED)
    total = sum(int(n) * unit for n, unit in zip(match.groups(), _DURATION_MS, strict=True) if n)
    if total > _MAX_DURATION_MS:
        raise ConfigError(path, "duration out of range")
    return total / 1000


def _read_file(path: str) -> tuple[str, _Context]:
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {_os_reason(exc)}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(path, "cannot read: larger than 1 MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(path, "cannot read: not UTF-8 text") from None
    context = _Context(path, os.path.dirname(os.path.abspath(path)), stat.S_IMODE(mode))
    return text, context


# ----------------------------------------------------------------------------- YAML


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A key written twice in one mapping; `path` is the key's path (``tenants[0].name``)."""

    def __init__(self, path: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem="duplicate key", problem_mark=mark)
        self.path = path

    @property
    def where(self) -> str:
        mark = self.problem_mark
        return f"line {mark.line + 1} column {mark.column + 1}" if mark else ""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping."""

    def refuse_duplicates(self, root: yaml.Node, *, as_written: bool = False) -> None:
        """Raise `DuplicateKeyError` for the first key written twice in a mapping, walking
        the document in the order it is written. Keys are compared as the loader reads them
        (``1`` and ``01`` are one key), or `as_written` (for a reader of scalars as written,
        such as the web config's: ``1`` and ``01`` are two)."""
        seen: set[int] = set()  # aliases share nodes: each is walked once
        pending: list[tuple[yaml.Node, str]] = [(root, "")]
        while pending:
            node, path = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            children: list[tuple[yaml.Node, str]] = []
            if isinstance(node, yaml.SequenceNode):
                children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            elif isinstance(node, yaml.MappingNode):
                keys: set[object] = set()
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<: *defaults` may be overridden, as YAML says
                    scalar = isinstance(key_node, yaml.ScalarNode)
                    key = key_node.value if as_written and scalar else self._key(key_node)
                    shown = f"{path}.{key}" if path else str(key)
                    where = shown if as_written else _join(path, key)
                    if key in keys:
                        raise DuplicateKeyError(where, key_node.start_mark)
                    keys.add(key)
                    children.append((value_node, where))
            pending.extend(reversed(children))  # walked in the order they are written

    def _key(self, node: yaml.Node) -> object:
        """The key as the loader reads it (``1`` and ``01`` are one key), or as written
        when it cannot be read here (the loader then says why, or the caller)."""
        if isinstance(node, yaml.ScalarNode):
            try:
                key = self.construct_object(node, deep=True)
                hash(key)
            except (yaml.YAMLError, ValueError, OverflowError, TypeError):
                return (node.tag, node.value)
            return key
        return (type(node).__name__, id(node))


def compose_yaml(text: str) -> yaml.Node | None:
    """The YAML node tree of `text` (None for an empty document), each scalar as written.
    Raises `DuplicateKeyError` for a key repeated as written, with its path as written
    (``basic_auth_users.a:b``), else PyYAML's errors."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            loader.refuse_duplicates(node, as_written=True)
        return node
    finally:
        loader.dispose()


def read_yaml(text: str) -> object:
    """The data of `text`, as `yaml.safe_load` reads it, refusing repeated keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.refuse_duplicates(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _load_yaml(text: str) -> object:
    """`read_yaml` with its errors as one-line `ConfigError`s."""
    try:
        return read_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(exc.path, f"duplicate key ({exc.where})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ConfigError("", f"{where}{what}") from None
    except yaml.YAMLError as exc:  # reader errors: bad characters, bad encoding
        raise ConfigError("", f"invalid YAML: {_first_line(exc)}") from None
    except RecursionError:
        raise ConfigError("", "invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # impossible dates, overlong integers
        raise ConfigError("", f"invalid YAML value: {_first_line(exc)}") from None


# ----------------------------------------------------------------------------- the document


@dataclass(slots=True)
class _Context:
    source: str
    base_dir: str | None  # relative file paths are joined to this, when set
    file_mode: int | None  # permission bits of the config file, when read from one
    warnings: list[str] = field(default_factory=list)


def _build(text: str, context: _Context) -> Config:
    return _build_document(_load_yaml(text), context)


def _build_document(document: object, context: _Context) -> Config:
    if document is None:
        raise ConfigError("", "empty config; expected a mapping with a tenants list")
    if not isinstance(document, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {_kind(document)}")
    return _Prepare(context).config(document)


class _Invalid:
    """Stands in the document for a value that breaks a rule msgspec cannot check; the
    conversion stops at it (no Struct field accepts it) and reports `error`."""

    __slots__ = ("error",)

    def __init__(self, path: str, message: str) -> None:
        self.error = ConfigError(path, message)


_Doc = dict[str, object]


class _Prepare:
    """Step 2 of the module docstring, then the conversion itself (`_convert`)."""

    def __init__(self, context: _Context) -> None:
        self.context = context

    def config(self, document: dict[object, object]) -> Config:
        out, raw = self.fields(document, "", _TOP_KEYS)
        out["refresh"] = self.refresh(raw.get("refresh"))
        windows = raw.get("expiry_windows_days")
        out["expiry_windows_days"] = (
            DEFAULT_WINDOWS if windows is None else self.sequence(windows, "expiry_windows_days")
        )
        out["tenants"] = self.tenants(raw.get("tenants"))
        if "crl" in raw:
            out["crl"] = self.crl(raw["crl"])
        tenants = out["tenants"]
        if isinstance(tenants, list):
            self.warn_if_exposed(tenants)
        out["warnings"] = [" ".join(w.splitlines()) for w in self.context.warnings]
        out["source"] = self.context.source
        config = _convert(out, Config, "")
        days = tuple(sorted(set(config.expiry_windows_days)))
        return msgspec.structs.replace(config, expiry_windows_days=days)

    # ------------------------------------------------------------------------- mappings

    def fields(self, value: dict[Any, object], path: str, keys: Iterable[str]) -> tuple[_Doc, _Doc]:
        """(the mapping to convert, holding only its unknown keys so far; the known keys
        that are set). An unknown key becomes an `_Invalid` under a name no Struct has,
        so that msgspec reports it (``unknown key``, with a suggestion) before the rest."""
        allowed = tuple(keys)
        out: _Doc = {}
        for key in value:
            if isinstance(key, str) and key in allowed:
                continue
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]}?)" if close else ""
            out[f"\0{len(out)}"] = _Invalid(_join(path, key), f"unknown key{hint}")
        known = {key: item for key, item in value.items() if key in allowed and item is not None}
        return out, known

    def mapping(self, value: object, path: str, keys: Iterable[str]) -> tuple[_Doc, _Doc] | None:
        """`fields` of a mapping, or None when `value` is not one (msgspec then says so)."""
        return self.fields(value, path, keys) if isinstance(value, dict) else None

    def sequence(self, value: object, path: str) -> object:
        """A list as it is; anything else refused here, since msgspec would take a set."""
        if isinstance(value, list):
            return value
        return _Invalid(path, f"expected list, got {_kind(value)}")

    # ------------------------------------------------------------------------- refresh

    def refresh(self, value: object) -> object:
        if value is None:
            return {}
        parts = self.mapping(value, "refresh", _REFRESH_KEYS)
        if parts is None:
            return value
        out, raw = parts
        if "interval" in raw:
            out["interval"] = self.duration(raw["interval"], "refresh.interval")
            seconds = out["interval"]
            if isinstance(seconds, float) and 0 < seconds < 60:
                self.context.warnings.append(
                    f"refresh.interval: {_format_short(seconds)} is below one minute; "
                    "Graph throttles heavy readers"
                )
        if "timeout" in raw:
            out["timeout"] = self.duration(raw["timeout"], "refresh.timeout")
        if "concurrency" in raw:
            out["concurrency"] = raw["concurrency"]
        return out

    # ------------------------------------------------------------------------- crl

    def crl(self, value: object) -> object:
        parts = self.mapping(value, "crl", _CRL_KEYS)
        if parts is None:
            return value
        out, raw = parts
        if "enabled" in raw:
            out["enabled"] = raw["enabled"]
        limits = {"interval": MAX_INTERVAL, "timeout": MAX_TIMEOUT, "publication_grace": MAX_GRACE}
        for key, most in limits.items():
            if key in raw:
                seconds = self.duration(raw[key], f"crl.{key}")
                out[key] = self.bounded(
                    seconds, f"crl.{key}", most, zero=key == "publication_grace"
                )
        if "max_size" in raw:
            out["max_size"] = self.size(raw["max_size"], "crl.max_size")
        if "allowed_hosts" in raw:
            out["allowed_hosts"] = self.host_patterns(raw["allowed_hosts"], "crl.allowed_hosts")
        return out

    def bounded(self, seconds: object, path: str, most: float, *, zero: bool) -> object:
        if not isinstance(seconds, float):
            return seconds
        if seconds == 0 and not zero:
            return _Invalid(path, "must be greater than 0")
        if seconds > most:
            return _Invalid(path, f"must be at most {_format_long(most)}")
        return seconds

    def size(self, value: object, path: str) -> object:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return _Invalid(path, _SIZE_EXPECTED)
        match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
        if isinstance(value, str) and match is None:
            return _Invalid(path, _SIZE_EXPECTED)
        size = value if isinstance(value, int) else int(match[1]) * _SIZE_UNITS[match[2] or "B"]  # type: ignore[index]
        if not 1 <= size <= MAX_CRL_SIZE:
            return _Invalid(path, "must be between 1B and 1GiB")
        return size

    def host_patterns(self, value: object, path: str) -> object:
        """Host names, IPs, or ``*.`` + a domain: lower-cased, validated."""
        items = self.sequence(value, path)
        if not isinstance(items, list):
            return items
        hosts: list[object] = []
        for index, item in enumerate(items):
            where = f"{path}[{index}]"
            if not isinstance(item, str):
                return _Invalid(where, f"expected string, got {_kind(item)}")
            host = item.strip().lower()
            bare = host[2:] if host.startswith("*.") else host
            if not bare or "*" in bare or not _valid_host(bare):
                return _Invalid(where, "expected a host name, an IP, or *. and a domain")
            hosts.append(host)
        return hosts

    def proxy(self, out: _Doc, raw: _Doc, path: str) -> None:
        """The tenant's proxy keys: a bare http(s) origin without credentials (they come
        from proxy_credentials_env or _file), no_proxy as a list or a comma-separated string."""
        if "proxy_url" in raw:
            out["proxy_url"] = self.proxy_url(raw["proxy_url"], f"{path}.proxy_url")
        if "no_proxy" in raw:
            value = raw["no_proxy"]
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list):
                for index, entry in enumerate(value):
                    problem = _no_proxy_problem(entry)
                    if problem is not None:
                        value = _Invalid(f"{path}.no_proxy[{index}]", problem)
                        break
            out["no_proxy"] = value
        if "proxy_from_environment" in raw:
            out["proxy_from_environment"] = raw["proxy_from_environment"]
        if "proxy_credentials_env" in raw:
            out["proxy_credentials_env"] = raw["proxy_credentials_env"]
        if "proxy_credentials_file" in raw:
            where = f"{path}.proxy_credentials_file"
            out["proxy_credentials_file"] = self.file_path(raw["proxy_credentials_file"], where)
        if "proxy_credentials_env" in raw and "proxy_credentials_file" in raw:
            out["proxy_credentials_file"] = _Invalid(
                path, "expected at most one of proxy_credentials_env, proxy_credentials_file"
            )

    def proxy_url(self, value: object, path: str) -> object:
        text = self.text(value, path)
        if not isinstance(text, str):
            return text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            return _Invalid(path, _PROXY_EXPECTED)
        if parts.scheme.lower() not in ("http", "https"):
            return _Invalid(path, _PROXY_EXPECTED)
        if "@" in parts.netloc:
            return _Invalid(
                path,
                "credentials written inline; use proxy_credentials_env or proxy_credentials_file",
            )
        host = parts.hostname or ""
        if parts.path not in ("", "/") or parts.query or parts.fragment or not _valid_host(host):
            return _Invalid(
                path, "expected only scheme, host and port, like http://proxy.corp:3128"
            )
        shown = f"[{host}]" if ":" in host else host
        origin = f"{parts.scheme.lower()}://{shown}"
        return origin if port is None else f"{origin}:{port}"

    def duration(self, value: object, path: str) -> object:
        if isinstance(value, (str, int, float)):
            try:
                return parse_duration(value, path)
            except ConfigError as exc:
                return _Invalid(exc.path, exc.message)
        return _Invalid(path, _DURATION_EXPECTED)

    # ------------------------------------------------------------------------- tenants

    def tenants(self, value: object) -> object:
        if value is None:
            return _Invalid("tenants", "required")
        items = self.sequence(value, "tenants")
        if not isinstance(items, list):
            return items
        out: list[object] = []
        names: set[str] = set()
        for index, item in enumerate(items):
            path = f"tenants[{index}]"
            tenant = self.tenant(item, path)
            if isinstance(tenant, TenantConfig):
                if tenant.name in names:
                    message = f"duplicate tenant name {_quote(tenant.name)}"
                    tenant = _Invalid(f"{path}.name", message)
                else:
                    names.add(tenant.name)
            out.append(tenant)
        return out

    def tenant(self, value: object, path: str) -> object:
        parts = self.mapping(value, path, _TENANT_KEYS)
        if parts is None:
            return value
        out, raw = parts
        out["name"] = self.required(raw, "name", path, self.text)
        out["tenant_id"] = self.required(raw, "tenant_id", path, _identifier)
        credential = self.required(raw, "credential", path, self.credential)
        out["credential"] = credential
        out["client_id"] = self.client_id(raw.get("client_id"), credential, path)
        cloud = raw.get("cloud", "global")
        out["cloud"] = cloud
        graph_root, authority = CLOUDS.get(cloud, ("", "")) if isinstance(cloud, str) else ("", "")
        out["authority_host"] = authority
        if "authority_host" in raw:
            out["authority_host"] = self.https_root(raw["authority_host"], f"{path}.authority_host")
        out["graph_url"] = graph_root
        if "graph_url" in raw:
            out["graph_url"] = self.https_root(raw["graph_url"], f"{path}.graph_url")
        out["ca_bundle"] = None
        if "ca_bundle" in raw:
            out["ca_bundle"] = self.file_path(raw["ca_bundle"], f"{path}.ca_bundle")
        out["certification_authorities"] = self.authorities(
            raw.get("certification_authorities", "all"), f"{path}.certification_authorities"
        )
        if "leaf_source" in raw:
            out["leaf_source"] = raw["leaf_source"]
        if "graph_budget" in raw:
            out["graph_budget"] = self.budget(raw["graph_budget"], f"{path}.graph_budget")
        self.proxy(out, raw, path)
        return _convert_or_invalid(out, TenantConfig, path)

    def required(
        self, raw: _Doc, key: str, path: str, check: Callable[[object, str], object]
    ) -> object:
        value = raw.get(key)
        if value is None:
            return _Invalid(f"{path}.{key}", "required")
        return check(value, f"{path}.{key}")

    def client_id(self, value: object, credential: object, tenant_path: str) -> object:
        path = f"{tenant_path}.client_id"
        if isinstance(credential, ManagedIdentityCredential):
            if value is not None:
                return _Invalid(
                    path,
                    "not used with managed_identity; a user-assigned identity's client_id "
                    "goes under credential.managed_identity",
                )
            return None
        if value is None:
            return _Invalid(path, "required")
        return _identifier(value, path)

    def https_root(self, value: object, path: str) -> object:
        """``https://host[:port]``: the authority and Graph roots get paths appended to
        them and receive tokens or secrets, so anything but a bare https origin is
        refused."""
        text = self.text(value, path)
        if not isinstance(text, str):
            return text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            return _Invalid(path, _URL_PARTS)
        if parts.scheme.lower() != "https":
            return _Invalid(path, _URL_EXPECTED)
        host = parts.hostname or ""
        if "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
            return _Invalid(path, _URL_PARTS)
        if not _valid_host(host):
            return _Invalid(path, _URL_PARTS)
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}" if port is None else f"https://{shown}:{port}"

    def budget(self, value: object, path: str) -> object:
        parts = self.mapping(value, path, _BUDGET_KEYS)
        if parts is None:
            return value
        out, raw = parts
        out.update(raw)
        budget = _convert_or_invalid(out, GraphBudgetConfig, path)
        if (
            isinstance(budget, GraphBudgetConfig)
            and budget.writes_per_20s > budget.requests_per_20s
        ):
            return _Invalid(
                f"{path}.writes_per_20s",
                f"must not exceed requests_per_20s ({budget.requests_per_20s}): "
                "writes are requests too",
            )
        return budget

    def authorities(self, value: object, path: str) -> object:
        if value == "all":
            return "all"
        if not isinstance(value, list):
            return _Invalid(path, _CAS_EXPECTED)
        refs: list[object] = []
        seen: set[str] = set()
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            parts = self.mapping(item, where, _CA_KEYS)
            if parts is None:
                refs.append(item)
                continue
            out, raw = parts
            out["id"] = self.required(raw, "id", where, _identifier)
            if "name" in raw:
                out["name"] = self.text(raw["name"], f"{where}.name")
            ref = _convert_or_invalid(out, CARef, where)
            if isinstance(ref, CARef) and ref.id in seen:
                refs.append(_Invalid(f"{where}.id", f"duplicate CA id {ref.id}"))
                continue
            if isinstance(ref, CARef):
                seen.add(ref.id)
            refs.append(ref)
        return refs

    # ------------------------------------------------------------------------- credentials

    def credential(self, value: object, path: str) -> object:
        if not isinstance(value, dict):
            return value
        unknown, _set = self.fields(value, path, _CREDENTIAL_KINDS)
        if unknown:
            return next(iter(unknown.values()))  # the first unknown key
        if len(value) != 1:
            return _Invalid(path, f"expected exactly one of {', '.join(_CREDENTIAL_KINDS)}")
        ((kind, body),) = value.items()  # null bodies kept: `client_secret_env:` is a mistake
        where = f"{path}.{kind}"
        if kind == "client_secret_env":
            return _convert_or_invalid({"env": body}, ClientSecretEnv, where, flat=True)
        if kind == "client_secret_file":
            return _convert_or_invalid(
                {"path": self.file_path(body, where)}, ClientSecretFile, where, flat=True
            )
        if kind == "client_secret":
            if isinstance(body, str) and not body.strip():
                return _Invalid(where, "must not be empty")
            secret = _convert_or_invalid({"value": body}, ClientSecretInline, where, flat=True)
            if isinstance(secret, ClientSecretInline):
                self.context.warnings.append(f"{where}: {_INLINE_ADVICE}")
            return secret
        if kind == "certificate":
            return self.certificate(body, where)
        if kind == "workload_identity":
            parts = self.mapping({} if body is None else body, where, ("token_file",))
            if parts is None:
                return _convert_or_invalid(body, WorkloadIdentityCredential, where)
            out, raw = parts
            if "token_file" in raw:
                out["token_file"] = self.file_path(raw["token_file"], f"{where}.token_file")
            return _convert_or_invalid(out, WorkloadIdentityCredential, where)
        parts = self.mapping({} if body is None else body, where, ("client_id",))
        if parts is None:
            return _convert_or_invalid(body, ManagedIdentityCredential, where)
        out, raw = parts
        if "client_id" in raw:
            out["client_id"] = _identifier(raw["client_id"], f"{where}.client_id")
        return _convert_or_invalid(out, ManagedIdentityCredential, where)

    def certificate(self, value: object, path: str) -> object:
        parts = self.mapping(value, path, _CERTIFICATE_KEYS)
        if parts is None:
            return _convert_or_invalid(value, CertificateCredential, path)
        out, raw = parts
        for key in ("private_key_file", "certificate_file", "pfx_file", "passphrase_file"):
            if key in raw:
                out[key] = self.file_path(raw[key], f"{path}.{key}")
        if "passphrase_env" in raw:
            out["passphrase_env"] = raw["passphrase_env"]
        cert = _convert_or_invalid(out, CertificateCredential, path)
        if isinstance(cert, CertificateCredential):
            return _certificate_rule(cert, path) or cert
        return cert

    def warn_if_exposed(self, tenants: list[object]) -> None:
        """A secret in a file that others can read is no longer a secret: say so loudly."""
        mode = self.context.file_mode
        inline = any(
            isinstance(t, TenantConfig) and isinstance(t.credential, ClientSecretInline)
            for t in tenants
        )
        if mode is None or not inline:
            return
        readers = [who for bit, who in ((0o040, "group"), (0o004, "others")) if mode & bit]
        if readers:
            self.context.warnings.append(
                f"{self.context.source}: holds an inline client secret and is readable by "
                f"{' and '.join(readers)} (mode {mode:04o}); "
                "restrict it with chmod 600 or move the secret to client_secret_file"
            )

    # ------------------------------------------------------------------------- strings

    def text(self, value: object, path: str) -> object:
        """A non-empty string without control characters (names, paths, URLs); what is
        not a string is left for msgspec to refuse."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return _Invalid(path, "must not be empty")
        if not value.isprintable():
            return _Invalid(path, "must not contain control or non-printable characters")
        return value

    def file_path(self, value: object, path: str) -> object:
        text = self.text(value, path)
        if not isinstance(text, str) or self.context.base_dir is None or os.path.isabs(text):
            return text
        return os.path.join(self.context.base_dir, text)


def _certificate_rule(cert: CertificateCredential, path: str) -> _Invalid | None:
    key, pem, pfx = cert.private_key_file, cert.certificate_file, cert.pfx_file
    if pfx is not None and (key is not None or pem is not None):
        return _Invalid(
            path, "expected either private_key_file and certificate_file, or pfx_file, not both"
        )
    if pfx is None and key is None and pem is None:
        return _Invalid(path, "expected either private_key_file and certificate_file, or pfx_file")
    if key is not None and pem is None:
        return _Invalid(f"{path}.certificate_file", "required with private_key_file")
    if pem is not None and key is None:
        return _Invalid(f"{path}.private_key_file", "required with certificate_file")
    if cert.passphrase_env is not None and cert.passphrase_file is not None:
        return _Invalid(path, "expected at most one of passphrase_env, passphrase_file")
    return None


def _identifier(value: object, path: str) -> object:
    """GUIDs and domain names are compared lower-cased (ASCII only: ``"K"``, the Kelvin
    sign, would otherwise pass for a ``k``)."""
    if isinstance(value, str) and value.isascii():
        return value.lower()
    return value


def _no_proxy_problem(entry: object) -> str | None:
    """Why a ``no_proxy`` entry matches nothing (issue 20): as curl reads them, ``*``, a
    host or domain (``.corp.example``, ``*.corp.example``), an IP or a CIDR; a port is
    ignored. Not a string: left to the type check."""
    if not isinstance(entry, str):
        return None
    text = entry.strip()
    if text == "*":
        return None
    if "://" in text:
        host = text.split("://", 1)[1].split("/", 1)[0]
        return f"{text!r} is a URL; write the host alone ({host})"
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"{text!r} is not a CIDR like 10.0.0.0/8"
        return None
    host = text.removeprefix("*").removeprefix(".")
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if not _valid_host(host):
        return f"{text!r}: expected a host, a domain (.corp.example), an IP or a CIDR"
    return None


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.isascii() and len(host) <= MAX_HOST_LENGTH and _HOST.fullmatch(host) is not None
    return True


# ----------------------------------------------------------------------------- conversion


def _convert(value: object, kind: type[_S], path: str, *, flat: bool = False) -> _S:
    """`msgspec.convert` of the prepared `value` (found at `path` in the file), its error
    worded as a `ConfigError`. `flat`: `value` is ``{field: body}`` standing for a body
    written directly at `path` (``client_secret_env: NAME``)."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise _message(str(exc), value, path, flat=flat) from None


def _convert_or_invalid(
    value: object, kind: type[_S], path: str, *, flat: bool = False
) -> _S | _Invalid:
    try:
        return _convert(value, kind, path, flat=flat)
    except ConfigError as exc:
        return _Invalid(exc.path, exc.message)


_AT = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<where>[^`]*)`)?", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_TYPE_NAMES = {
    "int": "integer",
    "float": "number",
    "str": "string",
    "object": "mapping",
    "array": "list",
    "bool": "boolean",
}
_BOUNDS = {
    "concurrency": (1, MAX_CONCURRENCY),
    "expiry_windows_days": (1, MAX_WINDOW_DAYS),
    "requests_per_20s": (1, MAX_BUDGET),
    "writes_per_20s": (1, MAX_BUDGET),
}
_PATTERN_MESSAGES = {
    "tenant_id": _TENANT_ID_EXPECTED,
    "client_id": "not a GUID",
    "id": "not a GUID",
    "env": "not an environment variable name",
    "passphrase_env": "not an environment variable name",
    "proxy_credentials_env": "not an environment variable name",
}
_MISSING = object()


def _message(text: str, root: object, prefix: str, *, flat: bool) -> ConfigError:
    """msgspec's error `text` about `root` (found at `prefix` in the file), in the words
    of the config's messages."""
    match = _AT.fullmatch(text)
    assert match is not None  # every string matches
    what = match["what"]
    steps: list[str | int] = [
        name if name else int(index) for name, index in _STEP.findall(match["where"] or "")
    ]
    value: object = root
    for step in steps:
        value = _step(value, step)
    shown = steps[1:] if flat else steps
    path = prefix
    for step in shown:
        path = f"{path}[{step}]" if isinstance(step, int) else _join(path, step)
    field = next((step for step in reversed(steps) if isinstance(step, str)), "")

    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", what, re.DOTALL)
    if unknown:
        invalid = _step(value, unknown[1])
        if isinstance(invalid, _Invalid):
            return invalid.error
        return ConfigError(_join(path, unknown[1]), "unknown key")
    if isinstance(value, _Invalid):
        return value.error
    missing = re.fullmatch(r"Object missing required field `(.*)`", what, re.DOTALL)
    if missing:
        return ConfigError(_join(path, missing[1]), "required")
    expected = re.fullmatch(r"Expected `([^`]*)`, got `[^`]*`", what)
    if expected:
        names = [_TYPE_NAMES.get(name, name) for name in expected[1].split(" | ") if name != "null"]
        return ConfigError(path, f"expected {' or '.join(names)}, got {_kind(value)}")
    if what.startswith("Invalid enum value"):
        if field == "leaf_source":
            choices = ", ".join(LEAF_SOURCES)
            return ConfigError(path, f"{_quote(str(value))} is not one of {choices}")
        if isinstance(value, str) and value.strip():
            return ConfigError(path, f"expected one of {', '.join(CLOUDS)}")
    if isinstance(value, str) and not value.strip():
        return ConfigError(path, "must not be empty")
    if "of length >=" in what:
        return ConfigError(path, "must not be empty")
    if "matching regex" in what and field in _PATTERN_MESSAGES:
        return ConfigError(path, _PATTERN_MESSAGES[field])
    if "of length <=" in what:
        if field == "tenant_id":
            return ConfigError(path, _TENANT_ID_EXPECTED)
        return ConfigError(path, f"at most {MAX_NAME_LENGTH} characters")
    bound = re.fullmatch(r"Expected `(?:int|float)` (>=|>|<=|<) .*", what)
    if bound:
        if field == "interval":
            return ConfigError(path, "must be at most 7d")
        if field == "timeout":
            return ConfigError(
                path, "must be greater than 0" if bound[1] == ">" else "must be at most 1h"
            )
        low, high = _BOUNDS.get(field, (0, 0))
        return ConfigError(path, f"must be between {low} and {high}")
    return ConfigError(path, " ".join(what.split()))


def _step(value: object, step: str | int) -> object:
    if isinstance(value, dict):
        return value.get(step, _MISSING)
    if isinstance(value, list) and isinstance(step, int) and step < len(value):
        return value[step]
    return _MISSING


# ----------------------------------------------------------------------------- messages


def _kind(value: object) -> str:
    """The YAML name of a value's type, as shown in ``expected X, got Y``."""
    for kind, name in _KIND_NAMES:
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


_KIND_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: a bool is an int in Python, never in a config
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (dict, "mapping"),
    (list, "list"),
    (bytes, "binary"),
    (date, "timestamp"),
    (set, "set"),
)


def _join(path: str, key: object) -> str:
    """``path.key``; keys that are not plain words are quoted (one line, at most 40 chars)."""
    plain = isinstance(key, str) and _PLAIN_KEY.fullmatch(key)
    shown = str(key) if plain else json.dumps(str(key)[:40])
    return f"{path}.{shown}" if path else shown


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=not text.isprintable())


def _format_long(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return _format_short(seconds)


def _format_short(seconds: float) -> str:
    milliseconds = round(seconds * 1000)
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__
