"""CRL downloads on a proxied route, in-process: a plain-HTTP CRL through a proxy is a
forwarded GET (absolute URL, no CONNECT) that carries the proxy's credentials and nothing
else, and an answer that may be the proxy's own (407, 503) names the proxy.

The "proxy" is the loopback CRL server of tests/crlutil.py: a forwarding proxy receives the
request line ``GET http://host/path``, which the server records and answers by that URL.
The end-to-end twin, through a real Squid, is in tests/test_proxy_e2e.py."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki_exporter.config.model import CRLConfig
from pki_exporter.crl.fetch import Fetcher, crl_client
from pki_exporter.crl.model import CRLFailure
from pki_exporter.outbound import Route, status_text
from tests.crlutil import CRLServer, crl_server, make_ca, make_crl
from tests.crlutil import Route as Answer

CA = make_ca("Contoso Issuing CA")
CRL_URL = "http://crl.example/crls/current.crl"
USER, PASSWORD = "exporter", "crl-pr0xy-canary"


@pytest.fixture
def proxy() -> Iterator[CRLServer]:
    with crl_server() as running:
        yield running


def fetcher_via(proxy: CRLServer, tmp_path: Path, **route: object) -> Fetcher:
    credentials = tmp_path / "proxy-credentials"
    credentials.write_text(f"{USER}:{PASSWORD}\n")
    # 10 s: no test here times out; a shorter timeout let a loaded machine's slow first
    # answer time out and be retried, a second request where the tests count one.
    config = CRLConfig(timeout=10.0, allowed_hosts=("crl.example", "127.0.0.1"))
    way = Route(
        proxy=f"http://127.0.0.1:{proxy.port}",
        credentials_file=str(credentials),
        **route,  # type: ignore[arg-type]
    )
    return Fetcher(crl_client(way, config), config, route=way, backoff=0.0)


def failure_of(fetcher: Fetcher, url: str) -> tuple[str, str]:
    with pytest.raises(CRLFailure) as caught:
        fetcher.get(url)
    return caught.value.reason, str(caught.value)


def test_a_plain_http_crl_is_a_forwarded_get_with_the_proxys_credentials_only(
    proxy: CRLServer, tmp_path: Path
) -> None:
    der = make_crl(CA, [1, 2])
    proxy.routes[CRL_URL] = Answer(der)
    assert fetcher_via(proxy, tmp_path).get(CRL_URL).body == der
    [(target, headers)] = proxy.requests
    assert target == CRL_URL  # absolute form: forwarded by the proxy, not tunnelled
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert headers["proxy-authorization"] == f"Basic {basic}"
    assert "authorization" not in headers and "cookie" not in headers


def test_a_407_from_the_proxy_is_told_as_the_proxys_and_not_retried(
    proxy: CRLServer, tmp_path: Path
) -> None:
    proxy.routes[CRL_URL] = Answer(status=407, headers={"Proxy-Authenticate": 'Basic realm="x"'})
    assert failure_of(fetcher_via(proxy, tmp_path), CRL_URL) == (
        "http_4xx",
        f"via proxy http://127.0.0.1:{proxy.port}: 407 Proxy Authentication Required for "
        "crl.example:80 (the proxy refused its credentials: check proxy_credentials_env / "
        "proxy_credentials_file)",
    )
    assert len(proxy.requests) == 1


@pytest.mark.parametrize(
    ("status", "phrase", "reason", "tries"),
    [(503, "Service Unavailable", "http_5xx", 3), (403, "Forbidden", "http_4xx", 1)],
)
def test_any_other_status_through_a_proxy_names_the_proxy(
    proxy: CRLServer, tmp_path: Path, status: int, phrase: str, reason: str, tries: int
) -> None:
    """A proxy that cannot reach the CRL host answers 503 itself (Squid's ERR_CONNECT_FAIL),
    one whose policy forbids it 403: the line says which proxy the answer came through."""
    proxy.routes[CRL_URL] = Answer(status=status)
    assert failure_of(fetcher_via(proxy, tmp_path), CRL_URL) == (
        reason,
        f"via proxy http://127.0.0.1:{proxy.port}: HTTP {status} {phrase} for crl.example:80",
    )
    assert len(proxy.requests) == tries


def test_a_host_in_no_proxy_goes_direct_without_the_proxys_credentials(
    proxy: CRLServer, tmp_path: Path
) -> None:
    """The same server reached directly (127.0.0.1 in no_proxy): an origin-form request, no
    Proxy-Authorization, and a status told plainly."""
    fetcher = fetcher_via(proxy, tmp_path, no_proxy=("127.0.0.1",))
    proxy.routes["/c.crl"] = Answer(status=503)
    assert failure_of(fetcher, f"http://127.0.0.1:{proxy.port}/c.crl") == ("http_5xx", "HTTP 503")
    assert [target for target, _ in proxy.requests] == ["/c.crl"] * 3
    assert all("proxy-authorization" not in headers for _, headers in proxy.requests)


def test_status_text_names_the_proxy_only_when_there_is_one() -> None:
    assert status_text(Route(), CRL_URL, 502, "Bad Gateway") == "HTTP 502"
    assert (
        status_text(Route(proxy="http://proxy.corp:3128"), CRL_URL, 502, "Bad Gateway")
        == "via proxy http://proxy.corp:3128: HTTP 502 Bad Gateway for crl.example:80"
    )
    assert (
        status_text(Route(proxy="https://proxy.corp"), "https://crl.example:8443/a", 404, "")
        == "via proxy https://proxy.corp:443: HTTP 404 for crl.example:8443"
    )
