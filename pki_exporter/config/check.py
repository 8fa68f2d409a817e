"""What looks outside the config file, and every problem of a file at once.

`check_config` finds what a valid config cannot say of itself (at start, on reload and in
``--config.check``): the example's placeholder GUIDs left in it (no token can ever be had
with them), and what it names outside itself, which the types mark (`model`: ``env``,
``file``, ``pem``, ``pair``), so a new key of such a type is checked too.
`check_config_file` (``--config.check``) lists every problem of a file in one pass: those
in the file, then what `check_config` finds for each tenant valid on its own. One line
each, ``<key path>: <message>``; never a secret's value.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from typing import Any

import msgspec

from pki_exporter.config.load import (
    MAX_FILE_BYTES,
    decode_file,
    file_keys,
    os_reason,
    quote,
    type_rules,
)
from pki_exporter.config.model import Config, TenantConfig, WorkloadIdentityCredential

__all__ = ["PLACEHOLDERS", "check_config", "check_config_file", "problems"]

# The GUIDs of config.example.yaml and of deploy/: never a real tenant, app or identity.
PLACEHOLDERS = frozenset(f"{d * 8}-{d * 4}-{d * 4}-{d * 4}-{d * 12}" for d in "012")


def problems(path: str) -> list[str]:
    """Every problem of the config file at `path`, one line each (empty: all is well)."""
    return check_config_file(path)[1]


def check_config_file(path: str) -> tuple[Config | None, list[str]]:
    """(the config, None when the file has problems; every problem, one line each)."""
    decoded = decode_file(path)
    found = [error.message if error.path == path else str(error) for error in decoded.errors]
    for where, tenant in decoded.tenants:
        found += _check_tenant(tenant, where)
    return decoded.config, found


def check_config(config: Config) -> list[str]:
    """What a valid file cannot say: the example's placeholders left in it, unset
    variables, unreadable secret, certificate and proxy-credential files. One line each;
    none means the credentials can at least be read."""
    found: list[str] = []
    for index, tenant in enumerate(config.tenants):
        found += _check_tenant(tenant, f"tenants[{index}]")
    return found


def _leaves(value: msgspec.Struct, path: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(key path, value, rules of its type) of every value set below `value`."""
    for name, kind in file_keys(type(value)).items():
        item = getattr(value, name)
        where = path if getattr(value, "body", None) == name else f"{path}.{name}"
        tag = getattr(getattr(item, "__struct_config__", None), "tag", None)
        if isinstance(item, msgspec.Struct):
            yield from _leaves(item, f"{where}.{tag}" if tag else where)
        elif isinstance(item, tuple):
            for index, each in enumerate(item):
                if isinstance(each, msgspec.Struct):
                    yield from _leaves(each, f"{where}[{index}]")
        elif item is not None:
            yield where, item, type_rules(kind)[1]


def _placeholders(tenant: TenantConfig, path: str) -> list[str]:
    """The example's GUIDs left in place: no token can ever be had with them."""
    keys = [where for where, item, _ in _leaves(tenant, path) if item in PLACEHOLDERS]
    if not keys:
        return []
    one = len(keys) == 1
    return [
        f"{path}: {' and '.join(key.removeprefix(f'{path}.') for key in keys)} still "
        f"{'holds' if one else 'hold'} the example's placeholder {'GUID' if one else 'GUIDs'}; "
        "put in your own (Entra admin center: the tenant's and the app registration's Overview)"
    ]


def _check_tenant(tenant: TenantConfig, path: str) -> list[str]:
    found = _placeholders(tenant, path)
    for where, item, rules in _leaves(tenant, path):
        if rules.get("file"):
            found += _check_file(
                item, where, pem=rules.get("pem", ""), pair=rules.get("pair", False)
            )
        elif rules.get("env"):
            found += _check_env(item, where, pair=rules.get("pair", False))
    credential = tenant.credential
    if isinstance(credential, WorkloadIdentityCredential) and credential.token_file is None:
        where = f"{path}.credential.workload_identity"
        token_file = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        if not token_file:
            return [*found, f"{where}: no token_file and AZURE_FEDERATED_TOKEN_FILE is not set"]
        found += _check_file(token_file, f"{where} (AZURE_FEDERATED_TOKEN_FILE)")
    return found


def _check_env(name: str, path: str, *, pair: bool = False) -> list[str]:
    """The variable is set and not blank; with `pair`, it holds ``user:password``."""
    value = os.environ.get(name)
    if value is None:
        return [f"{path}: environment variable {name} is not set"]
    if not value.strip():
        return [f"{path}: environment variable {name} is empty"]
    if pair and ":" not in value:
        return [f"{path}: environment variable {name} holds no user:password"]
    return []


def _check_file(file: str, path: str, *, pem: str = "", pair: bool = False) -> list[str]:
    """The file is readable and not blank; with `pem`, it holds a PEM block of that kind
    (``PRIVATE KEY`` also matches ``RSA PRIVATE KEY``); with `pair`, ``user:password``."""
    content = _read_small(file)
    if isinstance(content, str):
        return [f"{path}: cannot read {quote(file)}: {content}"]
    if pem and re.search(rb"-----BEGIN ([A-Z0-9 ]+ )?" + pem.encode() + b"-----", content) is None:
        return [f"{path}: {quote(file)} holds no PEM {pem.lower()}"]
    if not content.strip():
        return [f"{path}: {quote(file)} is empty"]
    if pair and b":" not in content:
        return [f"{path}: {quote(file)} holds no user:password"]
    return []


def _read_small(file: str) -> bytes | str:
    """The first MiB of a regular file, or the reason it cannot be read (never the data)."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):
            return "not a regular file"
        with open(file, "rb") as handle:
            return handle.read(MAX_FILE_BYTES)
    except OSError as exc:
        return os_reason(exc)
    except ValueError:  # an embedded NUL byte
        return "invalid path"
