"""Outbound proxies end to end: the exporter as a real process behind a real Squid.

The simulated tenant lives at ``https://pki.proxied.test:PORT``, a name that only Squid
resolves (its hosts_file): a request that reaches the simulator under it went through the
proxy, and one that tried to go direct fails. The simulator's CDN (CRLs and CA certificates,
plain HTTP) is named the same way (``http://pki.proxied.test:CDN_PORT``), so CRL reads prove
that they take the tenant's route too. Managed identity's metadata endpoint is on 127.0.0.1
and must go direct even with ``HTTP_PROXY`` set.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pki_simulator import Simulator

from tests.conftest import ANCHOR
from tests.exporter_proc import (
    CERT_METRICS,
    WINDOWS,
    Samples,
    base_env,
    free_port,
    tenant_config,
    write_config,
)
from tests.squid import Entry, Squid, require_squid

pytestmark = pytest.mark.timeout(180)

HOST = "pki.proxied.test"
PROXY_USER, PROXY_PASSWORD = "exporter", "pr0xy-Pa55-canary"


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """4 tenants of 1 CA each; parametrized (indirect) with 4, 4 CAs each, the 4th renewed:
    its older version's CRL is checked against that version's CA certificate, which the
    exporter downloads from the CDN too."""
    require_squid()
    simulator = Simulator.generate(
        seed=31,
        anchor=ANCHOR,
        tenants=4,
        cas=getattr(request, "param", 1),
        certificates=40,
        cdn_host=HOST,  # CRL and CA-certificate URLs name the host only Squid resolves
        clock=ANCHOR.timestamp,  # CRLs issued at the exporter's frozen now
    )
    simulator.start(url_host=HOST)
    simulator.start_imds()
    yield simulator
    simulator.close()


@pytest.fixture
def start_squid() -> Iterator[Callable[..., Squid]]:
    started: list[Squid] = []

    def start(**kwargs: Any) -> Squid:
        squid = Squid(names=(HOST,), **kwargs)
        started.append(squid)
        return squid.start()

    yield start
    for squid in started:
        squid.stop()


def tenant_up(samples: Samples) -> dict[str, float]:
    return {
        dict(k[1])["tenant"]: v for k, v in samples.items() if k[0] == "intune_cloudpki_tenant_up"
    }


def refreshed(samples: Samples, names: set[str]) -> bool:
    ok = {
        dict(k[1])["tenant"]
        for k, v in samples.items()
        if k[0] == "intune_cloudpki_refresh_success" and v == 1
    }
    return ok == names


def expected(sim: Simulator, names: dict[str, str]) -> Samples:
    """The ground truth of the tenants named (tenant id -> name)."""
    return {
        k: v
        for k, v in sim.expected_samples(now=ANCHOR, windows=WINDOWS, tenant_names=names).items()
        if dict(k[1]).get("tenant") in names.values() and k[0] in CERT_METRICS
    }


def certificate_samples(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0] in CERT_METRICS}


CRL_METRICS = (
    "intune_cloudpki_crl_fetch_success",
    "intune_cloudpki_crl_last_update_timestamp_seconds",
    "intune_cloudpki_crl_next_update_timestamp_seconds",
    "intune_cloudpki_crl_revoked_certificates",
    "intune_cloudpki_crl_size_bytes",
    "intune_cloudpki_leaf_certificates_revoked_unpublished",
)
CRL = {"allowed_hosts": [HOST], "interval": "1h"}
"""The exporter's crl config: the CDN's proxy-only name is the one host allowed."""


def crl_samples(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0] in CRL_METRICS}


def expected_crl(sim: Simulator, names: dict[str, str]) -> Samples:
    """The CRL ground truth of the tenants named (tenant id -> name)."""
    want = sim.expected_crl_samples(ANCHOR, tenant_names=names)
    return {
        (name, tuple(labels)): value
        for (name, labels), value in want.items()
        if dict(labels).get("tenant") in names.values()
    }


def crls_read(samples: Samples, sim: Simulator, names: dict[str, str]) -> bool:
    """Every CRL the tenants' CAs name has been read once (successfully or not)."""
    want = {k for k in expected_crl(sim, names) if k[0] == CRL_METRICS[0]}
    return bool(want) and want <= samples.keys()


