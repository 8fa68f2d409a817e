"""One MSAL application per tenant, per credential kind.

Every Graph request asks MSAL for a token: ``acquire_token_for_client`` is a cache lookup
until the token nears its end, so a token is requested no more often than MSAL's cache
requires. Secrets are read from the environment or files when the application is built
and exist nowhere else: not in errors, not in logs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import msal
import requests

from pki_exporter import logs
from pki_exporter.config import (
    CertificateCredential,
    ClientSecretEnv,
    ClientSecretFile,
    ClientSecretInline,
    ManagedIdentityCredential,
    TenantConfig,
    WorkloadIdentityCredential,
)


class AuthError(Exception):
    """A token could not be had; the message is one line and holds no secret."""


class TokenProvider(Protocol):
    def token(self) -> str: ...

    def invalidate(self) -> None:
        """Forget cached tokens so that the next call asks the authority (after a 401)."""

    def close(self) -> None:
        """Release the HTTP connections to the authority (on stop and on reload)."""


def _read_env(name: str, what: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise AuthError(f"{what}: environment variable {name} is not set")
    return value


def _read_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AuthError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


class _TimeoutSession(requests.Session):
    """MSAL's ManagedIdentityClient sets no timeout of its own: a hung metadata endpoint
    would hold a refresh forever, so every request gets the configured one."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


def _http_session(tenant: TenantConfig, timeout: float | None = None) -> requests.Session:
    session = requests.Session() if timeout is None else _TimeoutSession(timeout)
    if tenant.ca_bundle:
        # requests prefers REQUESTS_CA_BUNDLE over Session.verify; the configured bundle wins.
        session.trust_env = False
        session.verify = tenant.ca_bundle
    return session


def _workload_assertion(credential: WorkloadIdentityCredential) -> Callable[[], str]:
    """The federated token is rotated by the kubelet: read it on every token request."""

    def read() -> str:
        path = credential.token_file or os.environ.get("AZURE_FEDERATED_TOKEN_FILE", "")
        if not path:
            raise AuthError("workload identity: AZURE_FEDERATED_TOKEN_FILE is not set")
        token = _read_file(path, "workload identity")
        logs.register_secret(token)
        return token

    return read


def _client_credential(tenant: TenantConfig) -> str | dict[str, Any]:
    credential = tenant.credential
    secret: str
    if isinstance(credential, ClientSecretEnv):
        secret = _read_env(credential.env, "client secret")
    elif isinstance(credential, ClientSecretFile):
        secret = _read_file(credential.path, "client secret")
    elif isinstance(credential, ClientSecretInline):
        secret = credential.value
    elif isinstance(credential, CertificateCredential):
        return _certificate_credential(credential)
    elif isinstance(credential, WorkloadIdentityCredential):
        return {"client_assertion": _workload_assertion(credential)}
    else:  # pragma: no cover - managed identity is handled by ManagedIdentityTokens
        raise AuthError(f"unsupported credential {type(credential).__name__}")
    logs.register_secret(secret)
    return secret


def _certificate_credential(credential: CertificateCredential) -> dict[str, Any]:
    passphrase: str | None = None
    if credential.passphrase_env:
        passphrase = _read_env(credential.passphrase_env, "certificate passphrase")
    elif credential.passphrase_file:
        passphrase = _read_file(credential.passphrase_file, "certificate passphrase")
    if passphrase:
        logs.register_secret(passphrase)
    result: dict[str, Any]
    if credential.pfx_file:
        if not Path(credential.pfx_file).is_file():
            raise AuthError(f"certificate: cannot read {credential.pfx_file}")
        result = {"private_key_pfx_path": credential.pfx_file}
    else:
        assert credential.private_key_file and credential.certificate_file
        result = {
            "private_key": _read_file(credential.private_key_file, "certificate private key"),
            "public_certificate": _read_file(credential.certificate_file, "certificate"),
        }
    if passphrase:
        result["passphrase"] = passphrase
    return result


