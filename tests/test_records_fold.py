"""Decoding and folding of leaf pages: exact figures for hand-made pages."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pki_exporter.aggregate.certificates import Fold
from pki_exporter.graph.records import InvalidResponse, ca_record, decode_leaf_page, parse_timestamp

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def leaf(
    status: object = "active", platform: object = "iOS", start: object = None, end: object = None
) -> dict[str, object]:
    return {
        "id": "x",
        "certificateStatus": status,
        "devicePlatform": platform,
        "validityStartDateTime": iso(NOW - 10 * DAY) if start is None else start,
        "validityEndDateTime": iso(NOW + 100 * DAY) if end is None else end,
        "keyUsages": ['["KeyEncipherment","DigitalSignature"]'],
        "ocspResponderUri": "",
    }


def page(records: list[object], next_link: str | None = None) -> bytes:
    doc: dict[str, object] = {"value": records}
    if next_link:
        doc["@odata.nextLink"] = next_link
    return json.dumps(doc).encode()


def fold(*pages: bytes, windows: tuple[int, ...] = (7, 30, 90)):
    f = Fold(NOW, windows)
    for body in pages:
        decoded = decode_leaf_page(body)
        f.add(decoded.records)
        f.add_invalid(decoded.invalid)
    return f.result()


def test_counts_windows_and_extremes_are_exact() -> None:
    records = [
        leaf(end=iso(NOW + 1)),  # inside every window
        leaf(end=iso(NOW + 7 * DAY)),  # exactly on the 7-day bound: inside
        leaf(end=iso(NOW + 7 * DAY + 1)),  # just outside 7, inside 30
        leaf(end=iso(NOW + 90 * DAY)),
        leaf(end=iso(NOW + 400 * DAY), start=iso(NOW - 1)),  # latest issuance
        leaf(end=iso(NOW)),  # active but at its end: not unexpired, in no window
        leaf(end=iso(NOW - DAY)),  # active, already past its end
        leaf(status="revoked", end=iso(NOW + DAY)),  # not active: in no window
        leaf(status="expired", platform="Android", end=iso(NOW - 5 * DAY), start=iso(NOW + 5)),
    ]
    result = fold(page(records))
    assert result.total == 9
    assert result.invalid == 0
    assert result.counts == {
        ("active", "iOS"): 7,
        ("revoked", "iOS"): 1,
        ("expired", "iOS"): 0,
        ("active", "Android"): 0,
        ("revoked", "Android"): 0,
        ("expired", "Android"): 1,
    }
    assert result.expiring == ((7, 2), (30, 3), (90, 4))
    assert result.earliest_expiry == NOW + 1
    assert result.latest_issuance == NOW + 5  # any status counts for issuance


def test_labels_for_null_empty_unknown_and_long_values() -> None:
    long = "x" * 100
    records = [
        leaf(status=None, platform=None),
        leaf(status="", platform=""),
        {k: v for k, v in leaf().items() if k not in ("certificateStatus", "devicePlatform")},
        leaf(status="suspended", platform=long),
    ]
    result = fold(page(records))
    assert result.counts[("unknown", "Unknown")] == 3
    assert result.counts[("suspended", "x" * 64)] == 1
    assert result.counts[("active", "x" * 64)] == 0
    assert result.total == 4


@pytest.mark.parametrize(
    "bad",
    [
        leaf(end=None) | {"validityEndDateTime": None},
        {k: v for k, v in leaf().items() if k != "validityEndDateTime"},
        leaf(start="not a date"),
        leaf(end="2025-13-45T99:00:00Z"),
        leaf(end=1764000000),
        leaf(platform=5),
        leaf(status=["active"]),
        "a string, not an object",
        None,
        42,
    ],
)
def test_malformed_records_are_counted_and_left_out(bad: object) -> None:
    result = fold(page([leaf(), bad, leaf()]))
    assert result.invalid == 1
    assert result.total == 2
    assert result.counts[("active", "iOS")] == 2


def test_seven_fraction_digits_and_offsets() -> None:
    end = "2026-12-01T04:00:00.1234565-08:00"  # 12:00:00.123457 UTC: the 7th digit rounds
    result = fold(page([leaf(end=end), leaf(end="2026-12-01T12:00:00.9999994Z")]))
    assert result.earliest_expiry == datetime(2026, 12, 1, 12, 0, 0, 123457, tzinfo=UTC).timestamp()
    result = fold(page([leaf(end="2026-12-01T12:00:00.9999995+00:00")]))
    assert result.earliest_expiry == datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC).timestamp()


def test_naive_dates_are_utc() -> None:
    result = fold(page([leaf(end="2026-12-01T00:00:00")]))
    assert result.earliest_expiry == datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def test_pages_fold_like_one_and_empty_pages_count_nothing() -> None:
    records = [leaf(end=iso(NOW + d * DAY)) for d in range(1, 50)]
    whole = fold(page(records))
    split = fold(page(records[:10]), page([]), page(records[10:11]), page(records[11:]))
    assert whole == split


def test_ca_without_certificates_has_zero_windows_and_no_extremes() -> None:
    result = fold(page([]))
    assert result.expiring == ((7, 0), (30, 0), (90, 0))
    assert result.earliest_expiry is None and result.latest_issuance is None
    assert result.counts == {}


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'{"value": 5}', b'{"values": []}', b'{"value": [], "@odata.nextLink": 5}'],
)
def test_pages_that_are_not_collections_are_invalid_responses(body: bytes) -> None:
    with pytest.raises(InvalidResponse):
        decode_leaf_page(body)


def test_next_link_is_returned() -> None:
    assert decode_leaf_page(page([], "https://graph/next")).next_link == "https://graph/next"


def test_ca_record_maps_enums_and_expiry() -> None:
    record = ca_record(
        {
            "id": "2B3A5C1E-0000-0000-0000-000000000001",
            "displayName": "Issuing CA",
            "certificationAuthorityStatus": "active",
            "cloudCertificationAuthorityType": "issuingCertificationAuthority",
            "certificateKeySize": "rsa4096",
            "cloudCertificationAuthorityHashingAlgorithm": None,
            "keyPlatform": "",
            "validityEndDateTime": "2030-01-01T00:00:00Z",
        }
    )
    assert record.id == "2b3a5c1e-0000-0000-0000-000000000001"
    assert (record.status, record.type, record.key_size) == (
        "active",
        "issuingCertificationAuthority",
        "rsa4096",
    )
    assert (record.hashing_algorithm, record.key_platform) == ("unknown", "unknown")
    assert record.expiry == datetime(2030, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("value", [None, 5, "", "yesterday", "2030-02-30T00:00:00Z"])
def test_unreadable_timestamps_are_none(value: object) -> None:
    assert parse_timestamp(value) is None
