"""The fake Entra ID, driven by a real MSAL ConfidentialClientApplication over TLS."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from pki_simulator import Fault, Simulator

from .helpers import fetch_token, msal_app, scope, tls


def _tokens(sim: Simulator) -> list[int]:
    return [e.status for e in sim.log if e.endpoint == "token"]


def test_secret_token_is_issued_and_cached_by_msal(sim: Simulator) -> None:
    tenant = sim.tenants[0]
    app = msal_app(sim, tenant, tenant.client_secret)
    first = app.acquire_token_for_client(scope(sim))
    assert first["token_type"] == "Bearer"
    assert first["expires_in"] == sim.spec.token_lifetime
    second = app.acquire_token_for_client(scope(sim))
    assert second["access_token"] == first["access_token"]
    assert second.get("token_source") == "cache"
    assert _tokens(sim) == [200]
    assert sim.issued_tokens()[-1] == first["access_token"]
    discovery = [e for e in sim.log if e.endpoint == "openid_configuration"]
    assert [e.status for e in discovery] == [200]


@pytest.mark.parametrize("kind", ["pem_certificate", "pem_thumbprint", "pfx"])
def test_certificate_credentials(sim: Simulator, kind: str) -> None:
    tenant = sim.tenants[0]
    credential: dict[str, str] = {
        "pem_certificate": {
            "private_key": tenant.key_file.read_text(),
            "public_certificate": tenant.cert_file.read_text(),
        },
        "pem_thumbprint": {
            "private_key": tenant.key_file.read_text(),
            "thumbprint": tenant.thumbprint,
        },
        "pfx": {
            "private_key_pfx_path": str(tenant.pfx_file),
            "passphrase": tenant.pfx_passphrase,
        },
    }[kind]
    result = msal_app(sim, tenant, credential).acquire_token_for_client(scope(sim))
    assert "access_token" in result, result
    with httpx.Client(verify=tls(sim), trust_env=False) as client:
        response = client.get(
            f"{sim.url}/beta/deviceManagement/cloudCertificationAuthority",
            headers={"Authorization": f"Bearer {result['access_token']}"},
        )
    assert response.status_code == 200


def test_certificate_of_another_app_is_refused(sim: Simulator) -> None:
    tenant = sim.tenants[0]
    other = Simulator.generate(seed=99, cas=1, certificates=1)
    try:
        credential = {
            "private_key": other.tenants[0].key_file.read_text(),
            "public_certificate": other.tenants[0].cert_file.read_text(),
        }
        result = msal_app(sim, tenant, credential).acquire_token_for_client(scope(sim))
    finally:
        other.close()
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]


def test_federated_assertion_from_workload_identity(sim: Simulator, tmp_path: Path) -> None:
    """As on AKS: the token file is re-read on every token request."""
    tenant = sim.tenants[0]
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(sim.issue_federated_token(tenant.tenant_id))
    reads = []

    def assertion() -> str:
        reads.append(1)
        return token_file.read_text()

    result = msal_app(sim, tenant, {"client_assertion": assertion}).acquire_token_for_client(
        scope(sim)
    )
    assert "access_token" in result, result
    assert reads


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [({"subject": "system:serviceaccount:other:app"}, 70021), ({"audience": "api://x"}, 700212)],
)
def test_federated_assertion_checks_subject_and_audience(
    sim: Simulator, kwargs: dict[str, str], code: int
) -> None:
    tenant = sim.tenants[0]
    token = sim.issue_federated_token(tenant.tenant_id, **kwargs)
    result = msal_app(sim, tenant, {"client_assertion": lambda: token}).acquire_token_for_client(
        scope(sim)
    )
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [code]


def test_wrong_secret_gives_invalid_client_and_logs_no_secret(sim: Simulator) -> None:
    tenant = sim.tenants[0]
    result = msal_app(sim, tenant, "not-the-secret").acquire_token_for_client(scope(sim))
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret")
    assert _tokens(sim) == [401]
    good = msal_app(sim, tenant, tenant.client_secret).acquire_token_for_client(scope(sim))
    text = repr(sim.log) + json.dumps([e.to_dict() for e in sim.log])
    assert "not-the-secret" not in text
    assert tenant.client_secret not in text
    assert good["access_token"] not in text


def test_token_request_errors(sim: Simulator) -> None:
    tenant = sim.tenants[0]
    form = {
        "grant_type": "client_credentials",
        "client_id": tenant.client_id,
        "client_secret": tenant.client_secret,
        "scope": f"{sim.url}/.default",
    }
    with httpx.Client(verify=tls(sim), trust_env=False) as client:
        unknown = client.post(
            f"{sim.url}/{'0' * 8}-0000-0000-0000-{'0' * 12}/oauth2/v2.0/token", data=form
        )
        bad_scope = client.post(
            f"{sim.url}/{tenant.tenant_id}/oauth2/v2.0/token",
            data={**form, "scope": "https://graph.microsoft.com/.default"},
        )
        bad_client = client.post(
            f"{sim.url}/{tenant.tenant_id}/oauth2/v2.0/token",
            data={**form, "client_id": "11111111-1111-1111-1111-111111111111"},
        )
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_tenant")
    assert (bad_scope.status_code, bad_scope.json()["error"]) == (400, "invalid_scope")
    assert bad_client.json()["error_codes"] == [700016]
    for response in (unknown, bad_scope, bad_client):
        body = response.json()
        assert {
            "error",
            "error_description",
            "error_codes",
            "timestamp",
            "trace_id",
            "correlation_id",
        } <= body.keys()


def _ca_list(sim: Simulator, authorization: str | None) -> httpx.Response:
    headers = {"client-request-id": "c0ffee00-0000-4000-8000-000000000001"}
    if authorization is not None:
        headers["Authorization"] = authorization
    with httpx.Client(verify=tls(sim), trust_env=False) as client:
        return client.get(
            f"{sim.url}/beta/deviceManagement/cloudCertificationAuthority", headers=headers
        )


@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer garbage", "Bearer a.b.c", "Basic eDp5"]
)
def test_bearer_is_enforced(sim: Simulator, authorization: str | None) -> None:
    response = _ca_list(sim, authorization)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "InvalidAuthenticationToken"
    assert error["innerError"]["client-request-id"] == "c0ffee00-0000-4000-8000-000000000001"
    assert error["innerError"]["request-id"] == response.headers["request-id"]
    assert response.headers["client-request-id"] == "c0ffee00-0000-4000-8000-000000000001"
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert [e.had_authorization for e in sim.log] == [authorization is not None]


def test_expired_token_is_refused(sim: Simulator) -> None:
    now = [1_800_000_000.0]
    sim.clock = lambda: now[0]
    try:
        token = fetch_token(sim, sim.tenants[0])
        assert _ca_list(sim, f"Bearer {token}").status_code == 200
        now[0] += sim.spec.token_lifetime - 1
        assert _ca_list(sim, f"Bearer {token}").status_code == 200
        now[0] += 1
        expired = _ca_list(sim, f"Bearer {token}")
    finally:
        sim.clock = time.time
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]


def test_token_expiry_fault_then_a_fresh_token_works(sim: Simulator) -> None:
    tenant = sim.tenants[0]
    app = msal_app(sim, tenant, tenant.client_secret)
    old = app.acquire_token_for_client(scope(sim))["access_token"]
    assert _ca_list(sim, f"Bearer {old}").status_code == 200
    sim.faults.add(Fault(kind="token_expiry"))
    refused = _ca_list(sim, f"Bearer {old}")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "InvalidAuthenticationToken"
    # MSAL still has the old token cached; a fresh one must be requested explicitly
    assert app.acquire_token_for_client(scope(sim))["access_token"] == old
    app.remove_tokens_for_client()
    fresh = app.acquire_token_for_client(scope(sim))["access_token"]
    assert fresh != old
    assert _ca_list(sim, f"Bearer {fresh}").status_code == 200


def test_token_error_fault_invalid_client_and_throttling(sim: Simulator) -> None:
    tenant = sim.tenants[0]
    sim.faults.add(Fault(kind="token_error", times=1))
    sim.faults.add(Fault(kind="token_error", status=429, retry_after=7, times=1))
    url = f"{sim.url}/{tenant.tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": tenant.client_id,
        "client_secret": tenant.client_secret,
        "scope": f"{sim.url}/.default",
    }
    with httpx.Client(verify=tls(sim), trust_env=False) as client:
        first, second, third = (client.post(url, data=form) for _ in range(3))
    assert (first.status_code, first.json()["error"], first.json()["error_codes"]) == (
        401,
        "invalid_client",
        [7000215],
    )
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "7"
    assert second.json()["error_codes"] == [90055]
    assert third.status_code == 200
    assert [e.fault for e in sim.log] == ["token_error", "token_error", None]


def test_token_lifetime_is_configurable() -> None:
    with Simulator.generate(cas=1, certificates=1, token_lifetime=120) as sim:
        tenant = sim.tenants[0]
        result = msal_app(sim, tenant, tenant.client_secret).acquire_token_for_client(scope(sim))
    assert result["expires_in"] == 120
    assert result["ext_expires_in"] == 120