def assert_exact(got: Samples, want: Samples) -> None:
    missing = {k: v for k, v in want.items() if k not in got}
    extra = {k: v for k, v in got.items() if k not in want}
    wrong = {k: (got[k], v) for k, v in want.items() if k in got and got[k] != v}
    assert (missing, extra, wrong) == ({}, {}, {})


def assert_cdn_saw_no_credential(sim: Simulator, *secrets: str) -> None:
    """No Authorization, no proxy credential, no secret in any request the CDN got."""
    assert sim.cdn_log, "the CDN saw nothing"
    for entry in sim.cdn_log:
        names = {name.lower() for name, _ in entry.headers}
        assert not names & {"authorization", "proxy-authorization", "cookie"}, entry
        text = repr(entry.headers)
        assert "Bearer" not in text and "eyJ" not in text, entry
        for secret in secrets:
            assert secret not in text, entry


def settled(squid: Squid, count: int = 1, timeout: float = 10.0) -> list[Entry]:
    """Squid's access log once it holds at least ``count`` lines and stops growing (a
    tunnel is logged when it closes, just after the exporter stops)."""
    deadline = time.monotonic() + timeout
    last: list[Entry] = []
    while time.monotonic() < deadline:
        entries = squid.requests()
        if len(entries) >= count and entries == last:
            return entries
        last = entries
        time.sleep(0.2)
    return last


@pytest.mark.parametrize("sim", [4], indirect=True)
def test_every_credential_type_goes_through_the_environments_proxy(
    sim: Simulator, start_squid: Callable[..., Squid], start_exporter: Any, tmp_path: Path
) -> None:
    """HTTPS_PROXY as curl reads it: secret, certificate, workload identity and managed
    identity all reach the tenant through Squid; the metadata endpoint (plain HTTP, with
    HTTP_PROXY set too) goes direct."""
    squid = start_squid()
    mi_t, secret_t, cert_t, wi_t = sim.tenants
    system = sim.imds.system_assigned()
    assert system is not None and system.tenant_id == mi_t.tenant_id
    token_file = tmp_path / "federated-token"
    token_file.write_text(sim.issue_federated_token(wi_t.tenant_id))
    entries = [
        {
            **tenant_config(sim, mi_t, "mi"),
            "credential": {"managed_identity": {}},
        },
        tenant_config(sim, secret_t, "secret"),
        tenant_config(
            sim,
            cert_t,
            "cert",
            credential={
                "certificate": {
                    "private_key_file": str(cert_t.key_file),
                    "certificate_file": str(cert_t.cert_file),
                }
            },
        ),
        tenant_config(
            sim, wi_t, "wi", credential={"workload_identity": {"token_file": str(token_file)}}
        ),
    ]
    del entries[0]["client_id"]
    cfg = write_config(tmp_path / "config.yaml", entries, refresh={"interval": "1m"}, crl=CRL)
    exporter = start_exporter(
        "--config.file",
        str(cfg),
        env={
            "SECRET_SECRET": secret_t.client_secret,
            "https_proxy": squid.url,
            "HTTP_PROXY": squid.url,
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": sim.imds.url,
        },
    )
    names = {t.tenant_id: n for t, n in zip(sim.tenants, ("mi", "secret", "cert", "wi"))}
    samples = exporter.wait_for(
        lambda s: refreshed(s, set(names.values())) and crls_read(s, sim, names),
        what="4 tenants and their CRLs",
    )
    assert certificate_samples(samples) == expected(sim, names)
    assert_exact(crl_samples(samples), expected_crl(sim, names))
    log_text = exporter.stop()
    assert "CRL read failed" not in log_text
    assert (
        'msg="outbound route" tenant=mi routes="managed identity endpoint direct (never through '
        f'a proxy), Graph {sim.url} via proxy {squid.url}"'
    ) in log_text

    proxied = [e for e in sim.log if e.endpoint != "imds"]
    assert {e.endpoint for e in proxied} >= {"openid_configuration", "token", "ca_list"}
    assert {e.tenant_id for e in proxied if e.endpoint == "ca_list"} == set(names)
    assert [e.status for e in sim.log if e.endpoint == "imds"] == [200]
    assert sim.cdn_url.startswith(f"http://{HOST}:")  # a name only Squid resolves
    cdn = sorted(("GET", f"{sim.cdn_url}{e.path}", e.status) for e in sim.cdn_log)
    assert {e.kind for e in sim.cdn_log} == {"crl", "cacert"}
    log = settled(squid, 1 + len(cdn))
    tunnels = {(e.method, e.url, e.status) for e in log if e.method == "CONNECT"}
    assert tunnels == {("CONNECT", f"{HOST}:{sim.port}", 200)}
    # A CRL over plain HTTP is a proxied GET (no tunnel), each one in Squid's log.
    assert sorted((e.method, e.url, e.status) for e in log if e.method != "CONNECT") == cdn
    assert_cdn_saw_no_credential(sim, *(t.client_secret for t in sim.tenants))


