"""Managed identity end to end: MSAL's ManagedIdentityClient against the simulated IMDS.

The exporter runs as a real process with ``credential: {managed_identity: ...}`` and
``AZURE_POD_IDENTITY_AUTHORITY_HOST`` pointing at the simulator's plain-HTTP metadata
listener on loopback, the one override MSAL honours for the VM endpoint (it would
otherwise ask http://169.254.169.254). The simulator's IMDS issues tokens of the VM's
identities that its Graph accepts for their own tenant only, so the exact numbers prove
the whole path: IMDS request, token, Graph, fold.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pki_simulator import Fault

from tests.conftest import ANCHOR
from tests.exporter_proc import CERT_METRICS, WINDOWS, Samples, write_config

#: variables that would send MSAL to another managed-identity flavour than the VM's IMDS
_OTHER_MI_SOURCES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET")


def mi_tenant(sim: Any, tenant: Any, name: str, managed_identity: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "tenant_id": tenant.tenant_id,
        "authority_host": sim.url,
        "graph_url": sim.url,
        "ca_bundle": str(sim.ca_bundle_path),
        "credential": {"managed_identity": managed_identity},
        "certification_authorities": "all",
    }


def imds_env(sim: Any) -> dict[str, str]:
    assert not any(os.environ.get(k) for k in _OTHER_MI_SOURCES), "unexpected MI environment"
    return {"AZURE_POD_IDENTITY_AUTHORITY_HOST": sim.imds.url}


def imds_requests(sim: Any) -> list[Any]:
    return [e for e in sim.log if e.endpoint == "imds"]


def refreshed(samples: Samples, n_cas: int) -> bool:
    ok = [v for k, v in samples.items() if k[0] == "intune_cloudpki_refresh_success"]
    return len(ok) == n_cas and all(v == 1 for v in ok)


def assert_exact(sim: Any, samples: Samples, tenant: Any, name: str) -> None:
    """Every certificate sample of ``tenant`` exactly, and nothing of any other tenant."""
    want = {
        k: v
        for k, v in sim.expected_samples(
            now=ANCHOR, windows=WINDOWS, tenant_names={tenant.tenant_id: name}
        ).items()
        if dict(k[1]).get("tenant") == name and k[0] in CERT_METRICS
    }
    got = {k: v for k, v in samples.items() if k[0] in CERT_METRICS}
    assert want, "the ground truth of the tenant is empty"
    assert got == want


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.fixture
def mi_sim(start_simulator: Any) -> Any:
    """Two tenants (so that a token of the wrong tenant would show), IMDS on loopback."""
    sim = start_simulator(seed=21, tenants=2, cas=2, certificates=600, page_size=250)
    sim.start_imds()
    return sim


# --- the simulated IMDS itself ------------------------------------------------------------


def test_imds_answers_like_azure(mi_sim: Any) -> None:
    sim = mi_sim
    url = sim.imds.url + "/metadata/identity/oauth2/token"
    assert url.startswith("http://127.0.0.1:")
    headers = {"Metadata": "true"}
    params = {"api-version": "2018-02-01", "resource": sim.url}
    system = sim.imds.system_assigned()
    assert system is not None and system.tenant_id == sim.tenants[0].tenant_id

    ok = httpx.get(url, params=params, headers=headers)
    assert ok.status_code == 200
    body = ok.json()
    assert set(body) == {
        "access_token",
        "client_id",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
    }
    # IMDS sends the numbers as strings.
    assert body["expires_in"] == "3600" and body["token_type"] == "Bearer"
    assert int(body["expires_on"]) - int(body["not_before"]) == 3600
    assert body["resource"] == sim.url and body["client_id"] == system.client_id
    claims = jwt_claims(body["access_token"])
    assert claims["tid"] == system.tenant_id and claims["appid"] == system.client_id
    # Graph takes it, for the identity's own tenant.
    cas = httpx.get(
        sim.url + "/beta/deviceManagement/cloudCertificationAuthority",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        verify=ssl.create_default_context(cafile=str(sim.ca_bundle_path)),
    )
    assert cas.status_code == 200
    assert {c["id"] for c in cas.json()["value"]} == {c.id for c in sim.tenants[0].cas}

    # A user-assigned identity by client_id, object_id or msi_res_id: its own tenant.
    other = sim.imds.user_assigned(sim.tenants[1].name)[0]
    for key, value in (
        ("client_id", other.client_id),
        ("object_id", other.object_id),
        ("msi_res_id", other.resource_id),
    ):
        answer = httpx.get(url, params={**params, key: value}, headers=headers)
        assert answer.status_code == 200, (key, answer.text)
        assert jwt_claims(answer.json()["access_token"])["tid"] == sim.tenants[1].tenant_id

    def error(status: int, code: str, text: str, **kw: Any) -> None:
        answer = httpx.get(url, **{"params": params, "headers": headers, **kw})
        assert answer.status_code == status, answer.text
        assert answer.json()["error"] == code and text in answer.json()["error_description"]

    error(400, "invalid_request", "Required metadata header not specified", headers={})
    error(
        400,
        "invalid_request",
        "Identity not found",
        params={**params, "client_id": str(uuid.uuid4())},
    )
    error(400, "invalid_request", "api-version", params={"resource": sim.url})
    error(400, "invalid_request", "audience", params={"api-version": "2018-02-01"})
    error(
        400,
        "invalid_resource",
        "AADSTS500011",
        params={**params, "resource": "https://graph.microsoft.com"},
    )
    sim.imds.set_system_assigned(None)
    error(400, "invalid_request", "Identity not found")
    sim.imds.set_system_assigned(sim.tenants[1].name)
    assert (
        jwt_claims(httpx.get(url, params=params, headers=headers).json()["access_token"])["tid"]
        == sim.tenants[1].tenant_id
    )

    # The plain listener is IMDS only; the HTTPS server answers IMDS as well.
    assert (
        httpx.get(sim.imds.url + "/beta/deviceManagement/cloudCertificationAuthority").status_code
        == 404
    )
    https = httpx.get(
        sim.url + "/metadata/identity/oauth2/token",
        params=params,
        headers=headers,
        verify=ssl.create_default_context(cafile=str(sim.ca_bundle_path)),
    )
    assert https.status_code == 200
    entries = imds_requests(sim)
    assert all(e.path == "/metadata/identity/oauth2/token" for e in entries if e.status == 200)
    assert not any(body["access_token"] in json.dumps(e.to_dict()) for e in sim.log)


# --- the exporter with a managed identity --------------------------------------------------


def test_system_assigned_identity_exact_metrics_and_cached_token(
    mi_sim: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = mi_sim
    tenant = sim.tenants[0]
    cfg = write_config(tmp_path / "config.yaml", [mi_tenant(sim, tenant, "contoso", {})])
    exporter = start_exporter("--config.file", str(cfg), env=imds_env(sim))
    samples = exporter.wait_for(lambda s: refreshed(s, 2), what="two CAs refreshed")
    assert_exact(sim, samples, tenant, "contoso")
    assert samples[("intune_cloudpki_tenant_up", (("tenant", "contoso"),))] == 1

    # Several refresh cycles (interval 1s) later, MSAL still serves the first token from its
    # cache: IMDS was asked exactly once.
    ca = tenant.cas[0].id
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        leaf_firsts = [
            e for e in sim.log if e.endpoint == "leaves" and e.ca_id == ca and e.page == 0
        ]
        if len(leaf_firsts) >= 4:
            break
        time.sleep(0.2)
    assert len(leaf_firsts) >= 4, "fewer than four refresh cycles in 30 s"
    imds = imds_requests(sim)
    assert len(imds) == 1, imds
    system = sim.imds.system_assigned()
    assert imds[0].status == 200 and imds[0].tenant_id == tenant.tenant_id
    assert "client_id" not in imds[0].query  # system-assigned: no identity named
    graph = [e for e in sim.log if "/beta/" in e.path]
    assert graph and all(e.status == 200 and e.tenant_id == tenant.tenant_id for e in graph)
    # Graph saw the identity's token (appid = the identity), never the tenant's app.
    (token,) = sim.issued_tokens()
    assert jwt_claims(token)["appid"] == system.client_id
    assert token not in exporter.log()
    assert token not in exporter.get("/metrics").text + exporter.get("/").text


def test_user_assigned_identity_exact_metrics(
    mi_sim: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = mi_sim
    tenant = sim.tenants[1]
    identity = sim.imds.user_assigned(tenant.tenant_id)[0]
    entry = mi_tenant(sim, tenant, "fabrikam", {"client_id": identity.client_id.upper()})
    cfg = write_config(tmp_path / "config.yaml", [entry])
    exporter = start_exporter("--config.file", str(cfg), env=imds_env(sim))
    samples = exporter.wait_for(lambda s: refreshed(s, 2), what="two CAs refreshed")
    assert_exact(sim, samples, tenant, "fabrikam")
    (request,) = imds_requests(sim)
    assert f"client_id={identity.client_id}" in request.query  # lower-cased by the config
    assert request.status == 200 and request.tenant_id == tenant.tenant_id


def test_identity_not_on_the_vm_is_an_auth_failure_then_recovers(
    mi_sim: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = mi_sim
    tenant = sim.tenants[0]
    client_id = str(uuid.uuid4())
    entry = mi_tenant(sim, tenant, "contoso", {"client_id": client_id})
    cfg = write_config(tmp_path / "config.yaml", [entry])
    exporter = start_exporter("--config.file", str(cfg), env=imds_env(sim), wait_ready=False)
    down = (("tenant", "contoso"),)
    exporter.wait_for(lambda s: s.get(("intune_cloudpki_tenant_up", down)) == 0, what="tenant down")
    deadline = time.monotonic() + 10
    while "Identity not found" not in exporter.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = exporter.log()
    assert "Identity not found" in log and "reason=auth" in log
    assert "Traceback" not in log
    assert all(e.status == 400 for e in imds_requests(sim))
    assert not [e for e in sim.log if "/beta/" in e.path]  # no token, no Graph request

    # The identity is assigned to the VM: the next cycle gets a token and exact numbers.
    sim.imds.assign(tenant.tenant_id, client_id)
    samples = exporter.wait_for(lambda s: refreshed(s, 2), what="recovered")
    assert_exact(sim, samples, tenant, "contoso")
    assert samples[("intune_cloudpki_tenant_up", down)] == 1


def test_revoked_token_is_fetched_again_from_imds(
    mi_sim: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = mi_sim
    tenant = sim.tenants[0]
    cfg = write_config(tmp_path / "config.yaml", [mi_tenant(sim, tenant, "contoso", {})])
    exporter = start_exporter("--config.file", str(cfg), env=imds_env(sim))
    exporter.wait_for(lambda s: refreshed(s, 2))
    assert len(imds_requests(sim)) == 1
    sim.faults.add(Fault(kind="token_expiry"))  # Graph answers 401 to the cached token
    deadline = time.monotonic() + 30
    while len(imds_requests(sim)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(imds_requests(sim)) == 2, "the 401 did not lead to a new IMDS token"
    assert any(e.status == 401 for e in sim.log if "/beta/" in e.path)

    # Two more refresh cycles with the new token: served from MSAL's cache again.
    def first_pages() -> list[Any]:
        ca = tenant.cas[0].id
        return [e for e in sim.log if e.endpoint == "leaves" and e.ca_id == ca and e.page == 0]

    seen = len(first_pages())
    deadline = time.monotonic() + 30
    while len(first_pages()) < seen + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(first_pages()) >= seen + 2
    assert len(imds_requests(sim)) == 2
    samples = exporter.wait_for(lambda s: refreshed(s, 2))
    assert_exact(sim, samples, tenant, "contoso")


def test_hung_imds_times_out_instead_of_holding_the_refresh(
    mi_sim: Any, start_exporter: Any, tmp_path: Path
) -> None:
    sim = mi_sim
    tenant = sim.tenants[0]
    # IMDS answers only after 8 s, once; the exporter's request timeout is 1 s. Without a
    # timeout the token would arrive late but fine, and no refresh would ever fail.
    slow = sim.faults.add(Fault(kind="slow", delay=8, target="token", times=1))
    cfg = write_config(
        tmp_path / "config.yaml",
        [mi_tenant(sim, tenant, "contoso", {})],
        refresh={"interval": "1s", "timeout": "1s", "concurrency": 4},
    )
    exporter = start_exporter("--config.file", str(cfg), env=imds_env(sim), wait_ready=False)
    # The hung request times out after 1 s and is retried in the same refresh (a timeout at
    # the token endpoint is an outage, not refused credentials): no failure is counted.
    deadline = time.monotonic() + 30
    while "retrying token request" not in exporter.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    retried = [line for line in exporter.log().splitlines() if "retrying token request" in line]
    assert retried, exporter.log()
    assert "reason=timeout" in retried[0] and "timed out" in retried[0].lower(), retried[0]
    assert sim.faults.fired(slow) == 1
    samples = exporter.wait_for(lambda s: refreshed(s, 2), what="recovered")
    assert_exact(sim, samples, tenant, "contoso")
    assert "tenant refresh failed" not in exporter.log()
