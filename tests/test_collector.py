"""The exporter's collector on a Store filled by hand: exact families and samples, CAs
that vanish, and the identity caching of the families read from CA states."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.core import Metric

from pki_exporter import __version__
from pki_exporter.metrics.collector import (
    PREFIX,
    CAFamilies,
    ExporterCollector,
    ca_families,
    crl_families,
)
from pki_exporter.metrics.exposition import Composite
from pki_exporter.runtime import clock
from pki_exporter.state import REASONS, Store
from tests.metrics_data import DAY, NOW, snapshot

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
C = "33333333-3333-4333-8333-333333333333"

Sample = tuple[str, dict[str, str], float]


@pytest.fixture(autouse=True)
def frozen_clock() -> Iterator[None]:
    clock.freeze(NOW)
    yield
    clock.freeze(None)


def filled() -> Store:
    """contoso: CA A refreshed, CA B failed before any success; fabrikam: not yet attempted."""
    store = Store(["contoso", "fabrikam"])
    store.set_cas("contoso", {A: "Root", B: "Issuing"})
    store.record_success("contoso", A, "Root", snapshot(A), 1.5)
    store.record_failure("contoso", B, "throttled", "HTTP 429", NOW - 30, 0.25)
    store.set_tenant("contoso", up=True, error=None)
    store.finish_cycle("contoso")
    for code in (200, 429, 200):
        store.count_request("contoso", code)
    store.count_budget_wait("contoso", 0.5)
    return store


def families(collector: ExporterCollector) -> dict[str, tuple[str, list[Sample]]]:
    out: dict[str, tuple[str, list[Sample]]] = {}
    for family in collector.collect():
        assert family.name not in out
        out[family.name] = (family.type, [(s.name, s.labels, s.value) for s in family.samples])
    return out


def ca(ca_id: str, label: str, **extra: str) -> dict[str, str]:
    return {"tenant": "contoso", "ca_id": ca_id, "ca": label, **extra}


def test_a_store_filled_by_hand_gives_exact_families() -> None:
    got = families(ExporterCollector(filled()))
    p = PREFIX
    a = ca(A, "Root")
    b = ca(B, "Issuing")
    assert list(got) == [
        p + "leaf_certificates",
        p + "leaf_certificate_earliest_expiry_timestamp_seconds",
        p + "leaf_certificate_earliest_expiry_days",
        p + "leaf_certificates_expiring",
        p + "leaf_certificate_latest_issuance_timestamp_seconds",
        p + "ca_info",
        p + "ca_certificate_expiry_timestamp_seconds",
        p + "leaf_certificates_invalid",
        p + "devices",
        p + "devices_expiring",
        p + "devices_renewal_due",
        p + "leaf_certificates_without_device",
        p + "refresh_success",
        p + "refresh_last_success_timestamp_seconds",
        p + "refresh_duration_seconds",
        p + "refresh_failures",
        p + "graph_requests",
        p + "graph_budget_wait_seconds",
        p + "tenant_up",
        p + "exporter_build_info",
    ]
    expected: dict[str, tuple[str, list[Sample]]] = {
        "leaf_certificates": (
            "gauge",
            [
                (p + "leaf_certificates", {**a, "status": "active", "platform": "windows"}, 3.0),
                (p + "leaf_certificates", {**a, "status": "revoked", "platform": "android"}, 1.0),
            ],
        ),
        "leaf_certificate_earliest_expiry_timestamp_seconds": (
            "gauge",
            [(p + "leaf_certificate_earliest_expiry_timestamp_seconds", a, NOW + 10 * DAY)],
        ),
        "leaf_certificate_earliest_expiry_days": (
            "gauge",
            [(p + "leaf_certificate_earliest_expiry_days", a, 10.0)],
        ),
        "leaf_certificates_expiring": (
            "gauge",
            [
                (p + "leaf_certificates_expiring", {**a, "within_days": "7"}, 0.0),
                (p + "leaf_certificates_expiring", {**a, "within_days": "30"}, 2.0),
            ],
        ),
        "leaf_certificate_latest_issuance_timestamp_seconds": (
            "gauge",
            [(p + "leaf_certificate_latest_issuance_timestamp_seconds", a, NOW - 2 * DAY)],
        ),
        "ca_info": (
            "gauge",
            [
                (
                    p + "ca_info",
                    {
                        **a,
                        "status": "active",
                        "type": "issuingCertificateAuthority",
                        "key_size": "rsa2048",
                        "hashing_algorithm": "sha256",
                        "key_platform": "software",
                    },
                    1.0,
                )
            ],
        ),
        "ca_certificate_expiry_timestamp_seconds": (
            "gauge",
            [(p + "ca_certificate_expiry_timestamp_seconds", a, NOW + 400 * DAY)],
        ),
        "leaf_certificates_invalid": ("gauge", [(p + "leaf_certificates_invalid", a, 0.0)]),
        "devices": ("gauge", [(p + "devices", {**a, "platform": "windows"}, 2.0)]),
        "devices_expiring": (
            "gauge",
            [
                (p + "devices_expiring", {**a, "within_days": "7", "platform": "windows"}, 0.0),
                (p + "devices_expiring", {**a, "within_days": "30", "platform": "windows"}, 1.0),
            ],
        ),
        "devices_renewal_due": (
            "gauge",
            [
                (p + "devices_renewal_due", {**a, "within_days": "7", "platform": "windows"}, 0.0),
                (p + "devices_renewal_due", {**a, "within_days": "30", "platform": "windows"}, 2.0),
            ],
        ),
        "leaf_certificates_without_device": (
            "gauge",
            [(p + "leaf_certificates_without_device", a, 0.0)],
        ),
        "refresh_success": (
            "gauge",
            [(p + "refresh_success", a, 1.0), (p + "refresh_success", b, 0.0)],
        ),
        "refresh_last_success_timestamp_seconds": (
            "gauge",
            [(p + "refresh_last_success_timestamp_seconds", a, NOW - 60)],
        ),
        "refresh_duration_seconds": (
            "gauge",
            [(p + "refresh_duration_seconds", a, 1.5), (p + "refresh_duration_seconds", b, 0.25)],
        ),
        "refresh_failures": (
            "counter",
            [(p + "refresh_failures_total", {**a, "reason": r}, 0.0) for r in REASONS]
            + [
                (p + "refresh_failures_total", {**b, "reason": r}, 1.0 if r == "throttled" else 0.0)
                for r in REASONS
            ],
        ),
        "graph_requests": (
            "counter",
            [
                (p + "graph_requests_total", {"tenant": "contoso", "code": "200"}, 2.0),
                (p + "graph_requests_total", {"tenant": "contoso", "code": "429"}, 1.0),
            ],
        ),
        "graph_budget_wait_seconds": (
            "counter",
            [
                (p + "graph_budget_wait_seconds_total", {"tenant": "contoso"}, 0.5),
                (p + "graph_budget_wait_seconds_total", {"tenant": "fabrikam"}, 0.0),
            ],
        ),
        "tenant_up": ("gauge", [(p + "tenant_up", {"tenant": "contoso"}, 1.0)]),
        "exporter_build_info": (
            "gauge",
            [(p + "exporter_build_info", {"version": __version__}, 1.0)],
        ),
    }
    assert got == {p + name: value for name, value in expected.items()}


def test_ca_families_are_named_after_their_metric() -> None:
    """``CAFamilies`` is read by name: each field holds the family of that name."""
    built = ca_families()
    assert [family.name for family in built] == [PREFIX + name for name in CAFamilies._fields]


def test_a_vanished_ca_vanishes_from_every_family() -> None:
    store = filled()
    collector = ExporterCollector(store)
    before = families(collector)
    assert any(s[1].get("ca_id") == B for _, samples in before.values() for s in samples)
    store.set_cas("contoso", {A: "Root"})
    after = families(collector)
    assert [s for _, samples in after.values() for s in samples if s[1].get("ca_id") == B] == []
    # Everything else stays as it was.
    assert after == {
        name: (kind, [s for s in samples if s[1].get("ca_id") != B])
        for name, (kind, samples) in before.items()
    }
    store.reconfigure(["fabrikam"])
    gone = families(collector)
    assert [s for _, samples in gone.values() for s in samples if "contoso" in s[1].values()] == []
    assert gone[PREFIX + "graph_budget_wait_seconds"][1] == [
        (PREFIX + "graph_budget_wait_seconds_total", {"tenant": "fabrikam"}, 0.0)
    ]


def ca_part(collector: ExporterCollector) -> dict[str, Composite]:
    out = {}
    for family in collector.collect():
        if isinstance(family, Composite):
            out[family.name] = family
    # No CA of these stores names a CRL: the CRL families are not exposed at all.
    assert len(out) == len(CAFamilies._fields) - len(crl_families())
    return out


def test_families_of_unchanged_ca_states_are_the_same_objects() -> None:
    store = filled()
    collector = ExporterCollector(store)
    first = ca_part(collector)
    # Counters, the tenant's status and the same CA list leave the CA states alone.
    store.count_request("contoso", 200)
    store.count_budget_wait("contoso", 1.0)
    store.set_tenant("contoso", up=True, error=None)
    store.set_cas("contoso", {A: "Root", B: "Issuing"})
    second = ca_part(collector)
    assert all(second[name] is first[name] for name in first)


def test_one_changed_ca_rebuilds_its_own_parts_only() -> None:
    store = filled()
    collector = ExporterCollector(store)
    first = ca_part(collector)
    store.record_success("contoso", B, "Issuing", snapshot(B, read_at=NOW - 5), 0.75)
    second = ca_part(collector)
    for name, family in second.items():
        assert family is not first[name]
        assert family.header is first[name].header
        assert len(family.parts) == 2
        assert family.parts[0] is first[name].parts[0]  # CA A: untouched
        assert family.parts[1] is not first[name].parts[1]
    assert second[PREFIX + "refresh_last_success_timestamp_seconds"].samples[1].value == NOW - 5
    # A new label is a change too.
    store.set_cas("contoso", {A: "Root CA", B: "Issuing"})
    third = ca_part(collector)
    success = third[PREFIX + "refresh_success"]
    assert success.parts[1] is second[PREFIX + "refresh_success"].parts[1]
    assert [s.labels["ca"] for s in success.samples] == ["Root CA", "Issuing"]


def test_a_new_ca_appears_after_the_others() -> None:
    store = filled()
    collector = ExporterCollector(store)
    first = ca_part(collector)
    store.set_cas("contoso", {A: "Root", B: "Issuing", C: "New"})
    second = ca_part(collector)
    success = second[PREFIX + "refresh_success"]
    assert success.parts[:2] == first[PREFIX + "refresh_success"].parts
    assert success.parts[0] is first[PREFIX + "refresh_success"].parts[0]
    # Not attempted yet: no success sample, the failure counters at 0.
    assert [s.labels["ca_id"] for s in success.samples] == [A, B]
    failures = second[PREFIX + "refresh_failures"].samples
    assert [(s.labels["reason"], s.value) for s in failures if s.labels["ca_id"] == C] == [
        (reason, 0.0) for reason in REASONS
    ]


def test_collect_yields_plain_metrics() -> None:
    """The registry gets prometheus_client families, with no attribute attached to them
    (a ``Composite`` declares its header and parts)."""
    own = {"name", "documentation", "unit", "type", "samples", "_labelnames"}
    for family in ExporterCollector(filled()).collect():
        assert isinstance(family, Metric)
        extra = {"header", "parts"} if isinstance(family, Composite) else set()
        assert set(vars(family)) <= own | extra, family.name


def test_one_scrape_reads_the_store_once() -> None:
    """Every family of one scrape comes from the same CA states, the ``--storage.path``
    ones included: a refresh that ends mid-scrape shows in the next scrape, in all of
    them at once (a CA shown refreshed by ``snapshot_restored`` but still absent from the
    certificate families once failed a warm-restart test)."""
    store = Store(["contoso"])
    store.set_cas("contoso", {A: "Root", B: "Issuing"})
    store.restore("contoso", A, "Root", snapshot(A, read_at=NOW - 60), 1.0)
    collector = ExporterCollector(store, lambda: 2)
    scrape = collector.collect()
    first = next(scrape)  # the scrape has read the Store
    store.record_success("contoso", A, "Root", snapshot(A), 1.5)
    store.record_success("contoso", B, "Issuing", snapshot(B), 1.5)
    rest = {family.name: family for family in scrape}
    assert first.name == PREFIX + "leaf_certificates"
    assert {s.labels["ca_id"] for s in first.samples} == {A}
    restored = rest[PREFIX + "snapshot_restored"].samples
    assert [(s.labels["ca_id"], s.value) for s in restored] == [(A, 1.0)]
    assert [s.value for s in rest[PREFIX + "storage_write_failures"].samples] == [2.0]
    after = families(collector)
    assert [(s[1]["ca_id"], s[2]) for s in after[PREFIX + "snapshot_restored"][1]] == [
        (A, 0.0),
        (B, 0.0),
    ]


def test_no_storage_families_without_storage() -> None:
    assert not {PREFIX + "snapshot_restored", PREFIX + "storage_write_failures"} & set(
        families(ExporterCollector(filled()))
    )
