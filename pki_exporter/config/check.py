"""What looks outside the config file, and every problem of a file at once.

`check_config` reads the environment variables, secret, certificate and proxy-credential
files a valid config names (at start, on reload, and in ``--config.check``).
`check_config_file` (``--config.check``) lists every problem of a file in one pass: those
of the file (`load.decode`), then for each tenant valid on its own, the example's
placeholders still in it and what `check_config` finds. Each problem is one line,
``<key path>: <message>``; no secret's value or file content ever enters one.
"""

from __future__ import annotations

import os
import re
import stat

from pki_exporter.config.load import MAX_FILE_BYTES, decode_file, os_reason, quote
from pki_exporter.config.model import (
    CertificateCredential,
    ClientSecretEnv,
    ClientSecretFile,
    Config,
    Credential,
    ManagedIdentityCredential,
    TenantConfig,
    WorkloadIdentityCredential,
)

__all__ = ["PLACEHOLDERS", "check_config", "check_config_file", "problems"]

# The GUIDs of config.example.yaml and of the deploy/ examples: never a real tenant or app.
PLACEHOLDERS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "11111111-1111-1111-1111-111111111111",
        "22222222-2222-2222-2222-222222222222",
    }
)


def problems(path: str) -> list[str]:
    """Every problem of the config file at `path`, one line each (empty: all is well)."""
    return check_config_file(path)[1]


def check_config_file(path: str) -> tuple[Config | None, list[str]]:
    """(the config, or None when it has problems in the file; every problem, one line each:
    the file's own, then for each valid tenant its placeholders and `check_config`'s)."""
    decoded = decode_file(path)
    found = [error.message if error.path == path else str(error) for error in decoded.errors]
    for where, tenant in decoded.tenants:
        found += _placeholders(tenant, where) + _check_tenant(tenant, where)
    return decoded.config, found


def check_config(config: Config) -> list[str]:
    """Problems outside the file: unset variables, unreadable secret, certificate and
    proxy-credential files. One line each; an empty list means the tenants' credentials
    can at least be read."""
    found: list[str] = []
    for index, tenant in enumerate(config.tenants):
        found += _check_tenant(tenant, f"tenants[{index}]")
    return found


def _placeholders(tenant: TenantConfig, path: str) -> list[str]:
    """The example's GUIDs left in place: the exporter can never get a token with them."""
    ids = {"tenant_id": tenant.tenant_id, "client_id": tenant.client_id}
    if isinstance(tenant.credential, ManagedIdentityCredential):
        ids["credential.managed_identity.client_id"] = tenant.credential.client_id
    left = [key for key, value in ids.items() if value in PLACEHOLDERS]
    if not left:
        return []
    keys = " and ".join(left)
    return [
        f"{path}: {keys} {'is' if len(left) == 1 else 'are'} still the placeholder of "
        "config.example.yaml; put in your tenant's and app registration's IDs (Entra admin "
        "center, App registrations, Overview)"
    ]


def _check_tenant(tenant: TenantConfig, path: str) -> list[str]:
    found: list[str] = []
    if tenant.ca_bundle is not None:
        found += _check_pem(tenant.ca_bundle, f"{path}.ca_bundle", "CERTIFICATE")
    found += _check_credential(tenant.credential, f"{path}.credential")
    if tenant.proxy_credentials_env is not None:
        where = f"{path}.proxy_credentials_env"
        found += _check_env(tenant.proxy_credentials_env, where, pair=True)
    if tenant.proxy_credentials_file is not None:
        where = f"{path}.proxy_credentials_file"
        found += _check_file(tenant.proxy_credentials_file, where, pair=True)
    return found


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
    found: list[str] = []
    if cert.private_key_file is not None:
        found += _check_pem(cert.private_key_file, f"{path}.private_key_file", "PRIVATE KEY")
    if cert.certificate_file is not None:
        found += _check_pem(cert.certificate_file, f"{path}.certificate_file", "CERTIFICATE")
    if cert.pfx_file is not None:
        found += _check_file(cert.pfx_file, f"{path}.pfx_file")
    if cert.passphrase_env is not None:
        found += _check_env(cert.passphrase_env, f"{path}.passphrase_env")
    if cert.passphrase_file is not None:
        found += _check_file(cert.passphrase_file, f"{path}.passphrase_file")
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


def _check_file(file: str, path: str, *, pair: bool = False) -> list[str]:
    """The file is readable and not blank; with `pair`, it holds ``user:password``."""
    content = _read_small(file)
    if isinstance(content, str):
        return [f"{path}: cannot read {quote(file)}: {content}"]
    if not content.strip():
        return [f"{path}: {quote(file)} is empty"]
    if pair and b":" not in content:
        return [f"{path}: {quote(file)} holds no user:password"]
    return []


def _check_pem(file: str, path: str, label: str) -> list[str]:
    """The file is readable and holds at least one PEM block of the kind (``PRIVATE KEY``
    also matches ``RSA PRIVATE KEY`` and ``EC PRIVATE KEY``)."""
    content = _read_small(file)
    if isinstance(content, str):
        return [f"{path}: cannot read {quote(file)}: {content}"]
    if re.search(rb"-----BEGIN ([A-Z0-9 ]+ )?" + label.encode() + b"-----", content) is None:
        return [f"{path}: {quote(file)} holds no PEM {label.lower()}"]
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
