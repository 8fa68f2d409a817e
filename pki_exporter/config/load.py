"""Where the config file is validated: YAML text -> a frozen, typed `Config`.

Every problem is a `ConfigError` whose text is one line, ``<key path>: <what was expected>``
(``tenants[0].client_id: not a GUID``), so that ``--config.check``, a refused start and a
refused reload all say the same thing. The rules are the spec's "Config file" section.

The validation is written by hand rather than delegated to a schema library: the messages
are part of the user contract, and a reader should be able to see each rule next to its
message. Two conventions hold throughout:

- a key set to ``null`` (``ca_bundle:`` with nothing after it) is the same as leaving it out;
- no value of a secret (inline client secret, file contents) ever enters a message.

`load_config` resolves relative file paths against the config file's directory, as
Prometheus does; `parse_config` leaves them as written. `check_config` looks outside the
file (environment variables, secret and certificate files) for ``--config.check`` and start.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import yaml

from pki_exporter.runtime.ids import is_guid

_T = TypeVar("_T", bound=str)

__all__ = [
    "CLOUDS",
    "CARef",
    "CertificateCredential",
    "ClientSecretEnv",
    "ClientSecretFile",
    "ClientSecretInline",
    "Config",
    "ConfigError",
    "Credential",
    "ManagedIdentityCredential",
    "RefreshConfig",
    "TenantConfig",
    "WorkloadIdentityCredential",
    "check_config",
    "check_config_file",
    "load_config",
    "parse_config",
    "parse_duration",
]


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


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    interval: float = 300.0  # seconds; 0 = refresh on each scrape
    timeout: float = 60.0  # seconds, one HTTP request, > 0
    concurrency: int = 4  # CAs refreshed at once, >= 1


@dataclass(frozen=True, slots=True)
class ClientSecretEnv:
    env: str  # name of the environment variable holding the secret


@dataclass(frozen=True, slots=True)
class ClientSecretFile:
    path: str


@dataclass(frozen=True, slots=True)
class ClientSecretInline:
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CertificateCredential:
    """A PEM key and certificate pair, or a PFX (PKCS#12) file; optionally a passphrase."""

    private_key_file: str | None = None
    certificate_file: str | None = None
    pfx_file: str | None = None
    passphrase_env: str | None = None
    passphrase_file: str | None = None


@dataclass(frozen=True, slots=True)
class WorkloadIdentityCredential:
    token_file: str | None = None  # None -> AZURE_FEDERATED_TOKEN_FILE at use time


@dataclass(frozen=True, slots=True)
class ManagedIdentityCredential:
    client_id: str | None = None  # None -> system-assigned identity


Credential: TypeAlias = (
    ClientSecretEnv
    | ClientSecretFile
    | ClientSecretInline
    | CertificateCredential
    | WorkloadIdentityCredential
    | ManagedIdentityCredential
)


@dataclass(frozen=True, slots=True)
class CARef:
    id: str  # GUID, lower-cased
    name: str | None = None  # overrides the CA's display name in the `ca` label


LeafSource = Literal["action", "navigation"]
LEAF_SOURCES: tuple[LeafSource, ...] = ("action", "navigation")


@dataclass(frozen=True, slots=True)
class GraphBudgetConfig:
    """Requests one tenant's app may send to Graph in any 20 s (token requests aside).

    The defaults stay under Microsoft's documented Intune limits per app and tenant
    (1,000 requests of any method and 100 POST/PUT/PATCH/DELETE per 20 s), with room for
    another app of the same tenant and for clock differences.
    """

    requests_per_20s: int = 900
    writes_per_20s: int = 90


@dataclass(frozen=True, slots=True)
class TenantConfig:
    name: str
    tenant_id: str  # lower-cased GUID or domain name
    client_id: str | None  # lower-cased GUID; None only with managed_identity
    cloud: str
    authority_host: str  # https://host[:port], no trailing slash
    graph_url: str  # https://host[:port], no trailing slash
    ca_bundle: str | None
    credential: Credential
    certification_authorities: Literal["all"] | tuple[CARef, ...]
    leaf_source: LeafSource = "action"
    graph_budget: GraphBudgetConfig = GraphBudgetConfig()

    @property
    def scope(self) -> str:
        return f"{self.graph_url}/.default"


@dataclass(frozen=True, slots=True)
class Config:
    refresh: RefreshConfig
    expiry_windows_days: tuple[int, ...]
    tenants: tuple[TenantConfig, ...]
    warnings: tuple[str, ...]
    source: str


CLOUDS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "global": ("https://graph.microsoft.com", "https://login.microsoftonline.com"),
        "usgov": ("https://graph.microsoft.us", "https://login.microsoftonline.us"),
        "usgov-dod": ("https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
        "china": ("https://microsoftgraph.chinacloudapi.cn", "https://login.chinacloudapi.cn"),
    }
)

