"""CRL parse, fetch, read and coverage against real CRLs over a loopback HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from pki_exporter.config.model import CRLConfig
from pki_exporter.crl.fetch import Fetcher, crl_client, host_allowed
from pki_exporter.crl.model import CRLFailure, CRLInfo, Validators, serial_key
from pki_exporter.crl.parse import data_uri_bytes, load_certificate, parse_crl
from pki_exporter.crl.read import CACertificates, read_crl
from tests.crlutil import NOW, CRLServer, Route, crl_server, make_ca, make_crl

CA = make_ca("Contoso Issuing CA")
OTHER = make_ca("Contoso Issuing CA")  # same name, another key
SERIALS = [0x1, 0xABCDEF, 0x0F00000000000000000000000000000000000001]


def config(**overrides: object) -> CRLConfig:
    # 10 s unless a test is about timing out: a short timeout let a loaded machine's slow
    # answer time out and be retried, one request more than the tests count.
    values: dict[str, object] = {"timeout": 10.0, "allowed_hosts": ("127.0.0.1",)}
    values.update(overrides)
    return CRLConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[CRLServer]:
    with crl_server() as running:
        yield running


def fetcher(cfg: CRLConfig | None = None) -> Fetcher:
    cfg = cfg or config()
    return Fetcher(crl_client(None, cfg), cfg, backoff=0.0)


def failure_of(call: object, *args: object, **kwargs: object) -> tuple[str, str]:
    with pytest.raises(CRLFailure) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.reason, str(caught.value)


# -- parse --------------------------------------------------------------------------------


def test_a_der_crl_comes_to_its_dates_entries_size_and_serials() -> None:
    der = make_crl(CA, SERIALS)
    info = parse_crl(der, CA.certificate)
    assert info.this_update == (NOW - timedelta(hours=1)).timestamp()
    assert info.next_update == (NOW + timedelta(days=7)).timestamp()
    assert info.entries == 3
    assert info.size == len(der)
    assert info.serials == b"".join(serial_key(s) or b"" for s in sorted(SERIALS))
    assert info.serial_set() == {serial_key(s) for s in SERIALS}


def test_a_pem_crl_reads_like_the_der_one() -> None:
    pem = make_crl(CA, SERIALS, pem=True)
    info = parse_crl(pem, CA.certificate)
    assert (info.entries, info.size) == (3, len(pem))
    assert info.serial_set() == {serial_key(s) for s in SERIALS}


def test_an_empty_crl_has_no_entries() -> None:
    info = parse_crl(make_crl(CA), CA.certificate)
    assert (info.entries, info.serials) == (0, b"")


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        (make_crl(OTHER, SERIALS), "signature", "signature does not verify"),
        (make_crl(CA, SERIALS, issuer="Fabrikam CA"), "signature", "another name"),
        (
            make_crl(CA, SERIALS, signer=OTHER.key, issuer="Contoso Issuing CA"),
            "signature",
            "does not verify",
        ),
        (b"\x00garbage" * 10, "invalid", "not a CRL"),
        (b"", "invalid", "not a CRL"),
        (CA.der, "invalid", "not a CRL"),
        (b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n", "invalid", "not a CRL"),
    ],
    ids=[
        "other-key",
        "other-issuer",
        "signed-by-other",
        "garbage",
        "empty",
        "certificate",
        "bad-pem",
    ],
)
def test_a_crl_that_does_not_count_names_its_reason(data: bytes, reason: str, message: str) -> None:
    got_reason, got_message = failure_of(parse_crl, data, CA.certificate)
    assert got_reason == reason
    assert message in got_message


def test_the_ca_certificate_comes_from_a_data_uri_in_der_or_pem() -> None:
    assert data_uri_bytes(CA.data_uri) == CA.der
    assert load_certificate(data_uri_bytes(CA.data_uri)) == CA.certificate
    pem = CA.certificate.public_bytes(
        __import__(
            "cryptography.hazmat.primitives.serialization"
        ).hazmat.primitives.serialization.Encoding.PEM
    )
    assert load_certificate(pem) == CA.certificate
    assert failure_of(data_uri_bytes, "http://x/cert.cer")[0] == "invalid"
    assert failure_of(data_uri_bytes, "data:;base64,***")[0] == "invalid"
    assert failure_of(load_certificate, b"nope")[0] == "invalid"


def test_serials_compare_as_integers_whatever_graph_writes() -> None:
    from pki_exporter.aggregate.revocations import serial_bytes

    key = serial_key(0xABCDEF)
    for text in ("abcdef", "ABCDEF", "00ABCDEF", "000000abcDEF", "ab:cd:ef", "ab cd ef"):
        assert serial_bytes(text) == key, text
    for text in ("", "xyz", "-1", "1" * 41, None, 12):
        assert serial_bytes(text) is None, text


# -- the allow-list -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("primary-cdn.pki.azure.net", True),
        ("PRIMARY-CDN.PKI.AZURE.NET.", True),
        ("a.b.pki.azure.net", True),
        ("pki.azure.net", False),
        ("evilpki.azure.net", False),
        ("pki.azure.net.evil.example", False),
        ("crl.example", True),
        ("sub.crl.example", False),
        ("127.0.0.1", False),
        ("", False),
        (None, False),
    ],
)
def test_the_allow_list_matches_hosts_and_subdomains(host: str | None, allowed: bool) -> None:
    assert host_allowed(host, ("*.pki.azure.net", "crl.example")) is allowed


# -- fetch --------------------------------------------------------------------------------


def test_a_crl_is_fetched_without_any_credential(server: CRLServer) -> None:
    der = make_crl(CA, SERIALS)
    server.routes["/crls/current.crl"] = Route(der)
    download = fetcher().get(server.url("/crls/current.crl"))
    assert download.body == der
    [(path, headers)] = server.requests
    assert path == "/crls/current.crl"
    assert "authorization" not in headers
    assert "cookie" not in headers
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"].startswith("pki-exporter/")


@pytest.mark.parametrize(
    ("route", "reason", "tries"),
    [
        (Route(status=404), "http_4xx", 1),
        (Route(status=403), "http_4xx", 1),
        (Route(status=500), "http_5xx", 3),
        (Route(status=503), "http_5xx", 3),
        (Route(fault="reset"), "network", 3),
        (Route(fault="hang"), "timeout", 3),
        (Route(b"x" * 2048), "too_large", 1),
        (Route(status=302, headers={"Location": "/nowhere"}), "http_4xx", 2),
    ],
    ids=["404", "403", "500", "503", "reset", "hang", "oversize", "redirect-to-404"],
)
def test_each_failure_has_its_reason_and_only_transient_ones_are_retried(
    server: CRLServer, route: Route, reason: str, tries: int
) -> None:
    server.routes["/c.crl"] = route
    timeout = 0.2 if route.fault == "hang" else 10.0  # a hang costs 3 timeouts
    got, _ = failure_of(fetcher(config(max_size=1024, timeout=timeout)).get, server.url("/c.crl"))
    assert got == reason
    assert len(server.requests) == tries


def test_a_server_that_drips_is_cut_off_at_the_deadline(server: CRLServer) -> None:
    server.routes["/c.crl"] = Route(b"0123456789", fault="drip")
    assert failure_of(fetcher(config(timeout=0.3)).get, server.url("/c.crl"))[0] == "timeout"


def test_a_host_outside_the_allow_list_is_never_contacted(server: CRLServer) -> None:
    server.routes["/c.crl"] = Route(make_crl(CA))
    reason, message = failure_of(fetcher().get, server.url("/c.crl", host="localhost"))
    assert reason == "refused"
    assert "'localhost' is not in crl.allowed_hosts" in message
    for url in (
        "ftp://127.0.0.1/c.crl",
        "file:///etc/passwd",
        "http://u:p@127.0.0.1/c.crl",
        "http://[::1",
    ):
        assert failure_of(fetcher().get, url)[0] == "refused", url
    assert server.requests == []


def test_a_redirect_is_followed_only_to_an_allowed_host(server: CRLServer) -> None:
    der = make_crl(CA)
    server.routes["/moved.crl"] = Route(status=301, headers={"Location": "/c.crl"})
    server.routes["/away.crl"] = Route(
        status=302, headers={"Location": server.url("/c.crl", host="localhost")}
    )
    server.routes["/c.crl"] = Route(der)
    assert fetcher().get(server.url("/moved.crl")).body == der
    assert [p for p, _ in server.requests] == ["/moved.crl", "/c.crl"]
    assert failure_of(fetcher().get, server.url("/away.crl"))[0] == "refused"
    assert [p for p, _ in server.requests] == ["/moved.crl", "/c.crl", "/away.crl"]


def test_a_conditional_request_gets_a_304_that_keeps_the_last_result(server: CRLServer) -> None:
    der = make_crl(CA, SERIALS)
    server.routes["/c.crl"] = Route(
        der, etag='"v1"', headers={"Last-Modified": "Thu, 26 Nov 2026 11:00:00 GMT"}
    )
    first = fetcher().get(server.url("/c.crl"))
    assert first.body == der
    assert first.validators == Validators('"v1"', "Thu, 26 Nov 2026 11:00:00 GMT")
    again = fetcher().get(server.url("/c.crl"), first.validators)
    assert again.body is None
    assert server.requests[1][1]["if-none-match"] == '"v1"'
    assert server.requests[1][1]["if-modified-since"] == "Thu, 26 Nov 2026 11:00:00 GMT"
    assert "if-none-match" not in server.requests[0][1]


# -- read: fetch + CA certificate + parse -------------------------------------------------


def test_read_checks_the_crl_against_the_ca_certificate(server: CRLServer) -> None:
    f = fetcher()
    server.routes["/good.crl"] = Route(make_crl(CA, SERIALS))
    server.routes["/forged.crl"] = Route(make_crl(OTHER, SERIALS))
    server.routes["/garbage.crl"] = Route(b"garbage")
    certs = CACertificates(f)
    good = read_crl(
        f,
        certs,
        server.url("/good.crl"),
        ca_certificate=CA.data_uri,
        issuer_uri=None,
        validators=None,
    )
    assert isinstance(good.info, CRLInfo) and good.info.entries == 3
    for path, reason in (
        ("/forged.crl", "signature"),
        ("/garbage.crl", "invalid"),
        ("/none.crl", "http_4xx"),
    ):
        got = failure_of(
            read_crl,
            f,
            certs,
            server.url(path),
            ca_certificate=CA.data_uri,
            issuer_uri=None,
            validators=None,
        )
        assert got[0] == reason, path
    no_cert = failure_of(
        read_crl,
        f,
        certs,
        server.url("/good.crl"),
        ca_certificate=None,
        issuer_uri=None,
        validators=None,
    )
    assert no_cert == ("signature", "no CA certificate to check it against")


def test_another_versions_crl_is_checked_against_the_certificate_its_leaves_name(
    server: CRLServer,
) -> None:
    v1 = make_ca("Contoso Issuing CA")  # the renewed CA's first version: same name, old key
    v2 = make_ca("Contoso Issuing CA (V2.0)")
    server.routes["/v1/cert.cer"] = Route(v1.der)
    server.routes["/v1/current.crl"] = Route(make_crl(v1, [7]))
    f = fetcher()
    certs = CACertificates(f)
    result = read_crl(
        f,
        certs,
        server.url("/v1/current.crl"),
        ca_certificate=v2.data_uri,
        issuer_uri=server.url("/v1/cert.cer"),
        validators=None,
    )
    assert result.info is not None and result.info.serial_set() == {serial_key(7)}
    # Kept: a second read fetches the CRL only.
    read_crl(
        f,
        certs,
        server.url("/v1/current.crl"),
        ca_certificate=v2.data_uri,
        issuer_uri=server.url("/v1/cert.cer"),
        validators=None,
    )
    assert [p for p, _ in server.requests] == ["/v1/current.crl", "/v1/cert.cer", "/v1/current.crl"]
    # Without the issuer's certificate it does not verify against v2's.
    reason, _ = failure_of(
        read_crl,
        f,
        CACertificates(f),
        server.url("/v1/current.crl"),
        ca_certificate=v2.data_uri,
        issuer_uri=None,
        validators=None,
    )
    assert reason == "signature"


def test_a_ca_certificate_outside_the_allow_list_is_not_fetched(server: CRLServer) -> None:
    server.routes["/c.crl"] = Route(make_crl(CA))
    server.routes["/cert.cer"] = Route(CA.der)
    f = fetcher()
    reason, _ = failure_of(
        read_crl,
        f,
        CACertificates(f),
        server.url("/c.crl"),
        ca_certificate=server.url("/cert.cer", host="localhost"),
        issuer_uri=None,
        validators=None,
    )
    assert reason == "refused"
    assert [p for p, _ in server.requests] == ["/c.crl"]


def _unused(_: datetime) -> None:  # keep the import honest for type checkers
    pass