@pytest.mark.parametrize("sim", [4], indirect=True)
def test_proxy_authentication_through_a_tls_inspecting_proxy(
    sim: Simulator, start_squid: Callable[..., Squid], start_exporter: Any, tmp_path: Path
) -> None:
    """proxy_url with credentials from a file, through Squid re-signing every site with its
    own CA (the only one in ca_bundle): each request of the exporter is in Squid's log."""
    squid = start_squid(
        users={PROXY_USER: PROXY_PASSWORD}, inspect_tls=True, upstream_ca=sim.ca_bundle_path
    )
    assert squid.inspection_ca is not None
    credentials = tmp_path / "proxy-credentials"
    credentials.write_text(f"{PROXY_USER}:{PROXY_PASSWORD}\n")
    tenant = sim.tenants[1]
    entry = tenant_config(
        sim,
        tenant,
        "inspected",
        ca_bundle=str(squid.inspection_ca),
        proxy_url=squid.url,
        proxy_credentials_file=str(credentials),
    )
    cfg = write_config(tmp_path / "config.yaml", [entry], refresh={"interval": "1m"}, crl=CRL)
    exporter = start_exporter(
        "--config.file", str(cfg), env={"SECRET_INSPECTED": tenant.client_secret}
    )
    names = {tenant.tenant_id: "inspected"}
    samples = exporter.wait_for(
        lambda s: refreshed(s, {"inspected"}) and crls_read(s, sim, names),
        what="the tenant and its CRLs",
    )
    assert certificate_samples(samples) == expected(sim, names)
    assert_exact(crl_samples(samples), expected_crl(sim, names))
    log_text = exporter.stop()

    seen = [(e.method, e.path + (f"?{e.query}" if e.query else "")) for e in sim.log]
    cdn = [("GET", f"{sim.cdn_url}{e.path}") for e in sim.cdn_log]
    assert {e.kind for e in sim.cdn_log} == {"crl", "cacert"}
    log = settled(squid, len(seen) + len(cdn))
    origin = f"https://{HOST}:{sim.port}"
    bumped = [
        (e.method, e.url.removeprefix(origin))
        for e in log
        if e.method != "CONNECT" and e.url.startswith(origin)
    ]
    assert sorted(bumped) == sorted(seen)
    # The CRLs: plain proxied GETs (no CONNECT), authenticated like everything else.
    plain = [(e.method, e.url) for e in log if e.url.startswith(f"http://{HOST}:")]
    assert sorted(plain) == sorted(cdn)
    assert len(log) == len(seen) + len(cdn) + len([e for e in log if e.method == "CONNECT"])
    assert {e.user for e in log} == {PROXY_USER}
    assert all(e.status == 200 for e in log)
    assert PROXY_PASSWORD not in log_text
    assert_cdn_saw_no_credential(sim, PROXY_PASSWORD, tenant.client_secret)
    assert "failed" not in log_text and "retrying" not in log_text  # nothing failed


