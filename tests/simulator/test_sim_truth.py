"""Ground truth equals what a plain client counts itself from the served JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from pki_simulator import METRICS, Simulator
from pki_simulator.truth import WITHOUT_DEVICE

from .helpers import ANCHOR, GraphClient, client_devices_at_risk, client_samples, parse_date

OFFSETS = [
    timedelta(0),
    timedelta(days=3, hours=5),
    timedelta(days=-30),
    timedelta(days=200),
    timedelta(days=400),
    timedelta(days=-1000),
]


@pytest.fixture(scope="module")
def quirky() -> Iterator[Simulator]:
    """Many quirks (every kind in every CA), a broken-renewal share, an empty CA."""
    sim = Simulator.generate(
        seed=21,
        cas=4,
        certificates=250,
        page_size=60,
        anchor=ANCHOR,
        quirk_share=0.2,
        broken_renewal_share=0.3,
    )
    sim.start()
    yield sim
    sim.close()


def _client_view(
    sim: Simulator, graph: GraphClient
) -> tuple[list[dict[str, object]], dict[str, list[object]]]:
    cas = graph.list_cas(prefer=True)
    return cas, {str(ca["id"]): graph.leaves(str(ca["id"])) for ca in cas}


@pytest.mark.parametrize("which", ["module", "quirky"])
def test_ground_truth_equals_the_client_count(
    which: str,
    sim: Simulator,
    quirky: Simulator,
    make_graph: Callable[..., GraphClient],
) -> None:
    target = sim if which == "module" else quirky
    graph = make_graph(target)
    cas, leaves = _client_view(target, graph)
    names = {target.tenants[0].tenant_id: "prod"}
    for offset in OFFSETS:
        now = ANCHOR + offset
        expected = target.expected_samples(now, (7, 30, 90), names)
        counted = client_samples("prod", cas, leaves, now.timestamp())
        assert expected == counted, offset
    assert {name for name, _ in expected} == set(METRICS)


def test_window_boundaries_are_exact(
    quirky: Simulator, make_graph: Callable[..., GraphClient]
) -> None:
    graph = make_graph(quirky)
    cas, leaves = _client_view(quirky, graph)
    ends = sorted(
        end
        for records in leaves.values()
        for r in records
        if isinstance(r, dict) and r.get("certificateStatus") == "active"
        for end in [parse_date(r.get("validityEndDateTime"))]
        if end is not None
    )
    tried = 0
    for end in ends[:: max(1, len(ends) // 25)]:
        for now in (end, end - 7 * 86400, end - 30 * 86400, end - 90 * 86400, end - 1e-6):
            expected = quirky.expected_samples(now, (7, 30, 90))
            assert expected == client_samples(quirky.tenants[0].name, cas, leaves, now)
            tried += 1
    assert tried > 50


def test_ground_truth_details(quirky: Simulator) -> None:
    samples = quirky.expected_samples(ANCHOR)
    ca = quirky.tenants[0].cas[0]
    base = (("ca", ca.display_name), ("ca_id", ca.id), ("tenant", "contoso"))

    def value(name: str, **extra: str) -> float:
        return samples[(name, tuple(sorted((*base, *extra.items()))))]

    assert value("intune_cloudpki_leaf_certificates_invalid") > 0
    assert value("intune_cloudpki_leaf_certificates_expiring", within_days="7") > 0
    assert value("intune_cloudpki_ca_certificate_expiry_timestamp_seconds") == parse_date(
        quirky.dataset.all_cas()[0].record()["validityEndDateTime"]
    )
    platforms = {
        dict(labels)["platform"]
        for name, labels in samples
        if name == "intune_cloudpki_leaf_certificates"
    }
    assert "Unknown" in platforms
    assert any(len(p) == 64 for p in platforms)
    statuses = {
        dict(labels)["status"]
        for name, labels in samples
        if name == "intune_cloudpki_leaf_certificates"
    }
    assert {"active", "revoked", "expired", "unknown"} <= statuses
    assert statuses & {"suspended", "pendingRevocation", "onHold"}
    info = [dict(labels) for name, labels in samples if name == "intune_cloudpki_ca_info"]
    assert {i["status"] for i in info} >= {"active", "expired"}
    assert "unknown" in {i["key_platform"] for i in info}


def test_gone_cas_leave_the_ground_truth(quirky: Simulator) -> None:
    gone = quirky.tenants[0].cas[1].id
    before = quirky.expected_samples(ANCHOR)
    quirky.remove_ca(gone)
    try:
        after = quirky.expected_samples(ANCHOR)
    finally:
        quirky.restore_ca(gone)
    assert {k for k in before if dict(k[1])["ca_id"] == gone}
    assert not {k for k in after if dict(k[1])["ca_id"] == gone}
    assert {k: v for k, v in before.items() if dict(k[1])["ca_id"] != gone} == after


@pytest.mark.parametrize("which", ["module", "quirky"])
def test_devices_at_risk_equal_the_client_rows(
    which: str,
    sim: Simulator,
    quirky: Simulator,
    make_graph: Callable[..., GraphClient],
) -> None:
    target = sim if which == "module" else quirky
    graph = make_graph(target)
    _, leaves = _client_view(target, graph)
    listed = 0
    for offset in OFFSETS:
        now = ANCHOR + offset
        for ca_id, records in leaves.items():
            for days in (1, 7, 30, 90, 400):
                rows = target.expected_devices_at_risk(now, ca_id, days)
                assert rows == client_devices_at_risk(records, now.timestamp(), days)
                listed += len(rows)
    assert listed > 100


def test_device_ground_truth_details(quirky: Simulator) -> None:
    samples = quirky.expected_samples(ANCHOR)
    ca = quirky.tenants[0].cas[0]
    of_ca = {k: v for k, v in samples.items() if dict(k[1])["ca_id"] == ca.id}
    devices = sum(v for (name, _), v in of_ca.items() if name == "intune_cloudpki_devices")
    active = sum(
        v
        for (name, labels), v in of_ca.items()
        if name == "intune_cloudpki_leaf_certificates" and dict(labels)["status"] == "active"
    )
    expiring = {
        dict(labels)["within_days"]: 0.0
        for name, labels in of_ca
        if name == "intune_cloudpki_devices_expiring"
    }
    for (name, labels), v in of_ca.items():
        if name == "intune_cloudpki_devices_expiring":
            expiring[dict(labels)["within_days"]] += v
    # Devices that renewed hold two active certificates: fewer devices than certificates.
    assert 0 < devices < active
    # Broken renewal (30 % of the active certificates) shows per device too.
    assert expiring["7"] > 0.2 * devices
    assert expiring["7"] <= expiring["30"] <= expiring["90"] <= devices
    assert (
        samples[
            (
                WITHOUT_DEVICE,
                tuple(sorted({"ca": ca.display_name, "ca_id": ca.id, "tenant": "contoso"}.items())),
            )
        ]
        > 0
    )
    rows = quirky.expected_devices_at_risk(ANCHOR, ca.id, 7)
    assert len(rows) == expiring["7"]
    assert [r["end_timestamp"] for r in rows] == sorted(r["end_timestamp"] for r in rows)
    with pytest.raises(KeyError):
        quirky.expected_devices_at_risk(ANCHOR, "no-such-ca", 7)