# ----------------------------------------------------------------------------- limits

MAX_NAME_LENGTH = 64
MAX_CONCURRENCY = 64
MAX_WINDOW_DAYS = 3650
MAX_INTERVAL = 7 * 86400.0  # beyond a week the expiry windows would be stale anyway
MAX_TIMEOUT = 3600.0
MAX_FILE_BYTES = 1 << 20  # a config file, a secret or a certificate is far smaller
DEFAULT_WINDOWS = (7, 30, 90)

_TOP_KEYS = ("refresh", "expiry_windows_days", "tenants")
_REFRESH_KEYS = ("interval", "timeout", "concurrency")
_TENANT_KEYS = (
    "name",
    "tenant_id",
    "client_id",
    "cloud",
    "authority_host",
    "graph_url",
    "ca_bundle",
    "credential",
    "certification_authorities",
    "leaf_source",
    "graph_budget",
)
_BUDGET_KEYS = ("requests_per_20s", "writes_per_20s")
MAX_BUDGET = 100_000  # Graph's own ceiling per app across all tenants is 130,000 per 10 s
_CREDENTIAL_KINDS = (
    "client_secret_env",
    "client_secret_file",
    "client_secret",
    "certificate",
    "workload_identity",
    "managed_identity",
)
_CERTIFICATE_KEYS = (
    "private_key_file",
    "certificate_file",
    "pfx_file",
    "passphrase_env",
    "passphrase_file",
)
_CA_KEYS = ("id", "name")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?")
_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Prometheus' duration syntax: units largest first, each at most once, whole numbers only.
_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?", re.ASCII
)
_DURATION_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000  # what fits Prometheus' int64 nanoseconds

_DURATION_EXPECTED = "expected a duration like 30s, 5m, 1h"
_URL_EXPECTED = "expected an https URL like https://graph.example"
_URL_PARTS = "expected only scheme, host and port, like https://graph.example"
_TENANT_ID_EXPECTED = "not a GUID or a domain name like contoso.onmicrosoft.com"
_INLINE_ADVICE = (
    "secret written inline in the config file; use client_secret_env or client_secret_file"
)

# ----------------------------------------------------------------------------- entry points


def load_config(path: str) -> Config:
    """Read and validate the file at `path`; relative paths inside it are resolved from its
    directory. An unreadable file is a `ConfigError` on `path`."""
    text, context = _read_file(path)
    return _build(text, context)


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


_MAX_PROBLEMS = 50


def check_config_file(path: str) -> tuple[Config | None, list[str]]:
    """Every problem of the file at `path`, not only the first: (the config, or None when
    the file itself is unusable; one line per problem, ``<key path>: <message>``).

    The loader stops at its first error; to find the next one, the offending key (or, when
    it is missing or still wrong, the item holding it) is taken out of the document and the
    rest is validated again. Each tenant is validated on its own first, so that a mistake
    in one does not hide those of the next. The credential problems of `check_config` are
    among those returned."""
    try:
        text, context = _read_file(path)
        document = _load_yaml(text)
    except ConfigError as exc:
        return None, [exc.message if exc.path == path else str(exc)]
    problems: list[str] = []

    def add(found: Iterable[str], index: int | None = None) -> None:
        for problem in found:
            if index is not None and problem.startswith("tenants[0]"):
                problem = f"tenants[{index}]" + problem[len("tenants[0]") :]  # noqa: PLW2901
            if problem not in problems:
                problems.append(problem)

    tenants = document.get("tenants") if isinstance(document, dict) else None
    several = isinstance(document, dict) and isinstance(tenants, list) and len(tenants) > 1
    if several:
        assert isinstance(document, dict) and isinstance(tenants, list)
        for index, tenant in enumerate(tenants):
            one, found = _collect({**document, "tenants": [tenant]}, context)
            add(found, index)
            if one is not None:
                add(check_config(one), index)
    config, found = _collect(document, context)
    add(found)
    if config is not None and not several:
        add(check_config(config))
    return config, problems


