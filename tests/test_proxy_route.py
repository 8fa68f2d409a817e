"""pki_exporter.outbound in-process: the route decision (proxy_url, no_proxy, the environment
as curl reads it), proxy credentials, and each failure told in one exact line."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from pki_simulator import Simulator

from pki_exporter import outbound
from pki_exporter.outbound import NoProxy, OutboundError, Route, describe_failure
from pki_exporter.runtime import logs
from tests.exporter_proc import base_env
from tests.inproc import CA_A, ca, one_tenant, tenant_config

PROXY = "http://proxy.corp:3128"


@pytest.fixture(scope="module")
def offline_sim() -> Iterator[Simulator]:
    """A simulator only for its URLs and CA bundle in configs (no test talks to it)."""
    sim = Simulator.from_spec(one_tenant(ca(CA_A, "A", 1)))
    sim.start()
    yield sim
    sim.close()


# -- no_proxy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "direct"),
    [
        ("corp.example", True),  # the domain itself
        ("pki.corp.example", True),  # and its subdomains
        ("a.b.corp.example", True),
        ("notcorp.example", False),  # a suffix of the name, not of a label
        ("vault.internal", True),  # exact host
        ("x.vault.internal", True),
        ("10.1.2.3", True),  # CIDR
        ("10.255.0.1", True),
        ("11.0.0.1", False),
        ("192.168.7.7", True),  # a lone IP
        ("192.168.7.8", False),
        ("[fd00::1]", True),  # IPv6 CIDR
        ("fe80::1", False),
        ("graph.microsoft.com", False),
        ("LOGIN.CORP.EXAMPLE.", True),  # case and the root dot do not matter
        ("host.with.port", True),  # an entry's port is ignored, as by curl
    ],
)
def test_no_proxy_matches_like_curl(host: str, direct: bool) -> None:
    rules = NoProxy.parse(
        [
            ".corp.example",
            "vault.internal",
            "10.0.0.0/8",
            "192.168.7.7",
            "fd00::/8",
            "host.with.port:8443",
        ]
    )
    assert rules.matches(host) is direct


def test_no_proxy_star_and_comma_strings() -> None:
    assert NoProxy.parse("*").matches("anything.example")
    rules = NoProxy.parse(" *.corp.example , 127.0.0.1 ,,")
    assert rules.matches("a.corp.example") and rules.matches("127.0.0.1")
    assert not rules.matches("127.0.0.2")


def test_config_check_validates_no_proxy_and_finds_the_proxy_credentials(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        """tenants:
  - name: contoso
    tenant_id: 00000000-0000-0000-0000-00000000000a
    client_id: 11111111-1111-1111-1111-11111111111b
    credential: {client_secret_env: PROXY_TEST_SECRET}
    proxy_url: http://proxy.corp:3128
    no_proxy: ".corp.example, *.ok.example, [::1]:443, 10.1.1.1:80, 10.0.0.0/8"
    proxy_credentials_env: PROXY_TEST_CREDENTIALS
  - name: fabrikam
    tenant_id: 00000000-0000-0000-0000-00000000000c
    client_id: 11111111-1111-1111-1111-11111111111d
    credential: {client_secret_env: PROXY_TEST_SECRET}
    no_proxy: ["http://x.example/", "10.0.0.0/33"]
  - name: woodgrove
    tenant_id: 00000000-0000-0000-0000-00000000000e
    client_id: 11111111-1111-1111-1111-11111111111f
    credential: {client_secret_env: PROXY_TEST_SECRET}
    proxy_credentials_file: /nonexistent/proxy-credentials