def _describe(result: dict[str, Any]) -> str:
    """MSAL's error dict as one line: AADSTS code and first sentence, correlation id."""
    error = result.get("error", "error")
    description = str(result.get("error_description") or "").strip().splitlines()
    first = description[0][:300] if description else ""
    correlation = result.get("correlation_id")
    tail = f" (correlation-id {correlation})" if correlation else ""
    return f"{error}: {first}{tail}" if first else f"{error}{tail}"


class ConfidentialTokens:
    """Client credentials flow (secret, certificate, workload identity) through MSAL."""

    def __init__(self, tenant: TenantConfig, timeout: float) -> None:
        self._tenant = tenant
        self._timeout = timeout
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None
        self._secret_stamp: tuple[float, int] | None = None
        self._session: requests.Session | None = None

    def _secret_file_stamp(self) -> tuple[float, int] | None:
        credential = self._tenant.credential
        if not isinstance(credential, ClientSecretFile):
            return None
        try:
            stat = os.stat(credential.path)
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def _application(self) -> msal.ConfidentialClientApplication:
        with self._lock:
            stamp = self._secret_file_stamp()
            if self._app is not None and stamp == self._secret_stamp:
                return self._app
            # A rotated secret file means a new application (the old cache belongs to the old secret).
            tenant = self._tenant
            session = _http_session(tenant)
            try:
                app = msal.ConfidentialClientApplication(
                    tenant.client_id,
                    client_credential=_client_credential(tenant),
                    authority=f"{tenant.authority_host}/{tenant.tenant_id}",
                    instance_discovery=False,
                    http_client=session,
                    timeout=self._timeout,
                )
            except AuthError:
                session.close()
                raise
            except (ValueError, requests.RequestException, OSError) as exc:
                session.close()
                raise AuthError(
                    f"cannot set up the authority {tenant.authority_host}: {_one_line(exc)}"
                ) from None
            if self._session is not None:
                self._session.close()
            self._app, self._secret_stamp, self._session = app, stamp, session
            return app

    def token(self) -> str:
        app = self._application()
        try:
            result = app.acquire_token_for_client(scopes=[self._tenant.scope])
        except AuthError:
            raise
        except (requests.RequestException, OSError, ValueError) as exc:
            raise AuthError(f"token request failed: {_one_line(exc)}") from None
        return _access_token(result)

    def invalidate(self) -> None:
        with self._lock:
            if self._app is not None:
                self._app.remove_tokens_for_client()

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._app = self._session = None


class ManagedIdentityTokens:
    """Azure managed identity (system- or user-assigned) through MSAL's ManagedIdentityClient."""

    def __init__(
        self, tenant: TenantConfig, credential: ManagedIdentityCredential, timeout: float
    ) -> None:
        identity: Any = (
            msal.UserAssignedManagedIdentity(client_id=credential.client_id)
            if credential.client_id
            else msal.SystemAssignedManagedIdentity()
        )
        session = _http_session(tenant, timeout)
        self._client = msal.ManagedIdentityClient(
            identity, http_client=session, token_cache=msal.TokenCache()
        )
        self._session = session
        self._resource = tenant.graph_url
        self._lock = threading.Lock()

    def token(self) -> str:
        try:
            result = self._client.acquire_token_for_client(resource=self._resource)
        except (requests.RequestException, OSError, ValueError, msal.ManagedIdentityError) as exc:
            raise AuthError(f"managed identity token request failed: {_one_line(exc)}") from None
        return _access_token(result)

    def invalidate(self) -> None:
        with self._lock:
            self._client._token_cache = msal.TokenCache()

    def close(self) -> None:
        self._session.close()


def _access_token(result: dict[str, Any] | None) -> str:
    if not result or "access_token" not in result:
        raise AuthError(_describe(result or {"error": "no_response"}))
    token = str(result["access_token"])
    logs.register_secret(token)
    return token


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def token_provider(tenant: TenantConfig, timeout: float) -> TokenProvider:
    """The token source of a tenant, built lazily: no network until the first token."""
    if isinstance(tenant.credential, ManagedIdentityCredential):
        return ManagedIdentityTokens(tenant, tenant.credential, timeout)
    return ConfidentialTokens(tenant, timeout)