def _collect(document: object, context: _Context) -> tuple[Config | None, list[str]]:
    document = copy.deepcopy(document)
    problems: list[str] = []
    paths: list[str] = []
    while len(problems) < _MAX_PROBLEMS:
        attempt = _Context(context.source, context.base_dir, context.file_mode)
        try:
            return _build_document(copy.deepcopy(document), attempt), problems
        except ConfigError as exc:
            related = any(_related(exc.path, seen) for seen in paths)
            if not related:
                problems.append(str(exc))
                paths.append(exc.path)
            target = _parent(exc.path) if related else exc.path
            if target and _prune(document, target):
                continue
            target = _parent(target)
            if not (target and _prune(document, target)):
                return None, problems
    return None, problems


def _steps(path: str) -> list[str | int]:
    """``tenants[0].credential`` -> ["tenants", 0, "credential"]."""
    steps: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        steps.append(int(part[1:-1]) if part.startswith("[") else part)
    return steps


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def _related(path: str, seen: str) -> bool:
    """Whether an error at `path` is a consequence of pruning at `seen`."""
    if not path or not seen:
        return True
    return (
        seen == path
        or seen.startswith((path + ".", path + "["))
        or path.startswith((seen + ".", seen + "["))
    )


def _prune(document: object, path: str) -> bool:
    """Take the node at `path` out of `document`; False when there is none."""
    steps = _steps(path)
    if not steps:
        return False
    node = document
    for step in steps[:-1]:
        in_dict = isinstance(node, dict) and step in node
        in_list = isinstance(node, list) and isinstance(step, int) and step < len(node)
        if not (in_dict or in_list):
            return False
        node = node[step]  # type: ignore[index]
    last = steps[-1]
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = None  # keeps the other items' indexes; the loader then says so
        return True
    return False


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


def check_config(config: Config) -> list[str]:
    """Problems outside the file: unset variables, unreadable secret and certificate files.
    One line each; an empty list means the tenants' credentials can at least be read."""
    problems: list[str] = []
    for index, tenant in enumerate(config.tenants):
        path = f"tenants[{index}]"
        if tenant.ca_bundle is not None:
            problems += _check_pem(tenant.ca_bundle, f"{path}.ca_bundle", "CERTIFICATE")
        problems += _check_credential(tenant.credential, f"{path}.credential")
    return problems


# ----------------------------------------------------------------------------- the document


@dataclass(slots=True)
class _Context:
    source: str
    base_dir: str | None  # relative file paths are joined to this, when set
    file_mode: int | None  # permission bits of the config file, when read from one
    warnings: list[str] = field(default_factory=list)

    def file_path(self, value: object, path: str) -> str:
        text = _text(value, path)
        if self.base_dir is None or os.path.isabs(text):
            return text
        return os.path.join(self.base_dir, text)


def _build(text: str, context: _Context) -> Config:
    return _build_document(_load_yaml(text), context)