"""
    )
    env = base_env(PROXY_TEST_SECRET="not-a-real-secret")
    result = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "--config.check", "--config.file", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The file's own problems first (every one), then what lies outside the file, for each
    # tenant that is valid on its own.
    assert result.stdout.splitlines() + result.stderr.splitlines() == [
        f"error: {cfg}: tenants[1].no_proxy[0]: 'http://x.example/' is a URL; write the host "
        "alone (x.example)",
        f"error: {cfg}: tenants[1].no_proxy[1]: '10.0.0.0/33' is not a CIDR like 10.0.0.0/8",
        f"error: {cfg}: tenants[0].proxy_credentials_env: environment variable "
        "PROXY_TEST_CREDENTIALS is not set",
        f'error: {cfg}: tenants[2].proxy_credentials_file: cannot read "/nonexistent/proxy-'
        'credentials": No such file or directory',
        f"{cfg}: FAILED (4 problems)",
    ]
    assert result.returncode == 1


# -- the decision ------------------------------------------------------------------------


def test_proxy_url_with_no_proxy() -> None:
    route = Route(proxy=PROXY, no_proxy=(".corp.example",), environ={"HTTPS_PROXY": "http://env:1"})
    assert route.describe("https://graph.microsoft.com/beta") == f"via proxy {PROXY}"
    assert route.describe("http://crl.pki.azure.net/x.crl") == f"via proxy {PROXY}"
    assert route.describe("https://login.corp.example/t") == "direct"
    proxy = route.proxy_for("https://graph.microsoft.com/")
    assert proxy is not None and (proxy.url, proxy.source) == (PROXY, "proxy_url")


def test_the_environment_as_curl_reads_it() -> None:
    environ = {
        "https_proxy": "http://lower:3128",
        "HTTPS_PROXY": "http://upper:3128",
        "HTTP_PROXY": "plain:8080",  # no scheme: http, as curl
        "NO_PROXY": "internal.example",
    }
    route = Route(environ=environ)
    assert route.describe("https://graph.microsoft.com") == "via proxy http://lower:3128"
    assert route.describe("http://crl.example/a.crl") == "via proxy http://plain:8080"
    assert route.describe("https://x.internal.example") == "direct"
    assert Route(environ={"ALL_PROXY": "http://all:1"}).describe("https://a") == (
        "via proxy http://all:1"
    )
    assert (
        Route(environ={"no_proxy": "*", "HTTPS_PROXY": "http://p:1"}).describe("https://a")
        == "direct"
    )
    assert Route(environ={}).describe("https://graph.microsoft.com") == "direct"


def test_proxy_from_environment_false_and_proxy_url_ignore_the_environment(
    offline_sim: Simulator, tmp_path: Path
) -> None:
    sim_free = tenant_config(offline_sim, tmp_path, proxy_from_environment=False)
    environ = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "graph.example"}
    assert outbound.tenant_route(sim_free, environ).describe("https://graph.example") == "direct"
    with_url = tenant_config(offline_sim, tmp_path, proxy_url=PROXY)
    # the environment's NO_PROXY is the environment's: with proxy_url, no_proxy rules
    assert outbound.tenant_route(with_url, environ).describe("https://graph.example") == (
        f"via proxy {PROXY}"
    )
    from_env = tenant_config(offline_sim, tmp_path)
    assert outbound.tenant_route(from_env, environ).describe("https://login.example") == (
        "via proxy http://env:1"
    )


def test_an_unusable_environment_proxy_is_told_when_used() -> None:
    route = Route(environ={"HTTPS_PROXY": "socks5://p:1080"})
    assert route.describe("https://a") == (
        "unusable (HTTPS_PROXY: socks5 proxies are not supported (an http:// or https:// proxy is))"
    )
    with pytest.raises(OutboundError) as caught:
        route.proxy_for("https://a")
    assert str(caught.value) == (
        "HTTPS_PROXY: socks5 proxies are not supported (an http:// or https:// proxy is)"
    )


# -- credentials -------------------------------------------------------------------------


def test_credentials_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORP_PROXY", "svc-pki:p@ss:word/1")
    route = Route(proxy=PROXY, credentials_env="CORP_PROXY")
    proxy = route.proxy_for("https://graph.microsoft.com")
    assert proxy is not None
    assert (proxy.username, proxy.password) == ("svc-pki", "p@ss:word/1")
    assert proxy.url == PROXY
    assert proxy.with_credentials() == "http://svc-pki:p%40ss%3Aword%2F1@proxy.corp:3128"
    assert "p@ss" not in repr(proxy)
    assert logs.redact("x p@ss:word/1 y") == "x [REDACTED] y"

    path = tmp_path / "proxy-credentials"
    path.write_text("svc-pki:from-file\n")
    proxy = Route(proxy=PROXY, credentials_file=str(path)).proxy_for("https://a")
    assert proxy is not None and (proxy.username, proxy.password) == ("svc-pki", "from-file")


@pytest.mark.parametrize(
    ("env", "file", "content", "message"),
    [
        (
            "NO_SUCH_PROXY_VAR",
            None,
            None,
            "proxy credentials: environment variable NO_SUCH_PROXY_VAR is not set",
        ),
        (None, "missing", None, "proxy credentials: cannot read {path}: No such file or directory"),
        (None, "creds", "only-a-user\n", "proxy credentials: {path} does not hold user:password"),
    ],
)
def test_unreadable_credentials_are_auth_and_named(
    tmp_path: Path, env: str | None, file: str | None, content: str | None, message: str
) -> None:
    path = tmp_path / (file or "x")
    if content is not None:
        path.write_text(content)
    route = Route(proxy=PROXY, credentials_env=env, credentials_file=str(path) if file else None)
    assert route.describe("https://a") == f"via proxy {PROXY}"  # no I/O to describe
    with pytest.raises(OutboundError) as caught:
        route.proxy_for("https://a")
    assert (caught.value.reason, str(caught.value)) == ("auth", message.format(path=path))


def test_credentials_in_an_environment_url_are_never_shown() -> None:
    route = Route(environ={"HTTPS_PROXY": "http://bob:s3cr3t-proxy@proxy.corp:3128"})
    assert route.describe("https://a") == f"via proxy {PROXY}"
    proxy = route.proxy_for("https://a")
    assert proxy is not None and proxy.password == "s3cr3t-proxy"
    assert logs.redact("s3cr3t-proxy") == "[REDACTED]"


def test_the_routes_trust_adds_ca_bundle_to_the_system_roots(tmp_path: Path) -> None:
    sim = Simulator.from_spec(one_tenant(ca(CA_A, "A", 1)))
    try:
        plain = outbound.ssl_context(None).cert_store_stats()["x509_ca"]
        extra = outbound.ssl_context(str(sim.ca_bundle_path)).cert_store_stats()["x509_ca"]
    finally:
        sim.close()
    assert plain > 100  # certifi's roots (and the system's)
    assert extra == plain + 1


def test_a_replaced_ca_bundle_is_read_again(tmp_path: Path) -> None:
    """Contexts are shared per bundle, but a file rewritten (before a reload) counts anew."""
    from tests.squid import _make_ca

    _, first = _make_ca(tmp_path)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(first.read_bytes())
    before = outbound.ssl_context(str(bundle))
    assert outbound.ssl_context(str(bundle)) is before
    other = tmp_path / "other"
    other.mkdir()
    _, second = _make_ca(other)
    bundle.write_bytes(first.read_bytes() + second.read_bytes())
    after = outbound.ssl_context(str(bundle))
    assert after is not before
    assert after.cert_store_stats()["x509_ca"] == before.cert_store_stats()["x509_ca"] + 1


# -- failures told whole -----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_names_host_port_and_url() -> None:
    port = closed_port()
    url = f"https://127.0.0.1:{port}/beta/x"
    route = Route()
    with route.httpx_client() as client, pytest.raises(httpx.ConnectError) as caught:
        client.get(url)
    assert describe_failure(route, url, caught.value) == outbound.Failure(
        "network", f"connection refused by 127.0.0.1:{port} (tried {url})"
    )
    with pytest.raises(requests.ConnectionError) as by_requests:
        requests.get(url, timeout=5)
    assert describe_failure(route, url, by_requests.value) == outbound.Failure(
        "network", f"connection refused by 127.0.0.1:{port} (tried {url})"
    )


def test_a_dead_proxy_is_named() -> None:
    proxy = f"http://127.0.0.1:{closed_port()}"
    route = Route(proxy=proxy)
    url = "https://graph.example/beta"
    with route.httpx_client() as client, pytest.raises(httpx.ConnectError) as caught:
        client.get(url)
    assert describe_failure(route, url, caught.value).message == (
        f"via proxy {proxy}: cannot connect to the proxy: connection refused "
        f"(is it running? tried {url})"
    )


def test_an_unknown_certificate_names_ca_bundle(tmp_path: Path) -> None:
    sim = Simulator.from_spec(one_tenant(ca(CA_A, "A", 1)))
    sim.start()
    try:
        url = sim.url + "/beta"
        for route, hint in (
            (Route(), "add the CA that issued the server's certificate to ca_bundle"),
        ):
            with route.httpx_client() as client, pytest.raises(httpx.ConnectError) as caught:
                client.get(url)
            assert describe_failure(route, url, caught.value) == outbound.Failure(
                "network",
                f"TLS to 127.0.0.1:{sim.port}: certificate verify failed: unable to get local "
                f"issuer certificate ({hint})",
            )
        with Route(ca_bundle=str(sim.ca_bundle_path)).httpx_client() as client:
            assert client.get(sim.url + "/_simulator/").status_code == 200
    finally:
        sim.close()


@pytest.mark.parametrize(
    ("exc", "reason", "message"),
    [
        (
            httpx.ProxyError("407 Proxy Authentication Required"),
            "auth",
            f"via proxy {PROXY}: 407 Proxy Authentication Required for graph.example:443 (the "
            "proxy refused its credentials: check proxy_credentials_env / proxy_credentials_file)",
        ),
        (
            requests.exceptions.ProxyError(
                OSError("Tunnel connection failed: 503 Service Unavailable")
            ),
            "network",
            f"via proxy {PROXY}: 503 Service Unavailable for CONNECT graph.example:443",
        ),
        (
            httpx.ProxyError("403 Forbidden"),
            "network",
            f"via proxy {PROXY}: 403 Forbidden for CONNECT graph.example:443",
        ),
        (
            httpx.ReadTimeout("timed out"),
            "timeout",
            f"via proxy {PROXY}: timed out waiting for an answer from graph.example:443 "
            "(tried https://graph.example/beta)",
        ),
        (
            httpx.ConnectTimeout("timed out"),
            "timeout",
            f"via proxy {PROXY}: timed out connecting to graph.example:443 "
            "(tried https://graph.example/beta)",
        ),
    ],
)
def test_failures_at_the_proxy(exc: BaseException, reason: str, message: str) -> None:
    route = Route(proxy=PROXY)
    assert describe_failure(route, "https://graph.example/beta", exc) == outbound.Failure(
        reason, message
    )


def test_a_407_on_plain_http_is_the_proxys() -> None:
    route = Route(proxy=PROXY)
    failure = outbound.proxy_response_failure(
        route, "http://crl.example/a.crl", 407, "Proxy Authentication Required"
    )
    assert failure == outbound.Failure(
        "auth",
        f"via proxy {PROXY}: 407 Proxy Authentication Required for crl.example:80 (the proxy "
        "refused its credentials: check proxy_credentials_env / proxy_credentials_file)",
    )
    assert outbound.proxy_response_failure(Route(), "http://crl.example/", 407, "x") is None
    assert outbound.proxy_response_failure(route, "http://crl.example/", 404, "x") is None


def test_a_long_cause_is_kept_and_a_long_body_cut() -> None:
    cause = "x" * 40 + " the cause"
    assert outbound.one_line(f"  {cause}\n  second line ") == f"{cause} second line"
    long = "cause first: " + "body " * 300
    cut = outbound.one_line(long)
    assert cut.startswith("cause first: ") and cut.endswith("…") and len(cut) == 600


def test_the_url_tried_is_shown_without_its_query() -> None:
    port = closed_port()
    url = f"https://127.0.0.1:{port}/beta/x?$skiptoken=" + "a" * 900
    route = Route()
    with route.httpx_client() as client, pytest.raises(httpx.ConnectError) as caught:
        client.get(url)
    assert describe_failure(route, url, caught.value).message == (
        f"connection refused by 127.0.0.1:{port} (tried https://127.0.0.1:{port}/beta/x?…)"
    )


def test_online_check_describes_each_endpoints_route(
    offline_sim: Simulator, tmp_path: Path
) -> None:
    tenant = tenant_config(offline_sim, tmp_path, proxy_url=PROXY, no_proxy=["127.0.0.1"])
    route = outbound.tenant_route(tenant, {})
    assert outbound.describe_routes(tenant, route) == (
        f"token endpoint {tenant.authority_host} direct, Graph {tenant.graph_url} direct"
    )
    mi = tenant_config(
        offline_sim, tmp_path, proxy_url=PROXY, client_id=None, credential={"managed_identity": {}}
    )
    assert outbound.describe_routes(mi, outbound.tenant_route(mi, {})) == (
        "managed identity endpoint direct (never through a proxy), "
        f"Graph {mi.graph_url} via proxy {PROXY}"
    )
