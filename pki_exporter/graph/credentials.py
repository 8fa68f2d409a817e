"""One MSAL application per tenant, per credential kind.

Every Graph request asks MSAL for a token: ``acquire_token_for_client`` is a cache lookup
until the token nears its end, so a token is requested no more often than MSAL's cache
requires. Secrets are read from the environment or files when the application is built
and exist nowhere else: not in errors, not in logs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import msal
import requests
from requests.adapters import HTTPAdapter

from pki_exporter import outbound
from pki_exporter.config.model import (
    CertificateCredential,
    ClientSecretEnv,
    ClientSecretFile,
    ClientSecretInline,
    ManagedIdentityCredential,
    TenantConfig,
    WorkloadIdentityCredential,
)
from pki_exporter.runtime import logs

log = logs.get("credentials")


def announce_route(tenant: TenantConfig) -> None:
    """Log once where the tenant's endpoints are reached when a proxy is involved (the proxy
    without credentials), at its first token request: after the listener is up, once per
    config load. A tenant that goes direct everywhere is the default and says nothing."""
    routes = outbound.describe_routes(tenant, outbound.tenant_route(tenant))
    if "via proxy" in routes or "unusable" in routes:
        logs.event(log, logging.INFO, "outbound route", tenant=tenant.name, routes=routes)


class AuthError(Exception):
    """A token could not be had; the message is one line and holds no secret.

    ``reason`` is the ``reason`` label it counts under: ``auth`` when the credentials were
    refused (or cannot be read), else what went wrong on the way to the token endpoint
    (``throttled``, ``http_5xx``, ``timeout``, ``network``, ``invalid_response``). Only
    ``auth`` is final; the others are retried like Graph requests. ``retry_after`` is the
    token endpoint's ``Retry-After`` header, when it sent one.
    """

    def __init__(self, message: str, reason: str = "auth", retry_after: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.reason != "auth"


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


MSAL_THROTTLE_SECONDS = 5.0
"""MSAL answers a token request again from its own cache, without a request, for this long
after a 429 or 5xx without ``Retry-After`` (``throttled_http_client``): retrying sooner
would only read the same error."""


class _Answer(threading.local):
    """The last token-endpoint answer of this thread: MSAL hands us a parsed body only."""

    status: int | None = None
    retry_after: str | None = None
    url: str | None = None


class _RouteAdapter(HTTPAdapter):
    """requests' adapter with the route's trust: system roots, certifi's and ``ca_bundle``,
    for TLS direct, through a proxy's tunnel, and to an https proxy itself (requests takes
    only a path for ``verify``; its documented way to a custom SSLContext is this one)."""

    def __init__(self, route: outbound.Route) -> None:
        self._route = route
        super().__init__()

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:  # (host params, pool kwargs): typed dicts private to types-requests
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        kwargs: dict[str, Any] = dict(pool_kwargs)
        kwargs.pop("ca_certs", None)
        kwargs.pop("ca_cert_dir", None)
        kwargs["ssl_context"] = self._route.ssl_context()
        return host_params, kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Only whether to verify: the route's context is the trust. requests' own names
        certifi's file on the pool (which threads share) for each request, and urllib3
        loaded it into the route's context at each new connection: 25 ms each time."""
        https = url.lower().startswith("https")
        conn.cert_reqs = "CERT_REQUIRED" if https and verify else "CERT_NONE"
        if cert:  # MSAL gives requests no client certificate; kept as requests does it
            conn.cert_file, conn.key_file = (cert, None) if isinstance(cert, str) else cert

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs.setdefault("proxy_ssl_context", self._route.ssl_context())
        return super().proxy_manager_for(proxy, **proxy_kwargs)