def _build_document(document: object, context: _Context) -> Config:
    if document is None:
        raise ConfigError("", "empty config; expected a mapping with a tenants list")
    if not isinstance(document, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {_kind(document)}")
    top = _mapping(document, "", _TOP_KEYS)
    refresh = _refresh(top.get("refresh"), context)
    windows = _windows(top.get("expiry_windows_days"))
    tenants = _tenants(top.get("tenants"), context)
    _warn_if_exposed(tenants, context)
    warnings = tuple(" ".join(warning.splitlines()) for warning in context.warnings)
    return Config(refresh, windows, tenants, warnings, context.source)


def _load_yaml(text: str) -> object:
    try:
        return yaml.safe_load(text)
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


def _refresh(value: object, context: _Context) -> RefreshConfig:
    default = RefreshConfig()
    raw = _optional_mapping(value, "refresh", _REFRESH_KEYS)
    interval, timeout, concurrency = (raw.get(key) for key in _REFRESH_KEYS)
    return RefreshConfig(
        default.interval if interval is None else _interval(interval, context),
        default.timeout if timeout is None else _timeout(timeout),
        default.concurrency
        if concurrency is None
        else _int(concurrency, "refresh.concurrency", 1, MAX_CONCURRENCY),
    )


def _interval(value: object, context: _Context) -> float:
    seconds = _duration(value, "refresh.interval")
    if seconds > MAX_INTERVAL:
        raise ConfigError("refresh.interval", "must be at most 7d")
    if 0 < seconds < 60:
        context.warnings.append(
            f"refresh.interval: {_format_short(seconds)} is below one minute; "
            "Graph throttles heavy readers"
        )
    return seconds


def _timeout(value: object) -> float:
    seconds = _duration(value, "refresh.timeout")
    if seconds <= 0:
        raise ConfigError("refresh.timeout", "must be greater than 0")
    if seconds > MAX_TIMEOUT:
        raise ConfigError("refresh.timeout", "must be at most 1h")
    return seconds


def _windows(value: object) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_WINDOWS
    items = _list(value, "expiry_windows_days")
    days = {_int(item, f"expiry_windows_days[{i}]", 1, MAX_WINDOW_DAYS) for i, item in items}
    return tuple(sorted(days))


def _tenants(value: object, context: _Context) -> tuple[TenantConfig, ...]:
    if value is None:
        raise ConfigError("tenants", "required")
    tenants: list[TenantConfig] = []
    for index, item in _list(value, "tenants"):
        tenant = _tenant(item, f"tenants[{index}]", context)
        if any(other.name == tenant.name for other in tenants):
            message = f"duplicate tenant name {_quote(tenant.name)}"
            raise ConfigError(f"tenants[{index}].name", message)
        tenants.append(tenant)
    return tuple(tenants)


def _tenant(value: object, path: str, context: _Context) -> TenantConfig:
    raw = _mapping(value, path, _TENANT_KEYS)
    name = _name(_required(raw, "name", path), f"{path}.name")
    tenant_id = _tenant_id(_required(raw, "tenant_id", path), f"{path}.tenant_id")
    credential = _credential(_required(raw, "credential", path), f"{path}.credential", context)
    client_id = _client_id(raw.get("client_id"), credential, path)
    cloud = _cloud(_or(raw, "cloud", "global"), f"{path}.cloud")
    graph_root, authority = CLOUDS[cloud]
    if raw.get("authority_host") is not None:
        authority = _https_root(raw["authority_host"], f"{path}.authority_host")
    if raw.get("graph_url") is not None:
        graph_root = _https_root(raw["graph_url"], f"{path}.graph_url")
    ca_bundle = raw.get("ca_bundle")
    if ca_bundle is not None:
        ca_bundle = context.file_path(ca_bundle, f"{path}.ca_bundle")
    authorities = _authorities(
        _or(raw, "certification_authorities", "all"), f"{path}.certification_authorities"
    )
    leaf_source = _choice(_or(raw, "leaf_source", "action"), f"{path}.leaf_source", LEAF_SOURCES)
    budget = _budget(raw.get("graph_budget"), f"{path}.graph_budget")
    return TenantConfig(
        name,
        tenant_id,
        client_id,
        cloud,
        authority,
        graph_root,
        ca_bundle,
        credential,
        authorities,
        leaf_source,
        budget,
    )


def _choice(value: object, path: str, choices: tuple[_T, ...]) -> _T:
    for choice in choices:
        if value == choice:
            return choice
    if not isinstance(value, str):
        raise _type_error(path, "string", value)
    raise ConfigError(path, f"{_quote(value)} is not one of {', '.join(choices)}")


def _budget(value: object, path: str) -> GraphBudgetConfig:
    default = GraphBudgetConfig()
    raw = _optional_mapping(value, path, _BUDGET_KEYS)
    requests, writes = (raw.get(key) for key in _BUDGET_KEYS)
    budget = GraphBudgetConfig(
        default.requests_per_20s
        if requests is None
        else _int(requests, f"{path}.requests_per_20s", 1, MAX_BUDGET),
        default.writes_per_20s
        if writes is None
        else _int(writes, f"{path}.writes_per_20s", 1, MAX_BUDGET),
    )
    if budget.writes_per_20s > budget.requests_per_20s:
        raise ConfigError(
            f"{path}.writes_per_20s",
            f"must not exceed requests_per_20s ({budget.requests_per_20s}): writes are requests too",
        )
    return budget


def _name(value: object, path: str) -> str:
    name = _text(value, path)
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(path, f"at most {MAX_NAME_LENGTH} characters")
    return name


def _tenant_id(value: object, path: str) -> str:
    text = _string(value, path)
    lowered = text.lower()
    if text.isascii() and len(text) <= 253 and (is_guid(lowered) or _DOMAIN.fullmatch(lowered)):
        return lowered
    raise ConfigError(path, _TENANT_ID_EXPECTED)


def _guid(value: object, path: str) -> str:
    text = _string(value, path)
    if not (text.isascii() and is_guid(text)):
        raise ConfigError(path, "not a GUID")
    return text.lower()


def _client_id(value: object, credential: Credential, tenant_path: str) -> str | None:
    path = f"{tenant_path}.client_id"
    if isinstance(credential, ManagedIdentityCredential):
        if value is not None:
            raise ConfigError(
                path,
                "not used with managed_identity; a user-assigned identity's client_id "
                "goes under credential.managed_identity",
            )
        return None
    if value is None:
        raise ConfigError(path, "required")
    return _guid(value, path)


def _cloud(value: object, path: str) -> str:
    cloud = _string(value, path)
    if cloud not in CLOUDS:
        raise ConfigError(path, f"expected one of {', '.join(CLOUDS)}")
    return cloud


def _https_root(value: object, path: str) -> str:
    """``https://host[:port]``: the authority and Graph roots get paths appended to them and
    receive tokens or secrets, so anything but a bare https origin is refused."""
    text = _text(value, path)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(path, _URL_PARTS) from None
    if parts.scheme.lower() != "https":
        raise ConfigError(path, _URL_EXPECTED)
    host = parts.hostname or ""
    if "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(path, _URL_PARTS)
    if not _valid_host(host):
        raise ConfigError(path, _URL_PARTS)
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}" if port is None else f"https://{shown}:{port}"


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.isascii() and len(host) <= 253 and _HOST.fullmatch(host) is not None
    return True


