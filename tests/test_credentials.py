"""pki_exporter.graph.credentials: token providers against the simulator's authority.

Client secret and certificate through MSAL over real TLS, and how each failure on the way
to a token is classified into the ``reason`` it counts under.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3.connection
from pki_simulator import Fault, Simulator

from pki_exporter.graph.credentials import (
    AuthError,
    ConfidentialTokens,
    _describe,
    token_provider,
)
from tests.inproc import CA_A, ca, one_tenant, tenant_config

pytestmark = pytest.mark.timeout(60)

UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator.from_spec(one_tenant(ca(CA_A, "A", 10)))
    simulator.start()
    yield simulator
    simulator.close()


def token_requests(sim: Simulator) -> list[int]:
    return [e.status for e in sim.log if e.endpoint == "token"]


def test_a_client_secret_gets_a_token_once_then_from_the_cache(
    sim: Simulator, tmp_path: Path
) -> None:
    tokens = token_provider(tenant_config(sim, tmp_path), 5.0)
    try:
        first = tokens.token()
        assert tokens.token() == first
    finally:
        tokens.close()
    assert sim.issued_tokens() == [first]
    assert token_requests(sim) == [200]


def test_invalidate_forgets_the_cached_token(sim: Simulator, tmp_path: Path) -> None:
    tokens = token_provider(tenant_config(sim, tmp_path), 5.0)
    try:
        first = tokens.token()
        tokens.invalidate()
        second = tokens.token()
    finally:
        tokens.close()
    assert first != second
    assert sim.issued_tokens() == [first, second]


def test_a_certificate_gets_a_token(sim: Simulator, tmp_path: Path) -> None:
    app = sim.tenants[0]
    tenant = tenant_config(
        sim,
        tmp_path,
        credential={
            "certificate": {
                "certificate_file": str(app.cert_file),
                "private_key_file": str(app.key_file),
            }
        },
    )
    tokens = token_provider(tenant, 5.0)
    try:
        token = tokens.token()
    finally:
        tokens.close()
    assert sim.issued_tokens() == [token]


def test_a_wrong_secret_is_final_and_never_shown(sim: Simulator, tmp_path: Path) -> None:
    tenant = tenant_config(sim, tmp_path)
    Path(tenant.credential.path).write_text("not-the-secret-at-all")  # type: ignore[union-attr]
    tokens = ConfidentialTokens(tenant, 5.0)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    tokens.close()
    assert (caught.value.reason, caught.value.transient) == ("auth", False)
    assert re.fullmatch(
        r"invalid_client: AADSTS7000215: Invalid client secret provided\. Ensure the secret "
        r"being sent in the request is the client secret value, not the client secret ID, "
        rf"for a secret added to app '{tenant.client_id}'\. "
        rf"Trace ID: {UUID} Correlation ID: ({UUID}) Timestamp: [0-9-]+ [0-9:]+Z "
        r"\(correlation-id \1\)",
        str(caught.value),
    ), str(caught.value)
    assert "not-the-secret-at-all" not in str(caught.value)


def test_an_entra_id_description_is_kept_whole() -> None:
    """Entra ID's own text (issue 22: it was cut inside its correlation id)."""
    description = (
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the "
        "request is the client secret value, not the client secret ID, for a secret added to "
        "app '11111111-1111-1111-1111-111111111111'. Trace ID: "
        "4c8b1b9e-2f36-4b4c-9d55-2f0a8f6d2a00 Correlation ID: "
        "0e9f2a71-5b1c-4a8e-9a43-6c3d2b1e7f10 Timestamp: 2026-12-06 23:41:07Z"
    )
    result = {
        "error": "invalid_client",
        "error_description": description + "\r\n",
        "correlation_id": "0e9f2a71-5b1c-4a8e-9a43-6c3d2b1e7f10",
    }
    assert _describe(result) == (
        f"invalid_client: {description} (correlation-id 0e9f2a71-5b1c-4a8e-9a43-6c3d2b1e7f10)"
    )
    endless = {"error": "server_error", "error_description": "AADSTS90000: cause. " + "x" * 5000}
    told = _describe(endless)
    assert told.startswith("server_error: AADSTS90000: cause. xxx") and told.endswith("…")
    assert len(told) == len("server_error: ") + 1000


