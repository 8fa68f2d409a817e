"""The data set: determinism, the full field set, the quirks of real tenants, the knobs."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from pki_simulator import QUIRK_NAMES, Simulator, generate_spec
from pki_simulator.dataset import Dataset

from .helpers import ANCHOR, parse_date

FIELDS = [
    "@odata.type", "id", "subjectName", "issuerId", "issuerName", "certificateStatus",
    "validityStartDateTime", "validityEndDateTime", "crlDistributionPointUrl",
    "certificationAuthorityIssuerUri", "ocspResponderUri", "thumbprint", "serialNumber",
    "revocationDateTime", "deviceName", "userPrincipalName", "deviceId", "userId",
    "devicePlatform", "keyUsages", "extendedKeyUsages", "certificationAuthorityVersionNumber",
]  # fmt: skip


def _records(dataset: Dataset) -> list[Any]:
    return [
        record
        for ca in dataset.all_cas()
        for page in range(ca.pages)
        for record in json.loads("[" + ca.generate_page(page).text + "]")
    ]


@pytest.fixture(scope="module")
def default_records() -> list[Any]:
    """The default data set (1 tenant, 3 CAs x 1000)."""
    return _records(Dataset(generate_spec(anchor=ANCHOR)))


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    def pages(seed: int) -> list[str]:
        dataset = Dataset(generate_spec(seed=seed, certificates=300, page_size=70, anchor=ANCHOR))
        return [ca.generate_page(p).text for ca in dataset.all_cas() for p in range(ca.pages)] + [
            json.dumps(ca.record()) for ca in dataset.all_cas()
        ]

    assert pages(5) == pages(5)
    assert pages(5) != pages(6)
    # pages can be generated in any order and come out the same
    dataset = Dataset(generate_spec(seed=5, certificates=300, page_size=70, anchor=ANCHOR))
    ca = dataset.all_cas()[0]
    backwards = [ca.generate_page(p).text for p in reversed(range(ca.pages))][::-1]
    assert backwards == pages(5)[: ca.pages]


def test_served_bytes_are_deterministic_across_simulators() -> None:
    bodies = []
    for _ in range(2):
        with Simulator.generate(
            seed=11, cas=1, certificates=40, page_size=15, anchor=ANCHOR
        ) as sim:
            ca = sim.dataset.all_cas()[0]
            base, cdn = sim.url.encode(), sim.cdn_url.encode()  # the ports change
            bodies.append(
                [
                    sim.pages.body(ca, p, gzip=False).replace(base, b"BASE").replace(cdn, b"CDN")
                    for p in range(ca.pages)
                ]
            )
    assert bodies[0] == bodies[1]


def test_records_carry_the_full_field_set(default_records: list[Any]) -> None:
    normal = [r for r in default_records if isinstance(r, dict) and list(r) == FIELDS]
    assert len(normal) > 0.95 * len(default_records)
    sizes = [len(json.dumps(r, separators=(",", ":"))) for r in normal]
    assert 800 < sum(sizes) / len(sizes) < 1400
    assert all(
        r["@odata.type"] == "#microsoft.graph.cloudCertificationAuthorityLeafCertificate"
        for r in normal
    )


def test_every_quirk_occurs_in_the_default_data_set(default_records: list[Any]) -> None:
    dataset = Dataset(generate_spec(anchor=ANCHOR))
    assigned = {q for ca in dataset.all_cas() for q in ca.quirks.values()}
    assert assigned == set(QUIRK_NAMES)
    total = len(default_records)
    dicts = [r for r in default_records if isinstance(r, dict)]
    anchor = ANCHOR.timestamp()
    documented = {
        "Android", "AndroidForWork", "iOS", "MacOS", "WindowsPhone81", "Windows81AndLater",
        "Windows10AndLater", "AndroidWorkProfile", "Unknown", "AndroidAOSP",
    }  # fmt: skip

    def share(predicate: Any) -> float:
        return sum(1 for r in dicts if predicate(r)) / total

    checks = {
        "platform null": lambda r: "devicePlatform" in r and r["devicePlatform"] is None,
        "platform empty": lambda r: r.get("devicePlatform") == "",
        "platform missing": lambda r: "devicePlatform" not in r,
        "platform unlisted": lambda r: (
            isinstance(r.get("devicePlatform"), str)
            and r["devicePlatform"]
            and r["devicePlatform"] not in documented
        ),
        "platform number": lambda r: isinstance(r.get("devicePlatform"), int),
        "7 digits and offset": lambda r: (
            re.search(r"\.\d{7}[+-]\d\d:\d\d$", str(r.get("validityEndDateTime")))
            and not str(r.get("validityEndDateTime")).endswith("+00:00")
        ),
        "double-encoded usages": lambda r: (
            isinstance(r.get("keyUsages"), list)
            and r["keyUsages"]
            and r["keyUsages"][0].startswith("[")
        ),
        "active past end": lambda r: (
            r.get("certificateStatus") == "active"
            and (parse_date(r.get("validityEndDateTime")) or anchor) < anchor
        ),
        "unknown status string": lambda r: (
            r.get("certificateStatus") in ("suspended", "pendingRevocation", "onHold")
        ),
        "status null": lambda r: "certificateStatus" in r and r["certificateStatus"] is None,
        "ocsp empty string": lambda r: r.get("ocspResponderUri") == "",
        "impossible date": lambda r: (
            "2025-13-45T99:00:00Z" in (r.get("validityStartDateTime"), r.get("validityEndDateTime"))
        ),
        "not a date": lambda r: r.get("validityStartDateTime") == "not a date",
        "date as number": lambda r: isinstance(r.get("validityStartDateTime"), int),
        "end null": lambda r: "validityEndDateTime" in r and r["validityEndDateTime"] is None,
    }
    for name, predicate in checks.items():
        assert 0 < share(predicate) <= 0.01, name
    not_objects = sum(1 for r in default_records if not isinstance(r, dict))
    assert 0 < not_objects / total <= 0.01


def test_default_mix_makes_every_metric_non_trivial(default_records: list[Any]) -> None:
    anchor = ANCHOR.timestamp()
    dicts = [r for r in default_records if isinstance(r, dict)]
    active_ends = [
        parse_date(r.get("validityEndDateTime"))
        for r in dicts
        if r.get("certificateStatus") == "active"
    ]
    ends = [e for e in active_ends if e is not None]
    for days in (7, 30, 90):
        assert any(anchor < e <= anchor + days * 86400 for e in ends), days
    statuses = {r.get("certificateStatus") for r in dicts}
    assert {"active", "revoked", "expired"} <= statuses
    platforms = {r.get("devicePlatform") for r in dicts}
    assert len(platforms & {"Windows10AndLater", "iOS", "MacOS", "AndroidWorkProfile"}) == 4
    assert all(r["revocationDateTime"] for r in dicts if r.get("certificateStatus") == "revoked")


def test_broken_renewal_share() -> None:
    spec = generate_spec(
        cas=1, certificates=400, anchor=ANCHOR, quirk_share=0, broken_renewal_share=1
    )
    records = _records(Dataset(spec))
    ends = [
        parse_date(r["validityEndDateTime"]) for r in records if r["certificateStatus"] == "active"
    ]
    assert ends
    limit = (ANCHOR + timedelta(days=7)).timestamp()
    assert all(e is not None and ANCHOR.timestamp() < e <= limit for e in ends)


def test_status_and_platform_shares_are_honoured() -> None:
    spec = generate_spec(cas=1, certificates=200, anchor=ANCHOR, quirk_share=0)
    ca = spec.tenants[0].cas[0]
    from dataclasses import replace

    only = replace(ca, status_shares=(("revoked", 1.0),), platform_shares=((None, 1.0),))
    tenant = replace(spec.tenants[0], cas=(only,))
    records = _records(Dataset(replace(spec, tenants=(tenant,))))
    assert {r["certificateStatus"] for r in records} == {"revoked"}
    assert {r["devicePlatform"] for r in records} == {None}


def test_default_spec_is_the_generated_one() -> None:
    from pki_simulator import DatasetSpec

    assert DatasetSpec.default(seed=3, anchor=ANCHOR, cas=2, certificates=10) == generate_spec(
        3, 1, 2, 10, ANCHOR
    )


def test_a_million_certificates_are_cheap_until_served() -> None:
    # building the spec and the data set must not generate the records
    dataset = Dataset(generate_spec(cas=10, certificates=100_000, anchor=ANCHOR))
    assert dataset.certificates == 1_000_000
    assert all(ca.pages == 100 for ca in dataset.all_cas())


def test_devices_renewed_not_renewed_and_none() -> None:
    """Most records name a device; devices that renewed hold an old active certificate
    inside its renewal window and a newer one; some devices did not renew; some
    certificates belong to no device."""
    spec = generate_spec(cas=1, certificates=2000, anchor=ANCHOR, quirk_share=0)
    records = _records(Dataset(spec))
    anchor = ANCHOR.timestamp()
    by_device: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["deviceId"] is not None:
            by_device.setdefault(r["deviceId"], []).append(r)
    without = [r for r in records if r["deviceId"] is None]
    assert 0 < len(without) <= 0.02 * len(records)
    assert all(r["deviceName"] is None for r in without)

    def active_ends(rs: list[dict[str, Any]]) -> list[float]:
        return sorted(
            e
            for r in rs
            if r["certificateStatus"] == "active"
            for e in [parse_date(r["validityEndDateTime"])]
            if e is not None and e > anchor
        )

    renewed = not_renewed = 0
    for device, rs in by_device.items():
        ends = active_ends(rs)
        if len(ends) == 2:
            old, new = ends
            assert old <= anchor + 73 * 86400 < new, device
            assert (
                len({(r["deviceName"], r["userPrincipalName"], r["devicePlatform"]) for r in rs})
                == 1
            )
            renewed += 1
        elif len(ends) == 1 and ends[0] <= anchor + 73 * 86400:
            not_renewed += 1
        assert len(ends) <= 2
    assert renewed > 50 and not_renewed > 5
    assert renewed > 3 * not_renewed  # renewal mostly works in the default data set


def test_renewal_and_device_knobs() -> None:
    spec = generate_spec(
        cas=1,
        certificates=500,
        anchor=ANCHOR,
        quirk_share=0,
        renewed_share=0,
        no_device_share=0,
    )
    records = _records(Dataset(spec))
    devices = [r["deviceId"] for r in records]
    assert None not in devices
    assert len(set(devices)) == len(records)  # one device per certificate
    spec = generate_spec(cas=1, certificates=300, anchor=ANCHOR, quirk_share=0, no_device_share=1)
    assert {r["deviceId"] for r in _records(Dataset(spec))} == {None}
    with pytest.raises(ValueError, match="renewed_share"):
        generate_spec(cas=1, anchor=ANCHOR, renewed_share=1.5)


def test_device_quirks() -> None:
    dataset = Dataset(generate_spec(anchor=ANCHOR, quirk_share=0.2, certificates=300))
    records = _records(dataset)
    dicts = [r for r in records if isinstance(r, dict)]
    assert any("deviceId" not in r for r in dicts)
    assert any(r.get("deviceId") == "" for r in dicts)
    assert any(isinstance(r.get("deviceId"), int) for r in dicts)
    assert any(isinstance(r.get("deviceName"), int) for r in dicts)