# ----------------------------------------------------------------------------- credentials


def _credential(value: object, path: str, context: _Context) -> Credential:
    raw = _mapping(value, path, _CREDENTIAL_KINDS)
    if len(raw) != 1:
        raise ConfigError(path, f"expected exactly one of {', '.join(_CREDENTIAL_KINDS)}")
    ((kind, body),) = raw.items()
    where = f"{path}.{kind}"
    if kind == "client_secret_env":
        return ClientSecretEnv(_env_name(body, where))
    if kind == "client_secret_file":
        return ClientSecretFile(context.file_path(body, where))
    if kind == "client_secret":
        return _inline_secret(body, where, context)
    if kind == "certificate":
        return _certificate(body, where, context)
    if kind == "workload_identity":
        return _workload_identity(body, where, context)
    return _managed_identity(body, where)


def _workload_identity(value: object, path: str, context: _Context) -> WorkloadIdentityCredential:
    token_file = _optional_mapping(value, path, ("token_file",)).get("token_file")
    if token_file is None:
        return WorkloadIdentityCredential()
    return WorkloadIdentityCredential(context.file_path(token_file, f"{path}.token_file"))


def _managed_identity(value: object, path: str) -> ManagedIdentityCredential:
    client_id = _optional_mapping(value, path, ("client_id",)).get("client_id")
    if client_id is None:
        return ManagedIdentityCredential()
    return ManagedIdentityCredential(_guid(client_id, f"{path}.client_id"))


def _inline_secret(value: object, path: str, context: _Context) -> ClientSecretInline:
    if not isinstance(value, str):
        raise _type_error(path, "string", value)
    if not value.strip():
        raise ConfigError(path, "must not be empty")
    context.warnings.append(f"{path}: {_INLINE_ADVICE}")
    return ClientSecretInline(value)


