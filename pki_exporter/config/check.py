"""What looks outside the config file, and every problem of a file at once.

`check_config` reads the environment variables, secret and certificate files a valid
config names (for ``--config.check`` and at start); `check_config_file` lists every
problem of a file, not only the first the loader stops at. Each problem is one line,
``<key path>: <message>``; no secret's value or file content ever enters one.
"""

from __future__ import annotations

import copy
import os
import re
import stat
from collections.abc import Iterable

from pki_exporter.config.load import (
    MAX_FILE_BYTES,
    ConfigError,
    _build_document,
    _Context,
    _load_yaml,
    _os_reason,
    _quote,
    _read_file,
)
from pki_exporter.config.model import (
    CertificateCredential,
    ClientSecretEnv,
    ClientSecretFile,
    Config,
    Credential,
    WorkloadIdentityCredential,
)

__all__ = ["check_config", "check_config_file"]


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


def check_config(config: Config) -> list[str]:
    """Problems outside the file: unset variables, unreadable secret and certificate files.
    One line each; an empty list means the tenants' credentials can at least be read."""
    problems: list[str] = []
    for index, tenant in enumerate(config.tenants):
        path = f"tenants[{index}]"
        if tenant.ca_bundle is not None:
            problems += _check_pem(tenant.ca_bundle, f"{path}.ca_bundle", "CERTIFICATE")
        problems += _check_credential(tenant.credential, f"{path}.credential")
        # issue 20: the proxy's credentials exist (their content stays unread here)
        if tenant.proxy_credentials_env is not None:
            problems += _check_env(tenant.proxy_credentials_env, f"{path}.proxy_credentials_env")
        if tenant.proxy_credentials_file is not None:
            problems += _check_file(tenant.proxy_credentials_file, f"{path}.proxy_credentials_file")
    return problems


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
