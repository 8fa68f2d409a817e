"""The simulated PKI: CA certificates, CRLs on the CDN listener, the schedule, a renewed CA,
conditional requests, the request log, and the revocation ground truth checked against a
client-side count over the Graph pages and the CRL bytes."""

from __future__ import annotations

import hashlib
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pki_simulator import CASpec, DatasetSpec, Fault, Simulator, TenantSpec
from pki_simulator.cli import describe
from pki_simulator.presets import DEMO_MISSING

from .crlclient import (
    client_crl_samples,
    data_uri_certificate,
    hex_int,
    load_crl,
    read_crl,
    valid_record,
)
from .helpers import ANCHOR, GraphClient, ManualClock, parse_date

NOW = ANCHOR.timestamp()
DAY = 86400
WEEK = 7 * DAY
HALF_WEEK = 302400


@pytest.fixture(scope="module")
def pki_sim() -> Iterator[Simulator]:
    """4 CAs (the 4th renewed: two versions) x 400 certificates, no quirks."""
    sim = Simulator.generate(
        seed=3, cas=4, certificates=400, page_size=150, anchor=ANCHOR, quirk_share=0.0,
        clock=ManualClock(NOW),
    )  # fmt: skip
    sim.start()
    yield sim
    sim.close()


@pytest.fixture
def psim(pki_sim: Simulator) -> Iterator[Simulator]:
    pki_sim.clock = ManualClock(NOW)
    pki_sim.faults.clear()
    pki_sim.clear_cdn_log()
    yield pki_sim
    pki_sim.faults.clear()
    pki_sim.clock = ManualClock(NOW)


@pytest.fixture
def pgraph(psim: Simulator) -> Iterator[GraphClient]:
    client = GraphClient(psim, psim.tenants[0])
    yield client
    client.close()


@pytest.fixture
def cdn() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


@pytest.fixture
def control(psim: Simulator) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=str(psim.ca_bundle_path))
    with httpx.Client(base_url=f"{psim.url}/_simulator", verify=context, trust_env=False) as c:
        yield c


def _revoked(records: list[Any], url: str | None = None) -> dict[int, float]:
    """serial -> revocation time of the records Graph shows revoked (naming ``url``)."""
    out: dict[int, float] = {}
    for record in records:
        if not valid_record(record) or record.get("certificateStatus") != "revoked":
            continue
        if url is not None and record.get("crlDistributionPointUrl") != url:
            continue
        serial, when = hex_int(record.get("serialNumber")), parse_date(record["revocationDateTime"])
        assert serial is not None and when is not None
        out[serial] = when
    return out


def _crl(cdn: httpx.Client, url: str) -> tuple[httpx.Response, x509.CertificateRevocationList]:
    response = cdn.get(url)
    assert response.status_code == 200, response.text
    crl = load_crl(response.content)
    assert crl is not None
    return response, crl


# --------------------------------------------------------------------------------------
# the CA resource and its certificate