def _certificate(value: object, path: str, context: _Context) -> CertificateCredential:
    raw = _mapping(value, path, _CERTIFICATE_KEYS)
    files = {
        key: context.file_path(raw[key], f"{path}.{key}")
        for key in ("private_key_file", "certificate_file", "pfx_file", "passphrase_file")
        if raw.get(key) is not None
    }
    env = raw.get("passphrase_env")
    passphrase_env = None if env is None else _env_name(env, f"{path}.passphrase_env")
    key, cert, pfx = (files.get(k) for k in ("private_key_file", "certificate_file", "pfx_file"))
    if pfx is not None and (key is not None or cert is not None):
        raise ConfigError(
            path, "expected either private_key_file and certificate_file, or pfx_file, not both"
        )
    if pfx is None and key is None and cert is None:
        raise ConfigError(
            path, "expected either private_key_file and certificate_file, or pfx_file"
        )
    if key is not None and cert is None:
        raise ConfigError(f"{path}.certificate_file", "required with private_key_file")
    if cert is not None and key is None:
        raise ConfigError(f"{path}.private_key_file", "required with certificate_file")
    if passphrase_env is not None and "passphrase_file" in files:
        raise ConfigError(path, "expected at most one of passphrase_env, passphrase_file")
    return CertificateCredential(key, cert, pfx, passphrase_env, files.get("passphrase_file"))


def _env_name(value: object, path: str) -> str:
    text = _string(value, path)
    if not (text.isascii() and _ENV_NAME.fullmatch(text)):
        raise ConfigError(path, "not an environment variable name")
    return text


def _warn_if_exposed(tenants: Iterable[TenantConfig], context: _Context) -> None:
    """A secret in a file that others can read is no longer a secret: say so loudly."""
    mode = context.file_mode
    if mode is None or not any(isinstance(t.credential, ClientSecretInline) for t in tenants):
        return
    readers = [who for bit, who in ((0o040, "group"), (0o004, "others")) if mode & bit]
    if readers:
        context.warnings.append(
            f"{context.source}: holds an inline client secret and is readable by "
            f"{' and '.join(readers)} (mode {mode:04o}); "
            "restrict it with chmod 600 or move the secret to client_secret_file"
        )


# ----------------------------------------------------------------------------- CAs


def _authorities(value: object, path: str) -> Literal["all"] | tuple[CARef, ...]:
    if value == "all":
        return "all"
    if not isinstance(value, list):
        raise ConfigError(path, 'expected "all" or a list of CAs with id and optional name')
    refs: list[CARef] = []
    for index, item in _list(value, path):
        where = f"{path}[{index}]"
        raw = _mapping(item, where, _CA_KEYS)
        ca_id = _guid(_required(raw, "id", where), f"{where}.id")
        if any(ref.id == ca_id for ref in refs):
            raise ConfigError(f"{where}.id", f"duplicate CA id {ca_id}")
        name = raw.get("name")
        refs.append(CARef(ca_id, None if name is None else _name(name, f"{where}.name")))
    return tuple(refs)


# ----------------------------------------------------------------------------- typed reads


def _mapping(value: object, path: str, keys: Iterable[str]) -> dict[str, object]:
    """`value` as a mapping with string keys, every one of them among `keys`."""
    if not isinstance(value, dict):
        raise _type_error(path, "mapping", value)
    allowed = set(keys)
    for key in value:
        if not (isinstance(key, str) and key in allowed):
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(_join(path, key), f"unknown key{hint}")
    return value


def _optional_mapping(value: object, path: str, keys: Iterable[str]) -> dict[str, object]:
    return {} if value is None else _mapping(value, path, keys)


def _or(raw: dict[str, object], key: str, default: object) -> object:
    value = raw.get(key)
    return default if value is None else value


def _required(raw: dict[str, object], key: str, path: str) -> object:
    value = raw.get(key)
    if value is None:
        raise ConfigError(f"{path}.{key}", "required")
    return value


def _list(value: object, path: str) -> list[tuple[int, object]]:
    if not isinstance(value, list):
        raise _type_error(path, "list", value)
    if not value:
        raise ConfigError(path, "must not be empty")
    return list(enumerate(value))


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _type_error(path, "string", value)
    if not value.strip():
        raise ConfigError(path, "must not be empty")
    return value