def test_an_https_proxy(
    sim: Simulator, start_squid: Callable[..., Squid], start_exporter: Any, tmp_path: Path
) -> None:
    """proxy_url https://: TLS to the proxy itself (its CA in ca_bundle), then CONNECT; a
    plain-HTTP CRL is a GET inside that TLS session to the proxy."""
    squid = start_squid(tls_listener=True)
    assert squid.url.startswith("https://127.0.0.1:") and squid.inspection_ca is not None
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(squid.inspection_ca.read_bytes() + sim.ca_bundle_path.read_bytes())
    tenant = sim.tenants[1]
    entry = tenant_config(sim, tenant, "tls", proxy_url=squid.url, ca_bundle=str(bundle))
    cfg = write_config(tmp_path / "config.yaml", [entry], refresh={"interval": "1m"}, crl=CRL)
    exporter = start_exporter("--config.file", str(cfg), env={"SECRET_TLS": tenant.client_secret})
    names = {tenant.tenant_id: "tls"}
    samples = exporter.wait_for(lambda s: refreshed(s, {"tls"}) and crls_read(s, sim, names))
    assert certificate_samples(samples) == expected(sim, names)
    assert_exact(crl_samples(samples), expected_crl(sim, names))
    log_text = exporter.stop()
    assert "CRL read failed" not in log_text
    assert (
        f'msg="outbound route" tenant=tls routes="token endpoint {sim.url} via proxy '
        f'{squid.url}, Graph {sim.url} via proxy {squid.url}"'
    ) in log_text
    cdn = {("GET", f"{sim.cdn_url}{e.path}", 200) for e in sim.cdn_log}
    assert len(cdn) == len(sim.cdn_log) == 1  # the tenant's one CRL
    log = settled(squid, 2)
    assert {(e.method, e.url, e.status) for e in log} == {
        ("CONNECT", f"{HOST}:{sim.port}", 200),
        *cdn,
    }
    assert_cdn_saw_no_credential(sim, tenant.client_secret)


def test_no_proxy_sends_a_host_direct(
    sim: Simulator, start_squid: Callable[..., Squid], start_exporter: Any, tmp_path: Path
) -> None:
    """The authority at 127.0.0.1 is in no_proxy: its discovery goes direct, while the
    token endpoint and Graph (under the proxy-only name) go through Squid."""
    squid = start_squid()
    tenant = sim.tenants[1]
    direct = f"https://127.0.0.1:{sim.port}"
    entry = tenant_config(
        sim,
        tenant,
        "split",
        authority_host=direct,
        proxy_url=squid.url,
        no_proxy=["127.0.0.1", ".corp.example"],
    )
    cfg = write_config(tmp_path / "config.yaml", [entry], refresh={"interval": "1m"})
    exporter = start_exporter("--config.file", str(cfg), env={"SECRET_SPLIT": tenant.client_secret})
    samples = exporter.wait_for(lambda s: refreshed(s, {"split"}))
    assert certificate_samples(samples) == expected(sim, {tenant.tenant_id: "split"})
    exporter.stop()
    assert any(e.path.endswith("/.well-known/openid-configuration") for e in sim.log)
    log = settled(squid)
    assert {(e.method, e.url) for e in log} == {("CONNECT", f"{HOST}:{sim.port}")}


def test_a_wrong_proxy_password_and_a_dead_proxy_name_the_proxy(
    sim: Simulator, start_squid: Callable[..., Squid], start_exporter: Any, tmp_path: Path
) -> None:
    squid = start_squid(users={PROXY_USER: PROXY_PASSWORD})
    dead = f"http://127.0.0.1:{free_port()}"
    wrong = "wr0ng-Pa55-canary"
    a, b = sim.tenants[1], sim.tenants[2]
    entries = [
        tenant_config(
            sim, a, "badpass", proxy_url=squid.url, proxy_credentials_env="CORP_PROXY_CREDENTIALS"
        ),
        tenant_config(sim, b, "deadproxy", proxy_url=dead),
    ]
    cfg = write_config(
        tmp_path / "config.yaml",
        entries,
        refresh={"interval": "10s", "timeout": "2s", "concurrency": 4},
    )
    env = {
        "SECRET_BADPASS": a.client_secret,
        "SECRET_DEADPROXY": b.client_secret,
        "CORP_PROXY_CREDENTIALS": f"{PROXY_USER}:{wrong}",
    }
    exporter = start_exporter("--config.file", str(cfg), env=env, wait_ready=False)

    authority = f"https://{HOST}:{sim.port}"
    want_badpass = (
        f'tenant=badpass reason=auth error="token: cannot set up the authority {authority}: '
        f"via proxy {squid.url}: 407 Proxy Authentication Required for {HOST}:{sim.port} (the "
        'proxy refused its credentials: check proxy_credentials_env / proxy_credentials_file)"'
    )
    want_dead = (
        f'tenant=deadproxy reason=network error="token: cannot set up the authority '
        f"{authority}: via proxy {dead}: cannot connect to the proxy: connection refused (is it "
        f'running? tried {authority}/{b.tenant_id}/v2.0/.well-known/openid-configuration)"'
    )
    exporter.wait_for(
        lambda s: (
            tenant_up(s) == {"badpass": 0, "deadproxy": 0}
            and want_badpass in exporter.log()
            and want_dead in exporter.log()
        ),
        timeout=60,
        what="both tenants down, told",
    )
    log_text = exporter.stop()
    assert want_badpass in log_text, log_text
    assert want_dead in log_text, log_text
    for secret in (wrong, PROXY_PASSWORD, a.client_secret, b.client_secret):
        assert secret not in log_text
    assert not [e for e in sim.log if e.endpoint != "imds"], "a request went past the proxy"


