"""A fake Entra ID: OpenID discovery and the client-credentials grant.

It checks what the real one checks for an app-only token, closely enough that MSAL's
own code paths run unchanged: the client secret; a certificate assertion (``x5t`` or
``x5t#S256`` naming a registered certificate, RS256 or PS256, audience = token endpoint,
``iss`` = ``sub`` = client id, not expired); a federated assertion from a workload
identity issuer (here the simulator itself). Access tokens are JWTs signed by the
simulator, but Graph accepts only tokens it has on record, so that "every token issued so
far stops working now" is a single operation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from pki_simulator import jose
from pki_simulator.messages import Request, Response, json_response
from pki_simulator.spec import CASpec, TenantSpec
from pki_simulator.tls import AppCertificate, new_rsa_key, write_private

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
GRAPH_ROLE = "DeviceManagementCloudCA.Read.All"
_SECRET_ALPHABET = string.ascii_letters + string.digits + "~._-"


@dataclass(frozen=True)
class SimTenant:
    """A tenant as served, with every credential kind its app registration accepts.

    ``client_secret`` and the key files are the simulator's throwaway credentials; the
    certificate files live in the simulator's temporary directory.
    """

    spec: TenantSpec
    client_secret: str
    certificate: AppCertificate
    cert_file: Path
    key_file: Path
    pfx_file: Path
    pfx_passphrase: str

    @property
    def tenant_id(self) -> str:
        return self.spec.tenant_id

    @property
    def client_id(self) -> str:
        return self.spec.client_id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cas(self) -> tuple[CASpec, ...]:
        return self.spec.cas

    @property
    def thumbprint(self) -> str:
        """SHA-1 thumbprint of the app certificate (hex, upper case)."""
        return self.certificate.thumbprint

    @property
    def federated_subject(self) -> str:
        return self.spec.federated_subject


def derive_secret(seed: int, tenant_id: str) -> str:
    """A 40-character secret in Entra's alphabet, stable for a seed and tenant."""
    rng = random.Random(f"{seed}|{tenant_id}|client-secret")
    return "sim" + "".join(rng.choice(_SECRET_ALPHABET) for _ in range(37))


def make_tenant(spec: TenantSpec, seed: int, directory: Path, *, keep: bool = False) -> SimTenant:
    """``keep``: ``directory`` is a state directory; an app certificate kept there (with
    its PFX passphrase) is used again, so that a config naming those files survives a
    restart."""
    stem = spec.tenant_id
    common_name = f"pki-exporter simulator app {spec.client_id}"
    cert_file = directory / f"{stem}-app.crt.pem"
    key_file = directory / f"{stem}-app.key.pem"
    pfx_file = directory / f"{stem}-app.pfx"
    passphrase_file = directory / f"{stem}-app.pfx.passphrase"
    cert = AppCertificate.read(common_name, cert_file, key_file, passphrase_file) if keep else None
    if cert is None:
        cert = AppCertificate.create(common_name, secrets.token_urlsafe(12))
        if keep:
            write_private(passphrase_file, cert.pfx_passphrase.encode())
    cert_file.write_text(cert.cert_pem)
    write_private(key_file, cert.key_pem.encode())
    write_private(pfx_file, cert.pfx)
    passphrase = cert.pfx_passphrase
    return SimTenant(
        spec=spec,
        client_secret=spec.client_secret or derive_secret(seed, spec.tenant_id),
        certificate=cert,
        cert_file=cert_file,
        key_file=key_file,
        pfx_file=pfx_file,
        pfx_passphrase=passphrase,
    )


@dataclass(frozen=True)
class TokenInfo:
    tenant_id: str
    client_id: str
    issued_at: float
    expires_at: float