def _text(value: object, path: str) -> str:
    """A non-empty string without control characters (names, paths, URLs)."""
    text = _string(value, path)
    if not text.isprintable():
        raise ConfigError(path, "must not contain control or non-printable characters")
    return text


def _int(value: object, path: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(path, "integer", value)
    if not low <= value <= high:
        raise ConfigError(path, f"must be between {low} and {high}")
    return value


def _duration(value: object, path: str) -> float:
    if isinstance(value, (str, int, float)):
        return parse_duration(value, path)
    raise ConfigError(path, _DURATION_EXPECTED)


# ----------------------------------------------------------------------------- check_config


def _check_credential(credential: Credential, path: str) -> list[str]:
    if isinstance(credential, ClientSecretEnv):
        return _check_env(credential.env, f"{path}.client_secret_env")
    if isinstance(credential, ClientSecretFile):
        return _check_file(credential.path, f"{path}.client_secret_file")
    if isinstance(credential, CertificateCredential):
        return _check_certificate(credential, f"{path}.certificate")
    if isinstance(credential, WorkloadIdentityCredential):
        where = f"{path}.workload_identity"
        if credential.token_file is not None:
            return _check_file(credential.token_file, f"{where}.token_file")
        token_file = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        if not token_file:
            return [f"{where}: no token_file and AZURE_FEDERATED_TOKEN_FILE is not set"]
        return _check_file(token_file, f"{where} (AZURE_FEDERATED_TOKEN_FILE)")
    return []  # inline secret: nothing outside the file; managed identity: found at run time


def _check_certificate(cert: CertificateCredential, path: str) -> list[str]:
    problems: list[str] = []
    if cert.private_key_file is not None:
        problems += _check_pem(cert.private_key_file, f"{path}.private_key_file", "PRIVATE KEY")
    if cert.certificate_file is not None:
        problems += _check_pem(cert.certificate_file, f"{path}.certificate_file", "CERTIFICATE")
    if cert.pfx_file is not None:
        problems += _check_file(cert.pfx_file, f"{path}.pfx_file")
    if cert.passphrase_env is not None:
        problems += _check_env(cert.passphrase_env, f"{path}.passphrase_env")
    if cert.passphrase_file is not None:
        problems += _check_file(cert.passphrase_file, f"{path}.passphrase_file")
    return problems


def _check_env(name: str, path: str) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return [f"{path}: environment variable {name} is not set"]
    if not value.strip():
        return [f"{path}: environment variable {name} is empty"]
    return []


def _check_file(file: str, path: str) -> list[str]:
    content = _read_small(file)
    if isinstance(content, str):
        return [f"{path}: cannot read {_quote(file)}: {content}"]
    if not content.strip():
        return [f"{path}: {_quote(file)} is empty"]
    return []


def _check_pem(file: str, path: str, label: str) -> list[str]:
    """The file is readable and holds at least one PEM block of the kind (``PRIVATE KEY``
    also matches ``RSA PRIVATE KEY`` and ``EC PRIVATE KEY``)."""
    content = _read_small(file)
    if isinstance(content, str):
        return [f"{path}: cannot read {_quote(file)}: {content}"]
    if re.search(rb"-----BEGIN ([A-Z0-9 ]+ )?" + label.encode() + b"-----", content) is None:
        return [f"{path}: {_quote(file)} holds no PEM {label.lower()}"]
    return []


def _read_small(file: str) -> bytes | str:
    """The first MiB of a regular file, or the reason it cannot be read (never the data)."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):
            return "not a regular file"
        with open(file, "rb") as handle:
            return handle.read(MAX_FILE_BYTES)
    except OSError as exc:
        return _os_reason(exc)
    except ValueError:  # an embedded NUL byte
        return "invalid path"


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


def _type_error(path: str, expected: str, value: object) -> ConfigError:
    return ConfigError(path, f"expected {expected}, got {_kind(value)}")


def _join(path: str, key: object) -> str:
    """``path.key``; keys that are not plain words are quoted (one line, at most 40 chars)."""
    plain = isinstance(key, str) and _PLAIN_KEY.fullmatch(key)
    shown = str(key) if plain else json.dumps(str(key)[:40])
    return f"{path}.{shown}" if path else shown


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=not text.isprintable())


def _format_short(seconds: float) -> str:
    milliseconds = round(seconds * 1000)
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__