@pytest.mark.parametrize(
    ("fault", "reason", "retry_after"),
    [
        (Fault(kind="token_error", status=429, retry_after=7), "throttled", "7"),
        (Fault(kind="token_error", status=503, retry_after=3), "http_5xx", "3"),
        (Fault(kind="token_error", status=500), "http_5xx", None),
        (Fault(kind="token_error", status=400), "auth", None),
        (Fault(kind="token_error"), "auth", None),
    ],
    ids=["429", "503", "500", "400", "401"],
)
def test_token_endpoint_answers_are_classified(
    sim: Simulator, tmp_path: Path, fault: Fault, reason: str, retry_after: str | None
) -> None:
    sim.faults.add(fault)
    tokens = ConfidentialTokens(tenant_config(sim, tmp_path), 5.0)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    tokens.close()
    assert (caught.value.reason, caught.value.retry_after) == (reason, retry_after)
    assert caught.value.transient == (reason != "auth")
    assert sim.issued_tokens() == []


def test_a_hung_token_endpoint_is_a_timeout(sim: Simulator, tmp_path: Path) -> None:
    """refresh.timeout bounds a token request too (MSAL sets none on the session it is given)."""
    sim.faults.add(Fault(kind="slow", delay=5.0, target="token"))
    tokens = ConfidentialTokens(tenant_config(sim, tmp_path), 0.3)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    tokens.close()
    assert caught.value.reason == "timeout"
    tenant = sim.tenants[0].tenant_id
    assert str(caught.value) == (
        f"token request failed: timed out waiting for an answer from 127.0.0.1:{sim.port} "
        f"(tried {sim.url}/{tenant}/oauth2/v2.0/token)"
    )


def test_a_refused_connection_is_network(sim: Simulator, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{s.getsockname()[1]}"
    tokens = ConfidentialTokens(tenant_config(sim, tmp_path, authority_host=closed), 5.0)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    tokens.close()
    assert caught.value.reason == "network"
    assert caught.value.transient
    port = closed.rsplit(":", 1)[1]
    tenant = sim.tenants[0].tenant_id
    assert str(caught.value) == (
        f"cannot set up the authority {closed}: connection refused by 127.0.0.1:{port} "
        f"(tried {closed}/{tenant}/v2.0/.well-known/openid-configuration)"
    )


def test_a_certificate_nobody_vouches_for_names_ca_bundle(sim: Simulator, tmp_path: Path) -> None:
    """Without ca_bundle the simulator's certificate is unknown: the whole cause, and the fix."""
    tokens = ConfidentialTokens(tenant_config(sim, tmp_path, ca_bundle=None), 5.0)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    tokens.close()
    assert caught.value.reason == "network"
    assert str(caught.value) == (
        f"cannot set up the authority {sim.url}: TLS to 127.0.0.1:{sim.port}: certificate "
        "verify failed: unable to get local issuer certificate (add the CA that issued the "
        "server's certificate to ca_bundle)"
    )


def test_requests_ca_bundle_does_not_replace_ca_bundle(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests would prefer REQUESTS_CA_BUNDLE over the session's bundle: not here."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "missing.pem"))
    tokens = ConfidentialTokens(tenant_config(sim, tmp_path), 5.0)
    try:
        assert tokens.token()
    finally:
        tokens.close()


def test_connections_take_the_routes_context_and_load_no_file(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests names certifi's file for every https request; urllib3 would load it into the
    route's shared context at each new connection (25 ms, and a write other threads see).
    The context alone is the trust: no file is named to urllib3, and the token still comes."""
    wraps: list[dict[str, object]] = []
    real = urllib3.connection.ssl_wrap_socket

    def spy(*args: object, **kwargs: object) -> object:
        wraps.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib3.connection, "ssl_wrap_socket", spy)
    tokens = ConfidentialTokens(tenant_config(sim, tmp_path), 5.0)
    try:
        assert tokens.token()
    finally:
        tokens.close()
    assert wraps, "no TLS connection was made"
    assert [(w["ca_certs"], w["ca_cert_dir"]) for w in wraps] == [(None, None)] * len(wraps)
    assert all(w["ssl_context"] is tokens.route.ssl_context() for w in wraps)


def test_an_unset_secret_variable_is_auth(sim: Simulator, tmp_path: Path) -> None:
    tenant = tenant_config(sim, tmp_path, credential={"client_secret_env": "NO_SUCH_SECRET_VAR"})
    tokens = ConfidentialTokens(tenant, 5.0)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    assert (caught.value.reason, str(caught.value)) == (
        "auth",
        "client secret: environment variable NO_SUCH_SECRET_VAR is not set",
    )
    assert token_requests(sim) == []
