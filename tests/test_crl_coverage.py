"""The revocation fold, the coverage check, the Store's CRL states, the CRL families and
the CRL reader, with real CRLs served over loopback HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pki_exporter.aggregate.certificates import Fold
from pki_exporter.aggregate.revocations import MAX_CRLS, NO_CRL, RevocationFold
from pki_exporter.crl.coverage import coverage
from pki_exporter.crl.model import CRLFailure, serial_key
from pki_exporter.crl.parse import parse_crl
from pki_exporter.crl_reader import CRLReader
from pki_exporter.graph.records import CARecord, LeafRecord
from pki_exporter.metrics.collector import PREFIX, ExporterCollector
from pki_exporter.runtime import clock
from pki_exporter.state import CASnapshot, Store
from tests.crlutil import NOW, Route, crl_server, make_ca, make_crl

T = NOW.timestamp()
HOUR = 3600.0
CA = make_ca("Contoso Issuing CA")
CA_ID = "0a000000-0000-4000-8000-00000000000a"
URL = "http://primary-cdn.pki.azure.net/eu/crls/ab/x_v1/current.crl"
URL2 = "http://primary-cdn.pki.azure.net/eu/crls/cd/x_v2/current.crl"


def leaf(
    serial: str,
    *,
    status: str = "revoked",
    revoked: datetime | str | None = NOW - timedelta(days=1),
    end: datetime = NOW + timedelta(days=100),
    url: Any = URL,
    issuer: Any = None,
    thumbprint: Any = None,
    device: str | None = None,
) -> LeafRecord:
    return LeafRecord(
        validityStartDateTime=NOW - timedelta(days=200),
        validityEndDateTime=end,
        certificateStatus=status,
        deviceId=device,
        serialNumber=serial,
        thumbprint=thumbprint,
        crlDistributionPointUrl=url,
        certificationAuthorityIssuerUri=issuer,
        revocationDateTime=revoked.isoformat() if isinstance(revoked, datetime) else revoked,
    )


def test_the_fold_names_the_cas_crl_first_then_the_most_named_at_most_eight() -> None:
    fold = RevocationFold(T, URL)
    records = [
        leaf("01", status="active", url=f"http://c{i}.pki.azure.net/x.crl")
        for i in range(12)
        for _ in range(i + 1)
    ]
    records += [
        leaf(
            "02", status="active", url="http://old.pki.azure.net/x.crl", end=NOW - timedelta(days=1)
        )
    ]
    records += [
        leaf("03", status="active", url=URL2, issuer="http://aia.pki.azure.net/v1.cer")
    ] * 50
    fold.add(records)
    result = fold.result()
    assert len(result.crl_urls) == MAX_CRLS
    assert result.crl_urls == (
        URL,
        URL2,
        *(f"http://c{i}.pki.azure.net/x.crl" for i in (11, 10, 9, 8, 7, 6)),
    )
    assert result.issuer_uris == (None, "http://aia.pki.azure.net/v1.cer", *([None] * 6))
    assert len(result) == 0  # no revoked certificate


def test_the_fold_keeps_revoked_unexpired_certificates_in_columns() -> None:
    fold = RevocationFold(T, URL)
    fold.add(
        [
            leaf("00ABcdef", thumbprint="aa" * 20, device="0b000000-0000-4000-8000-00000000000b"),
            leaf("1", url=None, thumbprint="not-hex", device="not-a-guid"),
            leaf("5", revoked=None),  # no revocation time: the grace cannot apply
            leaf("6", revoked="not a date"),
            leaf("2", end=NOW - timedelta(seconds=1)),  # expired: left out
            leaf("zz"),  # unreadable serial: cannot be checked
            leaf("3", status="active"),
            leaf("4", url="http://elsewhere.example/x.crl"),
        ]
    )
    result = fold.result()
    assert len(result) == 3
    first, second, third = (result.certificate(i) for i in range(3))
    assert first.serial == "ABCDEF"
    assert first.thumbprint == "AA" * 20
    assert first.device_id == "0b000000-0000-4000-8000-00000000000b"
    assert first.revoked_at == (NOW - timedelta(days=1)).timestamp()
    assert first.end == (NOW + timedelta(days=100)).timestamp()
    assert first.crl_url == URL
    assert (
        second.serial,
        second.thumbprint,
        second.device_id,
        second.revoked_at,
        second.crl_url,
    ) == (
        "1",
        "not-hex",
        "not-a-guid",
        (NOW - timedelta(days=1)).timestamp(),
        URL,  # no URL of its own: the CA's CRL
    )
    assert third.crl_url == "http://elsewhere.example/x.crl"
    assert result.crl_urls == (URL, "http://elsewhere.example/x.crl")
    assert result.unchecked == 0
    assert (
        len(result.serials) == 60 and len(result.thumbprints) == 60 and len(result.device_ids) == 48
    )


def test_a_certificate_whose_crl_is_past_the_eighth_is_unchecked() -> None:
    fold = RevocationFold(T, None)
    fold.add([leaf(str(i), url=f"http://c{i}.pki.azure.net/x.crl") for i in range(10)])
    result = fold.result()
    assert len(result.crl_urls) == 8
    assert result.unchecked == 2
    assert list(result.crl_index).count(NO_CRL) == 2


def test_coverage_counts_revocations_missing_from_the_crl_they_name() -> None:
    fold = RevocationFold(T, URL)
    fold.add(
        [
            leaf("0001"),  # on the CRL (as 1)
            leaf("0A"),  # missing
            leaf("0b", revoked=NOW - timedelta(hours=3)),  # inside the 4 h grace: not yet
            leaf("0c", revoked=NOW - timedelta(hours=5)),  # missing
            leaf("0d", end=NOW + timedelta(seconds=1)),  # missing, expires in a second
            leaf("0e", revoked=NOW - timedelta(hours=4)),  # exactly the grace: not yet
            leaf("10", revoked=NOW - timedelta(days=1)),  # missing, as old as 0A
            leaf("0f", url=URL2),  # its CRL was not read: nothing said
        ]
    )
    revocations = fold.result()
    info = parse_crl(make_crl(CA, [1, 0xFF]), CA.certificate)
    got = coverage(revocations, {URL: info, URL2: None}, T, 4 * HOUR)
    assert got.unpublished == 4
    assert [row.serial for row in got.rows] == ["A", "D", "10", "C"]  # oldest, then serial
    later = coverage(revocations, {URL: info}, T + 2, 4 * HOUR)
    assert later.unpublished == 4  # 0d expired, 0e now past the grace
    assert coverage(revocations, {URL: info}, T + 0.5, 4 * HOUR).unpublished == 5
    assert coverage(revocations, {URL: info}, T + 2 * HOUR, 4 * HOUR).unpublished == 5  # 0b
    assert coverage(revocations, {}, T, 4 * HOUR).unpublished == 0


def _store(grace: float | None = 4 * HOUR) -> tuple[Store, CASnapshot]:
    fold = Fold(T, (7, 30), revocations=True, ca_crl_url=URL)
    fold.add([leaf("0A"), leaf("0B"), leaf("0C", status="active")])
    snapshot = CASnapshot(
        CARecord(
            CA_ID,
            "Contoso",
            "active",
            "issuingCertificationAuthority",
            "eCP256",
            "sha256",
            "software",
            None,
            URL,
            CA.data_uri,
        ),
        fold.result(),
        T,
        fold.devices.result(),
        fold.revocations.result() if fold.revocations else None,  # type: ignore[arg-type]
    )
    store = Store(["contoso"], crl_grace=grace)
    store.set_cas("contoso", {CA_ID: "Contoso"})
    store.record_success("contoso", CA_ID, "Contoso", snapshot, 1.0)
    return store, snapshot


def test_a_failed_read_keeps_the_last_good_values_and_counts_the_reason() -> None:
    clock.freeze(T)
    try:
        store, _ = _store()
        ca = store.tenants["contoso"].cas[CA_ID]
        assert list(ca.crls) == [URL] and ca.coverage.unpublished == 0
        info = parse_crl(make_crl(CA, [0xA]), CA.certificate)
        store.record_crl("contoso", CA_ID, URL, at=T, info=info)
        ca = store.tenants["contoso"].cas[CA_ID]
        assert (ca.crls[URL].success, ca.crls[URL].info, ca.coverage.unpublished) == (True, info, 1)
        store.record_crl(
            "contoso", CA_ID, URL, at=T + 60, failure=CRLFailure("http_5xx", "HTTP 503")
        )
        ca = store.tenants["contoso"].cas[CA_ID]
        state = ca.crls[URL]
        assert (state.success, state.info, state.last_error) == (False, info, "http_5xx: HTTP 503")
        assert state.failures["http_5xx"] == 1 and sum(state.failures.values()) == 1
        assert ca.coverage.unpublished == 1
        store.record_crl("contoso", CA_ID, URL, at=T + 120)  # a 304
        state = store.tenants["contoso"].cas[CA_ID].crls[URL]
        assert (state.success, state.info, state.last_success_at) == (True, info, T + 120)
        store.record_crl(
            "contoso", CA_ID, "http://other/", at=T, failure=CRLFailure("network", "x")
        )
        assert list(store.tenants["contoso"].cas[CA_ID].crls) == [URL]
    finally:
        clock.freeze(None)


def families(store: Store) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in ExporterCollector(store).collect():
        if family.name.startswith(PREFIX + "crl_") or family.name.endswith("revoked_unpublished"):
            out[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return out


def test_the_crl_families_are_exact() -> None:
    clock.freeze(T)
    try:
        store, _ = _store()
        der = make_crl(CA, [0xA, 0x99])
        store.record_crl("contoso", CA_ID, URL, at=T, info=parse_crl(der, CA.certificate))
        store.record_crl("contoso", CA_ID, URL, at=T, failure=CRLFailure("timeout", "slow"))
        labels = {"tenant": "contoso", "ca_id": CA_ID, "ca": "Contoso"}
        crl = {**labels, "url": URL}
        reasons = (
            "network",
            "timeout",
            "http_4xx",
            "http_5xx",
            "too_large",
            "invalid",
            "signature",
            "refused",
        )
        assert families(store) == {
            PREFIX + "crl_fetch_success": [(PREFIX + "crl_fetch_success", crl, 0.0)],
            PREFIX + "crl_fetch_failures": [
                (
                    PREFIX + "crl_fetch_failures_total",
                    {**crl, "reason": r},
                    1.0 if r == "timeout" else 0.0,
                )
                for r in reasons
            ],
            PREFIX + "crl_last_update_timestamp_seconds": [
                (PREFIX + "crl_last_update_timestamp_seconds", crl, T - HOUR)
            ],
            PREFIX + "crl_next_update_timestamp_seconds": [
                (PREFIX + "crl_next_update_timestamp_seconds", crl, T + 7 * 86400)
            ],
            PREFIX + "crl_revoked_certificates": [(PREFIX + "crl_revoked_certificates", crl, 2.0)],
            PREFIX + "crl_size_bytes": [(PREFIX + "crl_size_bytes", crl, float(len(der)))],
            PREFIX + "leaf_certificates_revoked_unpublished": [
                (PREFIX + "leaf_certificates_revoked_unpublished", labels, 1.0)
            ],
        }
    finally:
        clock.freeze(None)


def test_with_crls_off_none_of_the_families_is_exposed() -> None:
    store, _ = _store(grace=None)
    assert store.tenants["contoso"].cas[CA_ID].crls == {}
    assert families(store) == {}


def test_the_reader_reads_each_named_crl_and_sends_no_credential() -> None:
    clock.freeze(T)
    try:
        with crl_server() as server:
            store, _ = _store()
            url = server.url("/crl")
            # the snapshot names the loopback server's CRL
            fold = Fold(T, (7,), revocations=True, ca_crl_url=url)
            fold.add([leaf("0A", url=url), leaf("0B", url=url)])
            info = CARecord(CA_ID, "Contoso", "active", "x", "x", "x", "x", None, url, CA.data_uri)
            snap = CASnapshot(
                info, fold.result(), T, fold.devices.result(), fold.revocations.result()
            )  # type: ignore[union-attr]
            store.record_success("contoso", CA_ID, "Contoso", snap, 1.0)
            server.routes["/crl"] = Route(make_crl(CA, [0xB]), etag='"1"')
            config = _config(server.port)
            reader = CRLReader(config, store, backoff=0.0)
            try:
                reader.read_all()
                ca = store.tenants["contoso"].cas[CA_ID]
                assert ca.crls[url].info is not None and ca.crls[url].info.entries == 1
                assert ca.coverage.unpublished == 1
                assert [row.serial for row in ca.coverage.rows] == ["A"]
                reader.read_all()  # conditional: a 304
                assert server.requests[1][1]["if-none-match"] == '"1"'
                assert store.tenants["contoso"].cas[CA_ID].crls[url].success is True
                for _, headers in server.requests:
                    assert "authorization" not in headers
            finally:
                reader.stop()
    finally:
        clock.freeze(None)


def _config(port: int) -> Any:
    from pki_exporter.config.load import parse_config

    text = """
crl:
  interval: 1h
  timeout: 2s
  allowed_hosts: ["127.0.0.1"]
tenants:
  - name: contoso
    tenant_id: 11111111-2222-4333-8444-555555555555
    client_id: aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee
    credential: {client_secret_env: PKI_TEST_SECRET}
"""
    del port
    return parse_config(text, "<test>")


def test_serial_keys_are_twenty_bytes() -> None:
    assert serial_key(-1) is None and serial_key(1 << 160) is None
    assert datetime.fromtimestamp(T, tz=UTC) == NOW
