"""Hypothesis: whatever bytes a CRL host serves, a read ends as a CRL or as one of the
spec's reasons, never as another exception (the fetcher is the boundary)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from pki_exporter.config.model import CRLConfig
from pki_exporter.crl.fetch import Fetcher, crl_client
from pki_exporter.crl.model import REASONS, CRLFailure
from pki_exporter.crl.parse import parse_crl
from pki_exporter.crl.read import CACertificates, read_crl
from tests.crlutil import CRLServer, Route, crl_server, make_ca, make_crl
from tests.fuzzing import fuzz_settings

CA = make_ca("Contoso Issuing CA")
GOOD = make_crl(CA, [1, 2, 0xABCDEF])
PEM = make_crl(CA, [3], pem=True)
SETTINGS = fuzz_settings(200, health_checks=list(HealthCheck))
CONFIG = CRLConfig(timeout=2.0, max_size=1 << 16, allowed_hosts=("127.0.0.1",))


@pytest.fixture(scope="module")
def server() -> Iterator[CRLServer]:
    with crl_server() as running:
        yield running


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real CRL, truncated, bit-flipped, spliced or extended; or any bytes at all."""
    base = bytearray(draw(st.sampled_from([GOOD, PEM])))
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "extend", "random"]))
    if kind == "truncate":
        return bytes(base[: draw(st.integers(0, len(base)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(base) - 1))
            base[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(base)
    if kind == "splice":
        i = draw(st.integers(0, len(base)))
        return bytes(base[:i]) + draw(st.binary(max_size=64)) + bytes(base[i:])
    if kind == "extend":
        return bytes(base) + draw(st.binary(min_size=1, max_size=64))
    return draw(st.binary(max_size=2048))


def _read(server: CRLServer, body: bytes) -> str:
    server.routes["/fuzz.crl"] = Route(body)
    fetcher = Fetcher(crl_client(None, CONFIG), CONFIG, backoff=0.0)
    try:
        read_crl(
            fetcher,
            CACertificates(fetcher),
            server.url("/fuzz.crl"),
            ca_certificate=CA.data_uri,
            issuer_uri=None,
            validators=None,
        )
    except CRLFailure as exc:
        assert exc.reason in REASONS
        return exc.reason
    finally:
        fetcher.close()
    return "ok"


@SETTINGS
@given(body=mutated())
def test_any_body_is_a_crl_or_a_reason(server: CRLServer, body: bytes) -> None:
    outcome = _read(server, body)
    if body in (GOOD, PEM):
        assert outcome == "ok"
    else:
        assert outcome in ("ok", "invalid", "signature")


@SETTINGS
@given(body=mutated())
def test_the_parser_alone_raises_nothing_but_its_reasons(body: bytes) -> None:
    try:
        info = parse_crl(body, CA.certificate)
    except CRLFailure as exc:
        assert exc.reason in ("invalid", "signature")
        return
    assert info.size == len(body)
    assert len(info.serials) % 20 == 0


@SETTINGS
@given(uri=st.text(max_size=200))
def test_any_ca_certificate_uri_is_a_certificate_or_a_reason(uri: str) -> None:
    fetcher = Fetcher(crl_client(None, CONFIG), CONFIG, backoff=0.0)
    try:
        CACertificates(fetcher).get("data:" + uri)
    except CRLFailure as exc:
        assert exc.reason in REASONS
    finally:
        fetcher.close()


@SETTINGS
@given(
    url=st.one_of(
        st.text(max_size=120),
        st.builds(lambda tail: "http://127.0.0.1:1/" + tail, st.text(max_size=60)),
        st.builds(lambda host: f"http://{host}/c.crl", st.text(max_size=40)),
    )
)
def test_any_url_is_a_download_or_a_reason(url: str) -> None:
    config = CRLConfig(timeout=2.0, allowed_hosts=("127.0.0.1",))
    fetcher = Fetcher(crl_client(None, config), config, backoff=0.0, attempts=1)
    try:
        fetcher.get(url)
    except CRLFailure as exc:
        assert exc.reason in REASONS
    finally:
        fetcher.close()