class _Session(requests.Session):
    """The HTTP client MSAL is given: it remembers each thread's last error status, so that
    a refused token can be told from a throttled or failing endpoint. With ``timeout``, every
    request gets it (MSAL's ManagedIdentityClient sets none of its own: a hung metadata
    endpoint would hold a refresh forever).

    Every request takes the tenant's route: the environment is off (``trust_env``), so that
    ``REQUESTS_CA_BUNDLE`` cannot replace ``ca_bundle`` nor ``.netrc`` add credentials, and
    the route gives the proxy of each URL (``HTTPS_PROXY`` included, read by the route)."""

    def __init__(self, timeout: float | None, route: outbound.Route | None = None) -> None:
        super().__init__()
        self.route = route or outbound.Route.direct()
        self.trust_env = False
        adapter = _RouteAdapter(self.route)
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self._timeout = timeout
        self.answer = _Answer()
        self.last_error: tuple[int, str | None] | None = None
        """Status and Retry-After of the last 429/5xx, for answers MSAL serves from its cache."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        if self._timeout is not None:
            kwargs.setdefault("timeout", self._timeout)
        url = args[1] if len(args) > 1 else kwargs.get("url")
        self.answer.url = str(url)
        try:
            kwargs["proxies"] = self.route.requests_proxies(str(url))
        except outbound.OutboundError as exc:
            raise AuthError(str(exc), exc.reason) from None
        response = super().request(*args, **kwargs)
        failure = outbound.proxy_response_failure(
            self.route, str(url), response.status_code, response.reason or ""
        )
        if failure is not None:
            raise AuthError(failure.message, failure.reason)
        self.answer.status = response.status_code
        self.answer.retry_after = response.headers.get("Retry-After")
        if response.status_code == 429 or response.status_code >= 500:
            self.last_error = (response.status_code, self.answer.retry_after)
        return response

    def call(self, acquire: Callable[[], dict[str, Any] | None], what: str) -> str:
        """``acquire()`` (an MSAL token call) -> the access token, or AuthError with its reason."""
        self.answer.status = None
        self.answer.retry_after = None
        try:
            result = acquire()
        except AuthError:
            raise
        except Exception as exc:  # requests' errors, MSAL's (ValueError on a non-JSON answer, ...)
            raise self.failure(exc, what, default="invalid_response") from None
        if result and "access_token" in result:
            token = str(result["access_token"])
            logs.register_secret(token)
            return token
        raise self._error(_describe(result or {"error": "no_response"}), default="auth")

    def failure(self, exc: Exception, what: str, *, default: str) -> AuthError:
        """An exception on the way to a token as AuthError, with the reason it counts under."""
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):  # SSL, proxy too
            request = getattr(exc, "request", None)
            url = getattr(request, "url", None) or self.answer.url or ""
            told = outbound.describe_failure(self.route, str(url), exc)
            return AuthError(f"{what}: {told.message}", told.reason)
        message = f"{what}: {_one_line(exc)}"
        if not isinstance(exc, (requests.RequestException, OSError, ValueError)):
            default = "auth"  # MSAL's own errors (ManagedIdentityError, ...)
        return self._error(message, default=default)

    def _error(self, message: str, *, default: str) -> AuthError:
        status, retry_after = self.answer.status, self.answer.retry_after
        if status is None and self.last_error is not None:
            # No request went out: MSAL answered from its throttling cache, with the last error.
            status, retry_after = self.last_error
        if status == 429:
            return AuthError(message, "throttled", retry_after)
        if status is not None and status >= 500:
            return AuthError(message, "http_5xx", retry_after)
        return AuthError(message, default)


def _http_session(route: outbound.Route, timeout: float | None = None) -> _Session:
    return _Session(timeout, route)


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
    """MSAL's error dict as one line: the error, Entra ID's description whole, the
    correlation id."""
    error = result.get("error", "error")
    # Whole: AADSTS descriptions carry the cause, then trace and correlation ids; only an
    # endpoint that sends pages of text is cut (a limit far above Entra ID's own lines).
    first = outbound.one_line(str(result.get("error_description") or ""), 1000)
    correlation = result.get("correlation_id")
    tail = f" (correlation-id {correlation})" if correlation else ""
    return f"{error}: {first}{tail}" if first else f"{error}{tail}"


class ConfidentialTokens:
    """Client credentials flow (secret, certificate, workload identity) through MSAL."""

    def __init__(
        self, tenant: TenantConfig, timeout: float, route: outbound.Route | None = None
    ) -> None:
        self._tenant = tenant
        self._timeout = timeout
        self.route = route or outbound.tenant_route(tenant)
        self._announced = False
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None
        self._secret_stamp: tuple[float, int] | None = None
        self._session: _Session | None = None

    def _secret_file_stamp(self) -> tuple[float, int] | None:
        credential = self._tenant.credential
        if not isinstance(credential, ClientSecretFile):
            return None
        try:
            stat = os.stat(credential.path)
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def _application(self) -> tuple[msal.ConfidentialClientApplication, _Session]:
        with self._lock:
            stamp = self._secret_file_stamp()
            if self._app is not None and self._session is not None and stamp == self._secret_stamp:
                return self._app, self._session
            # A rotated secret file means a new application (the old cache belongs to the old secret).
            tenant = self._tenant
            session = _http_session(self.route, self._timeout)
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
                # A wrong tenant or authority is final (auth); an unreachable or failing one
                # is retried like any token request.
                raise session.failure(
                    exc, f"cannot set up the authority {tenant.authority_host}", default="auth"
                ) from None
            if self._session is not None:
                self._session.close()
            self._app, self._secret_stamp, self._session = app, stamp, session
            return app, session

    def token(self) -> str:
        if not self._announced:
            self._announced = True
            announce_route(self._tenant)
        app, session = self._application()
        return session.call(
            lambda: app.acquire_token_for_client(scopes=[self._tenant.scope]),
            "token request failed",
        )

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
        # Managed identity's endpoints are the host's own (the instance-metadata address,
        # App Service's and Arc's local ones): never through a proxy, whatever the route.
        self.route = outbound.Route.direct(tenant.ca_bundle)
        session = _http_session(self.route, timeout)
        self._client = msal.ManagedIdentityClient(
            identity, http_client=session, token_cache=msal.TokenCache()
        )
        self._session = session
        self._tenant = tenant
        self._announced = False
        self._resource = tenant.graph_url
        self._lock = threading.Lock()

    def token(self) -> str:
        if not self._announced:
            self._announced = True
            announce_route(self._tenant)
        return self._session.call(
            lambda: self._client.acquire_token_for_client(resource=self._resource),
            "managed identity token request failed",
        )

    def invalidate(self) -> None:
        with self._lock:
            self._client._token_cache = msal.TokenCache()

    def close(self) -> None:
        self._session.close()


def _one_line(exc: BaseException) -> str:
    return outbound.one_line(str(exc)) or type(exc).__name__


def token_provider(tenant: TenantConfig, timeout: float) -> TokenProvider:
    """The token source of a tenant, built lazily: no network until the first token."""
    if isinstance(tenant.credential, ManagedIdentityCredential):
        return ManagedIdentityTokens(tenant, tenant.credential, timeout)
    return ConfidentialTokens(tenant, timeout)