@pytest.fixture
def direct_sim() -> Iterator[Simulator]:
    """Graph and the token endpoint at 127.0.0.1, only the CDN under the proxy-only name."""
    require_squid()
    simulator = Simulator.generate(
        seed=31,
        anchor=ANCHOR,
        tenants=2,
        cas=1,
        certificates=40,
        cdn_host=HOST,
        clock=ANCHOR.timestamp,
    )
    simulator.start()
    yield simulator
    simulator.close()


def test_a_crl_read_refused_by_the_proxy_is_told_as_the_proxys_407(
    direct_sim: Simulator, start_squid: Callable[..., Squid], start_exporter: Any, tmp_path: Path
) -> None:
    """Token endpoint and Graph direct (127.0.0.1 in no_proxy), the CDN's proxy-only name
    through a Squid that refuses the password: the plain-HTTP CRL GET gets Squid's own 407,
    counted as http_4xx and told as the proxy's answer, not the CDN's; the CDN sees nothing."""
    sim = direct_sim
    squid = start_squid(users={PROXY_USER: PROXY_PASSWORD})
    wrong = "wr0ng-Pa55-canary"
    tenant = sim.tenants[1]
    direct = f"https://127.0.0.1:{sim.port}"
    entry = tenant_config(
        sim,
        tenant,
        "crlauth",
        authority_host=direct,
        graph_url=direct,
        proxy_url=squid.url,
        no_proxy=["127.0.0.1"],
        proxy_credentials_env="CORP_PROXY_CREDENTIALS",
    )
    cfg = write_config(tmp_path / "config.yaml", [entry], refresh={"interval": "1m"}, crl=CRL)
    env = {
        "SECRET_CRLAUTH": tenant.client_secret,
        "CORP_PROXY_CREDENTIALS": f"{PROXY_USER}:{wrong}",
    }
    exporter = start_exporter("--config.file", str(cfg), env=env)
    names = {tenant.tenant_id: "crlauth"}
    ((_, url),) = [
        (ca, t.url) for t in sim.expected_crls(ANCHOR) for ca in [t.ca_id] if ca == tenant.cas[0].id
    ]

    def failures(samples: Samples) -> dict[tuple[str, str], float]:
        return {
            (dict(k[1])["url"], dict(k[1])["reason"]): v
            for k, v in samples.items()
            if k[0] == "intune_cloudpki_crl_fetch_failures_total" and v
        }

    samples = exporter.wait_for(
        lambda s: refreshed(s, {"crlauth"}) and bool(failures(s)), what="the CRL read refused"
    )
    assert failures(samples) == {(url, "http_4xx"): 1.0}
    assert certificate_samples(samples) == expected(sim, names)
    success = [(k, v) for k, v in samples.items() if k[0] == CRL_METRICS[0]]
    assert [v for _, v in success] == [0.0]
    log_text = exporter.stop()
    hostport = url.removeprefix("http://").split("/", 1)[0]
    want = (
        f'reason=http_4xx error="via proxy {squid.url}: 407 Proxy Authentication Required for '
        f"{hostport} (the proxy refused its credentials: check proxy_credentials_env / "
        'proxy_credentials_file)"'
    )
    assert want in log_text, log_text
    assert sim.cdn_log == []
    log = settled(squid)
    assert {(e.method, e.url, e.status) for e in log} == {("GET", url, 407)}
    for secret in (wrong, PROXY_PASSWORD, tenant.client_secret):
        assert secret not in log_text