class AuthError(Exception):
    """An AADSTS error: HTTP status, OAuth error, AADSTS code and description."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description


def aad_error_body(error: str, code: int, description: str) -> dict[str, Any]:
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {description} Trace ID: {trace_id} "
        f"Correlation ID: {correlation_id} Timestamp: {stamp}",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
    }


def aad_error(exc: AuthError, headers: list[tuple[str, str]] | None = None) -> Response:
    body = aad_error_body(exc.error, exc.code, exc.description)
    return json_response(exc.status, body, headers=headers, endpoint="token")


class Authority:
    """Discovery, token issuance and bearer validation, for all tenants of a simulator."""

    def __init__(
        self,
        base_url: Callable[[], str],
        clock: Callable[[], float],
        token_lifetime: Callable[[], int],
    ) -> None:
        self._base_url = base_url
        self._clock = clock
        self._token_lifetime = token_lifetime
        self._tenants: dict[str, SimTenant] = {}
        self._signing_key = new_rsa_key()
        self._signing_kid = uuid.uuid4().hex
        #: the "Kubernetes" OIDC issuer of workload identity, here played by the simulator
        self._issuer_key = new_rsa_key()
        self._issuer_kid = uuid.uuid4().hex
        self._tokens: dict[str, TokenInfo] = {}
        #: the last access tokens handed out, kept only so that tests can prove that no
        #: token leaks into logs, metrics or pages (never logged)
        self._recent: deque[str] = deque(maxlen=1000)
        self._lock = threading.Lock()

    # --- registry -------------------------------------------------------------------

    def set_tenants(self, tenants: list[SimTenant]) -> None:
        with self._lock:
            self._tenants = {t.tenant_id.lower(): t for t in tenants}

    def tenant(self, tenant_id: str) -> SimTenant | None:
        return self._tenants.get(tenant_id.lower())

    @property
    def federated_issuer(self) -> str:
        return f"{self._base_url()}/_simulator/oidc"

    def token_endpoint(self, tenant_id: str) -> str:
        return f"{self._base_url()}/{tenant_id}/oauth2/v2.0/token"

    # --- discovery -------------------------------------------------------------------

    def openid_configuration(self, tenant_id: str) -> Response:
        tenant = self.tenant(tenant_id)
        if tenant is None:
            exc = AuthError(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant_id}' not found. Check to make sure you have the correct "
                "tenant ID and are signing into the correct cloud.",
            )
            return aad_error(exc)
        base = f"{self._base_url()}/{tenant.tenant_id}"
        body = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self._base_url()}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "oid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "simulator.invalid",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": self._base_url().removeprefix("https://"),
            "rbac_url": "https://pas.windows.net",
        }
        return json_response(200, body, endpoint="openid_configuration", tenant_id=tenant.tenant_id)

    def jwks(self, tenant_id: str | None) -> Response:
        key = self._issuer_key if tenant_id is None else self._signing_key
        kid = self._issuer_kid if tenant_id is None else self._signing_kid
        return json_response(200, {"keys": [jose.jwk(key.public_key(), kid)]}, endpoint="jwks")

    def federated_issuer_configuration(self) -> Response:
        issuer = self.federated_issuer
        body = {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/keys",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        return json_response(200, body, endpoint="jwks")

    # --- the token endpoint -------------------------------------------------------------

    def token(self, request: Request, tenant_id: str) -> Response:
        try:
            tenant, form = self._check_request(request, tenant_id)
            self._authenticate_client(tenant, form)
        except AuthError as exc:
            return aad_error(exc)
        lifetime = self._token_lifetime()
        token = self._issue(tenant, lifetime)
        body = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }
        return json_response(200, body, endpoint="token", tenant_id=tenant.tenant_id)

    def _check_request(self, request: Request, tenant_id: str) -> tuple[SimTenant, dict[str, str]]:
        tenant = self.tenant(tenant_id)
        if tenant is None:
            raise AuthError(400, "invalid_tenant", 90002, f"Tenant '{tenant_id}' not found.")
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise AuthError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        try:
            form = dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError as exc:
            raise AuthError(400, "invalid_request", 900144, "Malformed request body.") from exc
        basic = request.header("authorization") or ""
        if basic.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            except ValueError as exc:
                raise AuthError(
                    401, "invalid_client", 7000215, "Malformed Basic credentials."
                ) from exc
            form.setdefault("client_id", user)
            form.setdefault("client_secret", password)
        grant = form.get("grant_type")
        if grant != "client_credentials":
            raise AuthError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
            )
        client_id = form.get("client_id", "")
        if client_id.lower() != tenant.client_id.lower():
            raise AuthError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant.tenant_id}'. This can happen if the application has not been "
                "installed by the administrator of the tenant.",
            )
        scope = form.get("scope", "")
        accepted = {f"{base}/.default" for base in self._aliases()}
        if scope not in accepted:
            raise AuthError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                f"must have a scope value with /.default suffixed to the resource identifier "
                f"(application ID URI): expected {self._base_url()}/.default.",
            )
        return tenant, form

    def _aliases(self) -> list[str]:
        base = self._base_url()
        return [base, base.replace("://127.0.0.1:", "://localhost:")]

    def resource_aliases(self) -> list[str]:
        """The names of the simulated Graph as a token audience (``resource``, scope root)."""
        return self._aliases()

    def _authenticate_client(self, tenant: SimTenant, form: dict[str, str]) -> None:
        secret = form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret is not None and assertion is None:
            if not hmac.compare_digest(secret.encode(), tenant.client_secret.encode()):
                raise AuthError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the "
                    "request is the client secret value, not the client secret ID, for a "
                    f"secret added to app '{tenant.client_id}'.",
                )
            return
        if assertion is None:
            raise AuthError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise AuthError(
                400,
                "invalid_request",
                50027,
                "client_assertion_type must be " + ASSERTION_TYPE + ".",
            )
        try:
            jwt = jose.Unverified(assertion)
        except jose.JWTError as exc:
            raise AuthError(
                401, "invalid_client", 50027, "JWT token is invalid or malformed."
            ) from exc
        if "x5t" in jwt.header or "x5t#S256" in jwt.header:
            self._check_certificate_assertion(tenant, jwt)
        else:
            self._check_federated_assertion(tenant, jwt)

    def _check_certificate_assertion(self, tenant: SimTenant, jwt: jose.Unverified) -> None:
        cert = tenant.certificate
        wanted = [
            ("x5t#S256", cert.sha256),
            ("x5t", cert.sha1),
        ]
        presented = ""
        for header, digest in wanted:
            value = jwt.header.get(header)
            if isinstance(value, str):
                presented = value
                try:
                    if jose.b64url_decode(value) == digest:
                        break
                except jose.JWTError:
                    pass
        else:
            raise AuthError(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation. [Reason - The key was not "
                f"found., Thumbprint of key used by client: '{presented}'.]",
            )
        if jwt.alg not in jose.ALGORITHMS or not jwt.verify(cert.key.public_key()):
            raise AuthError(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation. [Reason - The provided "
                "signature value did not match the expected signature value.]",
            )
        claims = jwt.payload
        endpoints = {f"{base}/{tenant.tenant_id}/oauth2/v2.0/token" for base in self._aliases()}
        if claims.get("aud") not in endpoints:
            raise AuthError(
                401,
                "invalid_client",
                700212,
                f"No matching federated identity record found for presented assertion "
                f"audience '{claims.get('aud')}'.",
            )
        if claims.get("iss") != tenant.client_id or claims.get("sub") != tenant.client_id:
            raise AuthError(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            )
        self._check_lifetime(claims)

    def _check_federated_assertion(self, tenant: SimTenant, jwt: jose.Unverified) -> None:
        claims = jwt.payload
        if jwt.header.get("kid") != self._issuer_kid or not jwt.verify(
            self._issuer_key.public_key()
        ):
            raise AuthError(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation. [Reason - The key was not found.]",
            )
        if claims.get("aud") != FEDERATED_AUDIENCE:
            raise AuthError(
                401,
                "invalid_client",
                700212,
                "No matching federated identity record found for presented assertion "
                f"audience '{claims.get('aud')}'.",
            )
        if (
            claims.get("iss") != self.federated_issuer
            or claims.get("sub") != tenant.federated_subject
        ):
            raise AuthError(
                401,
                "invalid_client",
                70021,
                "No matching federated identity record found for presented assertion. "
                f"Assertion Issuer: '{claims.get('iss')}'. Assertion Subject: "
                f"'{claims.get('sub')}'.",
            )
        self._check_lifetime(claims)

    @staticmethod
    def _check_lifetime(claims: dict[str, Any]) -> None:
        # Assertions are built with the client's wall clock, so they are judged by the
        # real one (the injectable clock only drives access-token lifetimes).
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if (
            not isinstance(exp, int | float)
            or exp <= now - 300
            or (isinstance(nbf, int | float) and nbf > now + 300)
        ):
            raise AuthError(
                401,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            )

    def issue_federated_token(
        self,
        tenant_id: str,
        *,
        subject: str | None = None,
        audience: str = FEDERATED_AUDIENCE,
        lifetime: float = 3600.0,
    ) -> str:
        """A workload-identity token (what AKS writes to ``AZURE_FEDERATED_TOKEN_FILE``)."""
        tenant = self.tenant(tenant_id)
        if tenant is None:
            raise KeyError(tenant_id)
        now = time.time()
        payload = {
            "iss": self.federated_issuer,
            "sub": subject if subject is not None else tenant.federated_subject,
            "aud": audience,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            "jti": str(uuid.uuid4()),
        }
        return jose.encode({"kid": self._issuer_kid}, payload, self._issuer_key)

    # --- access tokens ----------------------------------------------------------------

    def issue_access_token(self, tenant_id: str, client_id: str) -> tuple[str, float, float]:
        """An app-only Graph token of ``tenant_id`` for ``client_id`` (a managed identity's
        service principal): ``(token, issued_at, expires_at)`` by the simulator's clock."""
        tenant = self.tenant(tenant_id)
        if tenant is None:
            raise KeyError(tenant_id)
        token, info = self._issue_with_info(tenant, self._token_lifetime(), client_id)
        return token, info.issued_at, info.expires_at

    def _issue(self, tenant: SimTenant, lifetime: int) -> str:
        return self._issue_with_info(tenant, lifetime, None)[0]

    def _issue_with_info(
        self, tenant: SimTenant, lifetime: int, client_id: str | None
    ) -> tuple[str, TokenInfo]:
        now = self._clock()
        app = client_id or tenant.client_id
        payload = {
            "aud": self._base_url(),
            "iss": f"{self._base_url()}/{tenant.tenant_id}/v2.0",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            "tid": tenant.tenant_id,
            "appid": app,
            "azp": app,
            "roles": [GRAPH_ROLE],
            "sub": app,
            "ver": "2.0",
            "uti": secrets.token_urlsafe(16),
        }
        token = jose.encode({"kid": self._signing_kid}, payload, self._signing_key)
        info = TokenInfo(tenant.tenant_id, app, now, now + lifetime)
        with self._lock:
            self._forget_expired(now)
            self._tokens[_digest(token)] = info
            self._recent.append(token)
        return token, info

    def _forget_expired(self, now: float) -> None:
        if len(self._tokens) > 1000:
            for key in [k for k, v in self._tokens.items() if v.expires_at <= now]:
                del self._tokens[key]

    def validate(self, authorization: str | None) -> TokenInfo | str:
        """The token's info, or the reason (Graph's message) why it is refused."""
        if not authorization:
            return "Access token is empty."
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "Access token is empty."
        if token.count(".") != 2:
            return "IDX14100: JWT is not well formed, there are no dots (.)."
        with self._lock:
            info = self._tokens.get(_digest(token))
        if info is None:
            try:
                jose.Unverified(token)
            except jose.JWTError:
                return "IDX14102: Unable to decode the header as Base64Url encoded string."
            return "Lifetime validation failed, the token is expired."
        if self._clock() >= info.expires_at:
            return "Lifetime validation failed, the token is expired."
        return info

    def expire_tokens(self, tenant_id: str | None = None) -> int:
        """Forget every token issued so far (of one tenant, or all): they answer 401 now."""
        with self._lock:
            doomed = [
                key
                for key, info in self._tokens.items()
                if tenant_id is None or info.tenant_id.lower() == tenant_id.lower()
            ]
            for key in doomed:
                del self._tokens[key]
        return len(doomed)

    def issued_tokens(self) -> list[str]:
        """The access tokens issued so far (the last 1000), oldest first."""
        with self._lock:
            return list(self._recent)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