def test_ca_resources_carry_real_certificates_and_cdn_urls(
    psim: Simulator, pgraph: GraphClient, cdn: httpx.Client
) -> None:
    cas = pgraph.list_cas()
    assert len(cas) == 4
    for ca in cas:
        cert = data_uri_certificate(ca["certificateDownloadUrl"])
        der = cert.public_bytes(Encoding.DER)
        assert ca["thumbprint"] == hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
        assert int(ca["serialNumber"], 16) == cert.serial_number
        assert ca["ocspResponderUri"] == ""
        assert ca["subjectName"] == cert.subject.rfc4514_string().replace(",", ", ")
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert basic.ca
        version = ca["versionNumber"]
        url = ca["certificateRevocationListUrl"]
        pattern = (
            rf"{re.escape(psim.cdn_url)}/centralus/crls/[0-9a-f]{{32}}/{ca['id']}_v{version}"
            r"/current\.crl"
        )
        assert re.fullmatch(pattern, url), url
        assert psim.cdn_url.startswith("http://127.0.0.1:")
        assert ca["certificationAuthorityIssuerUri"] == url.replace("/crls/", "/cacerts/").replace(
            "/current.crl", "/cert.cer"
        )
        response = cdn.get(ca["certificationAuthorityIssuerUri"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/pkix-cert"
        assert response.content == der
    assert [ca["versionNumber"] for ca in cas] == [1, 1, 1, 2]
    curves = [data_uri_certificate(ca["certificateDownloadUrl"]).public_key() for ca in cas]
    assert [getattr(key, "curve").name for key in curves] == [
        "secp256r1", "secp256r1", "secp384r1", "secp256r1"
    ]  # fmt: skip
    assert cas[2]["certificateKeySize"] == "eCP384"


def test_leaves_name_their_crl_and_write_serials_as_hex_text(
    psim: Simulator, pgraph: GraphClient
) -> None:
    serials: list[str] = []
    for ca in pgraph.list_cas()[:3]:
        for record in pgraph.leaves(ca["id"]):
            assert record["crlDistributionPointUrl"] == ca["certificateRevocationListUrl"]
            assert (
                record["certificationAuthorityIssuerUri"] == ca["certificationAuthorityIssuerUri"]
            )
            assert record["certificationAuthorityVersionNumber"] == 1
            assert (record["revocationDateTime"] is not None) == (
                record["certificateStatus"] == "revoked"
            )
            serials.append(record["serialNumber"])
    assert all(re.fullmatch(r"[0-9a-fA-F]{32}", s) for s in serials)
    lower = [s for s in serials if s != s.upper()]
    zeros = [s for s in serials if s.startswith("00")]
    assert lower and zeros  # only an integer comparison gets these right
    assert len(lower) + len(zeros) < len(serials) // 4


# --------------------------------------------------------------------------------------
# the CRL itself


def test_each_crl_is_signed_by_its_ca_and_lists_the_revoked_serials(
    psim: Simulator, pgraph: GraphClient, cdn: httpx.Client
) -> None:
    for ca in pgraph.list_cas()[:3]:
        cert = data_uri_certificate(ca["certificateDownloadUrl"])
        response, crl = _crl(cdn, ca["certificateRevocationListUrl"])
        assert response.headers["content-type"] == "application/pkix-crl"
        assert crl.issuer == cert.subject
        assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        revoked = _revoked(pgraph.leaves(ca["id"]))
        assert revoked
        assert {e.serial_number: e.revocation_date_utc.timestamp() for e in crl} == revoked
        # thisUpdate: the later of the last 3.5-day publication and the last revocation
        start = int(cert.not_valid_before_utc.timestamp())
        published = start + (int(NOW) - start) // HALF_WEEK * HALF_WEEK
        assert crl.last_update_utc.timestamp() == max(published, *revoked.values())
        assert crl.next_update_utc is not None
        assert crl.next_update_utc.timestamp() - crl.last_update_utc.timestamp() == WEEK


def test_the_schedule_follows_the_clock(
    psim: Simulator, pgraph: GraphClient, cdn: httpx.Client
) -> None:
    ca = pgraph.list_cas()[0]
    url = ca["certificateRevocationListUrl"]
    cert = data_uri_certificate(ca["certificateDownloadUrl"])
    start = int(cert.not_valid_before_utc.timestamp())
    revoked = len(_revoked(pgraph.leaves(ca["id"])))  # before the clock moves: tokens expire
    seen = []
    for hours in range(0, 10 * 24, 7):
        now = NOW + hours * 3600
        psim.clock = ManualClock(now)
        _, crl = _crl(cdn, url)
        this = crl.last_update_utc.timestamp()
        assert crl.next_update_utc is not None
        nxt = crl.next_update_utc.timestamp()
        assert this <= now and now - this < HALF_WEEK  # republished every 3.5 days
        assert nxt - now > HALF_WEEK  # a healthy CRL always has more than 3.5 days left
        if (this - start) % HALF_WEEK == 0:
            seen.append(this)
        assert len(crl) == revoked
    assert len(set(seen)) >= 2  # at least one republication in those 10 days


def test_conditional_requests(psim: Simulator, pgraph: GraphClient, cdn: httpx.Client) -> None:
    url = pgraph.list_cas()[1]["certificateRevocationListUrl"]
    first = cdn.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    _, crl = _crl(cdn, url)
    assert modified == formatdate(crl.last_update_utc.timestamp(), usegmt=True)
    assert cdn.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert cdn.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    older = formatdate(crl.last_update_utc.timestamp() - 1, usegmt=True)
    assert cdn.get(url, headers={"If-Modified-Since": older}).status_code == 200
    assert cdn.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    not_modified = cdn.get(url, headers={"If-None-Match": etag})
    assert not_modified.content == b"" and not_modified.headers["etag"] == etag
    # the next publication is another CRL: the old validators no longer match
    psim.clock = ManualClock(NOW + 4 * DAY)
    again = cdn.get(url, headers={"If-None-Match": etag, "If-Modified-Since": modified})
    assert again.status_code == 200 and again.headers["etag"] != etag
    assert again.content != first.content


def test_renewed_ca_serves_both_versions(
    psim: Simulator, pgraph: GraphClient, cdn: httpx.Client
) -> None:
    ca = pgraph.list_cas()[3]
    assert ca["versionNumber"] == 2
    records = pgraph.leaves(ca["id"])
    renewal = parse_date(ca["validityStartDateTime"])
    assert renewal is not None
    v2_url = ca["certificateRevocationListUrl"]
    assert v2_url.endswith(f"/{ca['id']}_v2/current.crl")
    v1_url = v2_url.replace("_v2/", "_v1/")
    by_version: dict[int, set[str]] = {1: set(), 2: set()}
    for record in records:
        start = parse_date(record["validityStartDateTime"])
        assert start is not None
        version = 1 if start < renewal else 2
        assert record["certificationAuthorityVersionNumber"] == version
        assert record["crlDistributionPointUrl"] == (v1_url if version == 1 else v2_url)
        by_version[version].add(record["certificationAuthorityIssuerUri"])
    assert len(by_version[1]) == len(by_version[2]) == 1
    v1_aia = by_version[1].pop()
    assert v1_aia.endswith(f"/cacerts/{v2_url.split('/')[-3]}/{ca['id']}_v1/cert.cer")
    v1_cert = x509.load_der_x509_certificate(cdn.get(v1_aia).content)
    v2_cert = data_uri_certificate(ca["certificateDownloadUrl"])
    assert v1_cert.public_key() != v2_cert.public_key()
    assert v1_cert.subject == v2_cert.subject
    _, v1_crl = _crl(cdn, v1_url)
    _, v2_crl = _crl(cdn, v2_url)
    assert v1_crl.is_signature_valid(v1_cert.public_key())  # type: ignore[arg-type]
    assert not v1_crl.is_signature_valid(v2_cert.public_key())  # type: ignore[arg-type]
    assert v2_crl.is_signature_valid(v2_cert.public_key())  # type: ignore[arg-type]
    assert {e.serial_number for e in v1_crl} == set(_revoked(records, v1_url))
    assert {e.serial_number for e in v2_crl} == set(_revoked(records, v2_url))
    assert len(v1_crl) and len(v2_crl)
    # both named: some v1 certificates are still valid
    named = [t for t in psim.expected_crls(NOW) if t.ca_id == ca["id"]]
    assert [(t.version, t.named, t.current) for t in named] == [(1, True, False), (2, True, True)]


def test_unknown_paths_are_404_and_every_header_is_logged(
    psim: Simulator, pgraph: GraphClient, cdn: httpx.Client
) -> None:
    url = pgraph.list_cas()[0]["certificateRevocationListUrl"]
    assert cdn.post(url).status_code == 405
    psim.clear_cdn_log()
    assert cdn.get(psim.cdn_url + "/centralus/crls/nothing/current.crl").status_code == 404
    assert cdn.get(url, headers={"X-Probe": "probe-1"}).status_code == 200
    cdn.get(url, headers={"Authorization": "Bearer not-a-real-token"})
    entries = psim.cdn_log
    assert [(e.kind, e.status) for e in entries] == [("other", 404), ("crl", 200), ("crl", 200)]
    assert entries[1].header("x-probe") == "probe-1"
    assert entries[1].header("authorization") is None
    assert entries[1].ca_id == pgraph.list_cas()[0]["id"] and entries[1].version == 1
    # the log would show a credential if one were sent: that is what makes it a proof
    assert entries[2].header("Authorization") == "Bearer not-a-real-token"
    assert psim.tenants[0].client_secret not in repr(entries[:2])


# --------------------------------------------------------------------------------------
# faults


def _add(control: httpx.Client, **fields: Any) -> str:
    response = control.post("/faults", json=fields)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_crl_faults_switch_through_the_control_api(
    psim: Simulator, pgraph: GraphClient, cdn: httpx.Client, control: httpx.Client
) -> None:
    cas = pgraph.list_cas()
    ca = cas[0]
    url = ca["certificateRevocationListUrl"]
    cert = data_uri_certificate(ca["certificateDownloadUrl"])
    healthy, healthy_crl = _crl(cdn, url)
    revoked = _revoked(pgraph.leaves(ca["id"]))

    def only(**fields: Any) -> str:
        control.delete("/faults")
        return _add(control, ca_id=ca["id"], **fields)

    # stale: lapsed a day before the fault was added (the clock is NOW)
    only(kind="crl_stale")
    _, crl = _crl(cdn, url)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc.timestamp() == NOW - DAY
    assert crl.last_update_utc.timestamp() == NOW - DAY - WEEK
    assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    assert {e.serial_number for e in crl} == {s for s, t in revoked.items() if t <= NOW - 8 * DAY}
    # a missed publication: two days left
    only(kind="crl_stale", next_update_in=2 * DAY)
    _, crl = _crl(cdn, url)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc.timestamp() == NOW + 2 * DAY
    # revocations missing
    only(kind="crl_missing", count=2)
    _, crl = _crl(cdn, url)
    gone = set(revoked) - {e.serial_number for e in crl}
    assert len(gone) == 2 and len(crl) == len(revoked) - 2
    rows = psim.expected_unpublished(NOW, ca["id"])
    assert {int(str(r["serial_number"]), 16) for r in rows} == gone
    # another key, another issuer
    only(kind="crl_foreign_key")
    _, crl = _crl(cdn, url)
    assert crl.issuer == cert.subject
    assert not crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    only(kind="crl_foreign_issuer")
    _, crl = _crl(cdn, url)
    assert crl.issuer != cert.subject
    assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    # oversize, garbage, PEM
    only(kind="crl_oversize", size=40_000)
    response, crl = _crl(cdn, url)
    assert len(response.content) > 40_000 and len(crl) > len(revoked)
    assert crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    only(kind="crl_garbage")
    response = cdn.get(url)
    assert response.status_code == 200 and load_crl(response.content) is None
    only(kind="crl_pem")
    response, crl = _crl(cdn, url)
    assert response.content.startswith(b"-----BEGIN X509 CRL-----")
    assert crl.public_bytes(Encoding.DER) == healthy.content
    # transport: 404, 500 (once), reset, hang
    only(kind="crl_error")
    assert cdn.get(url).status_code == 404
    only(kind="crl_error", status=500, times=1)
    assert cdn.get(url).status_code == 500
    assert cdn.get(url).content == healthy.content  # times=1: consumed
    only(kind="crl_reset")
    with pytest.raises(httpx.TransportError):
        cdn.get(url)
    only(kind="crl_hang", delay=30)
    with pytest.raises(httpx.TimeoutException):
        cdn.get(url, timeout=0.3)
    control.delete("/faults")
    assert cdn.get(url).content == healthy.content
    # the other CAs were never touched
    for other in cas[1:3]:
        assert load_crl(cdn.get(other["certificateRevocationListUrl"]).content) is not None
    assert healthy_crl is not None
    faults = [e.fault for e in psim.cdn_log if e.kind == "crl"]
    for kind in ("crl_stale", "crl_missing", "crl_garbage", "crl_pem", "crl_error", "crl_reset"):
        assert kind in faults


def test_version_filter_hits_one_crl_of_a_renewed_ca(
    psim: Simulator, pgraph: GraphClient, cdn: httpx.Client, control: httpx.Client
) -> None:
    ca = pgraph.list_cas()[3]
    v2 = ca["certificateRevocationListUrl"]
    v1 = v2.replace("_v2/", "_v1/")
    _add(control, kind="crl_error", ca_id=ca["id"], version=1, status=503)
    assert cdn.get(v1).status_code == 503
    assert cdn.get(v2).status_code == 200


def test_bad_crl_faults_are_refused(control: httpx.Client) -> None:
    for fields, word in (
        ({"kind": "crl_missing", "times": 2}, "no times"),
        ({"kind": "crl_missing", "count": 0}, "count"),
        ({"kind": "crl_stale", "size": 10}, "size"),
        ({"kind": "throttle", "version": 1}, "version"),
        ({"kind": "crl_oversize", "size": "big"}, "size"),
    ):
        response = control.post("/faults", json=fields)
        assert response.status_code == 400, fields
        assert word in response.json()["error"]


# --------------------------------------------------------------------------------------
# ground truth


def _leaves(graph: GraphClient, cas: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {ca["id"]: graph.leaves(ca["id"]) for ca in cas}


def test_ground_truth_equals_a_client_side_count(
    psim: Simulator, pgraph: GraphClient, cdn: httpx.Client, control: httpx.Client
) -> None:
    cas = pgraph.list_cas()
    leaves = _leaves(pgraph, cas)
    now = NOW + 3 * 3600
    psim.clock = ManualClock(now)
    last_good: dict[str, Any] = {}
    healthy, none_missing = client_crl_samples(
        cdn, "contoso", cas, leaves, now, last_good=last_good
    )
    assert healthy == psim.expected_crl_samples(now)
    assert all(not rows for rows in none_missing.values())
    assert len([k for k in healthy if k[0] == "intune_cloudpki_crl_fetch_success"]) == 5
    # faults: revocations missing on CA 1, a 500 on CA 2 (last good values kept), a CRL
    # of another key on the renewed CA's first version, PEM on its second
    _add(control, kind="crl_missing", ca_id=cas[0]["id"], count=3)
    _add(control, kind="crl_error", ca_id=cas[1]["id"], status=500)
    _add(control, kind="crl_foreign_key", ca_id=cas[3]["id"], version=1)
    _add(control, kind="crl_pem", ca_id=cas[3]["id"], version=2)
    got, missing = client_crl_samples(cdn, "contoso", cas, leaves, now, last_good=last_good)
    want = psim.expected_crl_samples(now)
    assert got == want
    unpublished = {k[1][1][1]: v for k, v in want.items() if k[0].endswith("_unpublished")}
    assert unpublished[cas[0]["id"]] == 3.0
    assert unpublished[cas[3]["id"]] == 0.0  # its v1 CRL is unreadable: the last good one counts
    for ca in cas:
        rows = psim.expected_unpublished(now, ca["id"])
        assert [r["serial_number"] for r in rows] == missing[ca["id"]]
    reasons = {(t.ca_id, t.version): t.reason for t in psim.expected_crls(now)}
    assert reasons == {
        (cas[0]["id"], 1): None,
        (cas[1]["id"], 1): "http_5xx",
        (cas[2]["id"], 1): None,
        (cas[3]["id"], 1): "signature",
        (cas[3]["id"], 2): None,
    }
    # a grace longer than the missing revocations' age hides them
    oldest = min(r["revoked_timestamp"] for r in psim.expected_unpublished(now, cas[0]["id"]))
    assert isinstance(oldest, float)
    longer = psim.expected_crl_samples(now, grace=now - oldest + 1)
    assert sum(v for k, v in longer.items() if k[0].endswith("_unpublished")) == 0.0


def test_truth_of_every_fault(psim: Simulator, pgraph: GraphClient, control: httpx.Client) -> None:
    ca = pgraph.list_cas()[2]
    expected = {
        "crl_stale": None,
        "crl_missing": None,
        "crl_foreign_key": "signature",
        "crl_foreign_issuer": "signature",
        "crl_garbage": "invalid",
        "crl_pem": None,
        "crl_error": "http_4xx",
        "crl_hang": "timeout",
        "crl_reset": "network",
    }
    healthy = next(t for t in psim.expected_crls(NOW) if t.ca_id == ca["id"])
    for kind, reason in expected.items():
        control.delete("/faults")
        _add(control, kind=kind, ca_id=ca["id"])
        truth = next(t for t in psim.expected_crls(NOW) if t.ca_id == ca["id"])
        assert (truth.reason, truth.fetch_success) == (reason, 0 if reason else 1), kind
        if reason is not None:
            assert truth.kept == healthy.kept  # the last good values survive
    control.delete("/faults")
    _add(control, kind="crl_oversize", ca_id=ca["id"], size=20_000)
    big = next(t for t in psim.expected_crls(NOW, max_size=20_000) if t.ca_id == ca["id"])
    assert big.reason == "too_large" and big.kept == healthy.kept
    assert big.served is not None and big.served.size_bytes > 20_000
    roomy = next(t for t in psim.expected_crls(NOW, max_size=1 << 20) if t.ca_id == ca["id"])
    assert roomy.reason is None and roomy.kept == roomy.served


def test_crl_truth_over_http(psim: Simulator, control: httpx.Client) -> None:
    body = control.get("/crls", params={"now": str(NOW), "grace": "3600"}).json()
    assert body["now"] == NOW and body["grace"] == 3600.0
    assert [c["url"] for c in body["crls"]] == [t.url for t in psim.expected_crls(NOW)]
    samples = {(s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in body["samples"]}
    assert samples == psim.expected_crl_samples(NOW, grace=3600)
    assert set(body["unpublished"]) == {ca.spec.id for ca in psim.visible_cas()}
    assert control.get("/crls", params={"grace": "-1"}).status_code == 400
    log = control.get("/cdn-log").json()["entries"]
    assert isinstance(log, list)
    assert control.delete("/cdn-log").json() == {"cleared": True}
    info = control.get("/info").json()
    assert info["cdn_url"] == psim.cdn_url


def test_quirky_data_set_truth_equals_the_client_count() -> None:
    """Quirks (unreadable records, statuses changed, serials removed) change what Graph
    shows, never what the CA revoked: the CRLs stay complete, the truth stays exact."""
    clock = ManualClock(NOW)
    with Simulator.generate(
        seed=9, cas=4, certificates=500, page_size=200, anchor=ANCHOR, quirk_share=0.08,
        clock=clock,
    ) as sim, httpx.Client(trust_env=False, timeout=10) as cdn:  # fmt: skip
        graph = GraphClient(sim, sim.tenants[0])
        try:
            cas = graph.list_cas()
            leaves = _leaves(graph, cas)
            sim.faults.add(Fault(kind="crl_missing", count=4))
            got, missing = client_crl_samples(cdn, "contoso", cas, leaves, NOW)
            assert got == sim.expected_crl_samples(NOW)
            assert sum(len(m) for m in missing.values()) > 0
        finally:
            graph.close()


# --------------------------------------------------------------------------------------
# presets, command line, a big CRL


def test_demo_preset_shows_one_fault() -> None:
    with Simulator.demo(certificates=600, anchor=ANCHOR, clock=ManualClock(NOW)) as sim:
        samples = sim.expected_crl_samples(NOW)
        unpublished = [v for k, v in sorted(samples.items()) if k[0].endswith("_unpublished")]
        second = sim.dataset.all_cas()[1].spec.id
        by_ca = {
            dict(k[1])["ca_id"]: v for k, v in samples.items() if k[0].endswith("_unpublished")
        }
        assert by_ca.pop(second) == DEMO_MISSING
        assert set(by_ca.values()) == {0.0} and len(unpublished) == 4
        success = [v for k, v in samples.items() if k[0] == "intune_cloudpki_crl_fetch_success"]
        assert success == [1.0] * 5  # four CAs, the renewed one with two CRLs
        text = describe(sim)
        assert f"CDN URL:        {sim.cdn_url}" in text
        assert 'crl: {allowed_hosts: ["127.0.0.1"]}' in text


def test_cdn_host_names_the_urls() -> None:
    with Simulator.generate(cas=1, certificates=20, anchor=ANCHOR, cdn_host="localhost") as sim:
        url = sim.dataset.all_cas()[0].record()["certificateRevocationListUrl"]
        assert url.startswith(f"http://localhost:{sim.cdn_url.rsplit(':', 1)[1]}/centralus/crls/")
        with httpx.Client(trust_env=False, timeout=10) as cdn:
            assert load_crl(cdn.get(url).content) is not None


def test_a_ca_of_revoked_certificates_only() -> None:
    """How the benchmark's 100,000-entry CRL is made (here with 3,000)."""
    spec = DatasetSpec(
        seed=1,
        anchor=ANCHOR,
        tenants=(
            TenantSpec(
                tenant_id="6f1c2b8e-0d4a-4c1e-9a57-3b2f0c9d8e71",
                client_id="0b7e5c3a-9f2d-4e8b-a1c6-5d4f3e2a1b09",
                name="contoso",
                cas=(
                    CASpec(
                        id="4a3b2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d",
                        display_name="Revoked CA",
                        certificates=3000,
                        status_shares=(("revoked", 1.0),),
                    ),
                ),
            ),
        ),
    )
    with Simulator(spec, clock=ManualClock(NOW)) as sim, httpx.Client(trust_env=False) as cdn:
        ca = sim.dataset.all_cas()[0]
        crl = load_crl(cdn.get(ca.crl_url).content)
        assert crl is not None and len(crl) == 3000
        truth = sim.expected_crls(NOW)[0]
        assert truth.kept.revoked_certificates == 3000
        assert read_crl(cdn, ca.crl_url, x509.load_der_x509_certificate(ca.versions()[1].der)).ok


def _lines_until(process: subprocess.Popen[str], marker: str, deadline: float) -> list[str]:
    """stdout lines up to ``marker``, read by a thread so that a silent process cannot
    hang the test past ``deadline`` seconds."""
    found: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            found.put(line.rstrip("\n"))
        found.put(None)

    threading.Thread(target=pump, daemon=True).start()
    lines: list[str] = []
    while True:
        line = found.get(timeout=deadline)
        if line is None:
            raise AssertionError("simulator exited early:\n" + "\n".join(lines))
        lines.append(line)
        if marker in line:
            return lines


def test_the_command_serves_the_demo_preset_on_a_named_cdn_host() -> None:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "pki_simulator", "--preset", "demo", "--certificates", "60",
            "--anchor", "2025-06-01T12:00:00Z", "--cdn-host", "localhost",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        lines = _lines_until(process, "Serving until interrupted", 120)
        cdn_url = next(line.split()[2] for line in lines if line.startswith("CDN URL:"))
        assert cdn_url.startswith("http://localhost:")
        assert 'CRL allow-list: crl: {allowed_hosts: ["localhost"]}' in "\n".join(lines)
        assert any(line.startswith("Faults: crl_missing(") for line in lines)
        graph_url = next(line.split()[2] for line in lines if line.startswith("Graph URL:"))
        bundle = next(line.split()[2] for line in lines if line.startswith("CA bundle:"))
        context = ssl.create_default_context(cafile=bundle)
        with httpx.Client(verify=context, trust_env=False, timeout=30) as control:
            truth = control.get(
                f"{graph_url}/_simulator/crls", params={"now": "2025-06-01T13:00:00Z"}
            ).json()
        with httpx.Client(trust_env=False, timeout=30) as client:
            assert client.get(cdn_url + "/centralus/crls/x/current.crl").status_code == 404
            urls = [c["url"] for c in truth["crls"]]
            assert len(urls) == 5 and all(u.startswith(cdn_url + "/centralus/crls/") for u in urls)
            for url in urls:
                assert load_crl(client.get(url).content) is not None
        unpublished = [len(rows) for rows in truth["unpublished"].values()]
        assert unpublished == [0, DEMO_MISSING, 0, 0]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0