def test_a_crl_host_the_proxy_cannot_reach_is_told_via_the_proxy(
    direct_sim: Simulator, start_squid: Callable[..., Squid], start_exporter: Any, tmp_path: Path
) -> None:
    """The CDN is down: Squid answers the plain-HTTP GET with its own 503, which is retried
    (a 5xx), counted as http_5xx, and told with the proxy it came through."""
    sim = direct_sim
    squid = start_squid()
    tenant = sim.tenants[1]
    (url,) = [t.url for t in sim.expected_crls(ANCHOR) if t.ca_id == tenant.cas[0].id]
    sim.cdn.stop()
    direct = f"https://127.0.0.1:{sim.port}"
    entry = tenant_config(
        sim,
        tenant,
        "cdndown",
        authority_host=direct,
        graph_url=direct,
        proxy_url=squid.url,
        no_proxy=["127.0.0.1"],
    )
    cfg = write_config(tmp_path / "config.yaml", [entry], refresh={"interval": "1m"}, crl=CRL)
    exporter = start_exporter(
        "--config.file", str(cfg), env={"SECRET_CDNDOWN": tenant.client_secret}
    )
    hostport = url.removeprefix("http://").split("/", 1)[0]
    want = (
        f'reason=http_5xx error="via proxy {squid.url}: HTTP 503 Service Unavailable for '
        f'{hostport}"'
    )
    exporter.wait_for(lambda s: want in exporter.log(), what="the CRL read told")
    log_text = exporter.stop()
    assert log_text.count("CRL read failed") == 1, log_text
    log = settled(squid, 3)
    assert [(e.method, e.url, e.status) for e in log] == [("GET", url, 503)] * 3  # 3 tries


def test_online_check_prints_each_route_and_what_it_got(
    sim: Simulator, start_squid: Callable[..., Squid], tmp_path: Path
) -> None:
    squid = start_squid()
    dead = f"http://127.0.0.1:{free_port()}"
    a, b = sim.tenants[1], sim.tenants[2]
    behind = f"https://{HOST}:{free_port()}"  # Squid resolves it, nothing listens there
    entries = [
        tenant_config(sim, a, "viaproxy", proxy_url=squid.url),
        tenant_config(sim, b, "deadproxy", proxy_url=dead, no_proxy=["login.example"]),
        tenant_config(
            sim, b, "upstreamdown", proxy_url=squid.url, authority_host=behind, graph_url=behind
        ),
    ]
    cfg = write_config(
        tmp_path / "config.yaml",
        entries,
        refresh={"interval": "1m", "timeout": "5s", "concurrency": 4},
    )
    env = base_env(
        SECRET_VIAPROXY=a.client_secret,
        SECRET_DEADPROXY=b.client_secret,
        SECRET_UPSTREAMDOWN=b.client_secret,
    )
    result = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "--config.check.online", "--config.file", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    url = sim.url
    names = ", ".join(sorted(ca.display_name for ca in a.cas))
    assert result.stdout.splitlines()[1:] == [
        f"tenant viaproxy ({a.tenant_id}): routes: token endpoint {url} via proxy {squid.url}, "
        f"Graph {url} via proxy {squid.url}",
        f"tenant viaproxy ({a.tenant_id}): token OK, 1 CA visible: {names}",
        f"tenant deadproxy ({b.tenant_id}): routes: token endpoint {url} via proxy {dead}, "
        f"Graph {url} via proxy {dead}",
        f"error: tenant deadproxy ({b.tenant_id}): no token from {url}: cannot set up the "
        f"authority {url}: via proxy {dead}: cannot connect to the proxy: connection refused "
        f"(is it running? tried {url}/{b.tenant_id}/v2.0/.well-known/openid-configuration)",
        f"tenant upstreamdown ({b.tenant_id}): routes: token endpoint {behind} via proxy "
        f"{squid.url}, Graph {behind} via proxy {squid.url}",
        f"error: tenant upstreamdown ({b.tenant_id}): no token from {behind}: cannot set up "
        f"the authority {behind}: via proxy {squid.url}: 503 Service Unavailable for CONNECT "
        f"{behind.removeprefix('https://')}",
        "online: FAILED (2 of 3 tenants)",
    ], result.stdout + result.stderr
    assert result.returncode == 1
