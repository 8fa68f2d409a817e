"""The per-device fold against a brute-force reference written from docs/design.md."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pki_exporter.aggregate.devices import DRILLDOWN_CAP, AtRiskDevice, DeviceFold

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
WINDOWS = (7, 30, 90)
PLATFORMS = ["iOS", "Android", None, "", "MacOS", "W" * 70, "Windows10AndLater"]


@dataclass(frozen=True)
class Record:
    validityEndDateTime: datetime
    certificateStatus: str | None = "active"
    devicePlatform: str | None = "iOS"
    deviceId: str | None = "dev"
    deviceName: object = None
    userPrincipalName: object = None
    serialNumber: object = None
    thumbprint: object = None


def _label(platform: str | None) -> str:
    return platform[:64] if platform else "Unknown"


def _display(value: object) -> str | None:
    return value[:256] if isinstance(value, str) else None


def reference(records: list[Record], now: datetime) -> dict[str, Any]:
    """Brute force: every device's latest-ending active unexpired certificate."""
    latest: dict[str, AtRiskDevice] = {}
    earliest: dict[str, float] = {}
    without = 0
    for r in records:
        if not r.deviceId:
            without += 1
            continue
        end = r.validityEndDateTime
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        if r.certificateStatus != "active" or end <= now:
            continue
        row = AtRiskDevice(
            end.timestamp(),
            r.deviceId,
            _display(r.deviceName),
            _display(r.userPrincipalName),
            _label(r.devicePlatform),
            _display(r.serialNumber),
            _display(r.thumbprint),
        )

        def rank(x: AtRiskDevice) -> tuple[Any, ...]:
            return (
                -x.end,
                x.platform,
                x.serial_number or "",
                x.thumbprint or "",
                x.device_name or "",
                x.user or "",
            )

        earliest[r.deviceId] = min(row.end, earliest.get(r.deviceId, row.end))
        known = latest.get(r.deviceId)
        if known is None or rank(row) < rank(known):
            latest[r.deviceId] = row
    devices: dict[str, int] = {}
    for row in latest.values():
        devices[row.platform] = devices.get(row.platform, 0) + 1
    expiring, due = [], []
    for days in WINDOWS:
        bound = (now + timedelta(days=days)).timestamp()
        within = dict.fromkeys(devices, 0)
        renewal_due = dict.fromkeys(devices, 0)
        for row in latest.values():
            if row.end <= bound:
                within[row.platform] += 1
            if earliest[row.device_id] <= bound:
                renewal_due[row.platform] += 1
        expiring.append((days, within))
        due.append((days, renewal_due))
    largest = (now + timedelta(days=WINDOWS[-1])).timestamp()
    rows = sorted(
        (r for r in latest.values() if r.end <= largest), key=lambda r: (r.end, r.device_id)
    )
    return {
        "devices": devices,
        "expiring": expiring,
        "due": due,
        "without": without,
        "rows": rows,
    }


def random_records(rng: random.Random, n: int, n_devices: int) -> list[Record]:
    bounds = [NOW + timedelta(days=d) for d in WINDOWS]
    records = []
    for _ in range(n):
        choice = rng.random()
        if choice < 0.1:
            end = rng.choice([*bounds, NOW])  # exactly on a bound, or exactly now
        elif choice < 0.15:
            end = NOW + timedelta(microseconds=rng.choice([1, -1]))
        else:
            end = NOW + timedelta(seconds=rng.randrange(-30 * 86400, 200 * 86400))
        if rng.random() < 0.05:
            end = end.replace(tzinfo=None)  # no offset: UTC
        device = rng.choice([None, "", f"device-{rng.randrange(n_devices)}"])
        if rng.random() < 0.8 and device is None:
            device = f"device-{rng.randrange(n_devices)}"
        records.append(
            Record(
                validityEndDateTime=end,
                certificateStatus=rng.choice(["active", "active", "active", "revoked", None]),
                devicePlatform=rng.choice(PLATFORMS),
                deviceId=device,
                deviceName=rng.choice([f"PC-{rng.randrange(99)}", None, 7, ""]),
                userPrincipalName=rng.choice(["a@x", "b@x", None]),
                serialNumber=rng.choice(["01", "02", None, "x" * 300]),
                thumbprint=rng.choice(["AA", "BB"]),
            )
        )
    return records


def fold(records: list[Record], keep: int | None = None, page: int = 100) -> Any:
    devices = DeviceFold(NOW.timestamp(), WINDOWS, keep=keep)
    for start in range(0, len(records), page):
        devices.add(records[start : start + page])
    return devices.result()


@pytest.mark.parametrize("seed", range(12))
def test_fold_equals_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    records = random_records(rng, n=rng.choice([0, 5, 300, 3000]), n_devices=rng.choice([3, 400]))
    want = reference(records, NOW)
    got = fold(records)
    assert dict(got.devices) == want["devices"]
    assert [(d, dict(m)) for d, m in got.expiring] == want["expiring"]
    assert [(d, dict(m)) for d, m in got.renewal_due] == want["due"]
    assert got.without_device == want["without"]
    assert got.complete_until is None
    assert list(got.rows) == want["rows"][:DRILLDOWN_CAP]
    for days in (1, 7, 8, 90):
        bound = (NOW + timedelta(days=days)).timestamp()
        assert got.at_risk(days) == sum(1 for r in want["rows"] if r.end <= bound)


@pytest.mark.parametrize("seed", range(8))
def test_bounded_candidates_stay_exact_before_the_first_dropped(seed: int) -> None:
    rng = random.Random(100 + seed)
    records = random_records(rng, n=4000, n_devices=1500)
    want = reference(records, NOW)
    got = fold(records, keep=20, page=37)
    # The aggregates never depend on the bound.
    assert dict(got.devices) == want["devices"]
    assert [(d, dict(m)) for d, m in got.expiring] == want["expiring"]
    assert got.complete_until is not None
    exact = [r for r in want["rows"] if r.end < got.complete_until]
    assert list(got.rows[: len(exact)]) == exact
    assert all(r.end <= got.complete_until for r in got.rows)
    assert set(got.rows) <= set(want["rows"])


def test_renewal_supersedes_and_ties_break_by_platform_then_serial() -> None:
    soon, later = NOW + timedelta(days=3), NOW + timedelta(days=300)
    records = [
        # renewed: the old certificate ends soon, the new one in 300 days (either order)
        Record(soon, deviceId="renewed-a", deviceName="A"),
        Record(later, deviceId="renewed-a", deviceName="A"),
        Record(later, deviceId="renewed-b", devicePlatform="MacOS"),
        Record(soon, deviceId="renewed-b", devicePlatform="MacOS"),
        # not renewed
        Record(soon, deviceId="stuck", deviceName="STUCK", serialNumber="09"),
        # tie on the end: the smaller platform label wins, then the smaller serial
        Record(soon, deviceId="tie", devicePlatform="iOS", serialNumber="2"),
        Record(soon, deviceId="tie", devicePlatform="Android", serialNumber="3"),
        Record(soon, deviceId="tie", devicePlatform="Android", serialNumber="1"),
        # without a device, whatever the status; not active; expired
        Record(soon, deviceId=None),
        Record(soon, deviceId="", certificateStatus="revoked"),
        Record(soon, deviceId="revoked", certificateStatus="revoked"),
        Record(NOW, deviceId="expired-now"),
    ]
    got = fold(records)
    assert dict(got.devices) == {"iOS": 2, "MacOS": 1, "Android": 1}
    assert dict(dict(got.expiring)[7]) == {"iOS": 1, "MacOS": 0, "Android": 1}
    assert dict(dict(got.renewal_due)[7]) == {"iOS": 2, "MacOS": 1, "Android": 1}
    assert got.without_device == 2
    assert [(r.device_id, r.platform, r.serial_number) for r in got.rows] == sorted(
        [("stuck", "iOS", "09"), ("tie", "Android", "1")], key=lambda t: t[0]
    )


def test_the_table_grows_past_many_devices() -> None:
    end = NOW + timedelta(days=100)
    records = [Record(end + timedelta(seconds=n), deviceId=f"d{n}") for n in range(50_000)]
    got = fold(records, page=1000)
    assert dict(got.devices) == {"iOS": 50_000}
    assert dict(dict(got.expiring)[90]) == {"iOS": 0}
    assert got.rows == ()


def test_no_windows_and_no_records() -> None:
    got = DeviceFold(NOW.timestamp(), ()).result()
    assert dict(got.devices) == {}
    assert got.expiring == ()
    assert got.rows == ()


# ---------------------------------------------------------- through the real decoder


def _leaf(**fields: object) -> dict[str, object]:
    record: dict[str, object] = {
        "certificateStatus": "active",
        "devicePlatform": "iOS",
        "validityStartDateTime": "2026-01-01T00:00:00Z",
        "validityEndDateTime": "2026-11-28T00:00:00Z",
        "deviceId": "d-1",
        "deviceName": "iPhone-1",
        "userPrincipalName": "ann@contoso.example",
        "serialNumber": "01",
        "thumbprint": "AA",
    }
    record.update(fields)
    return record


def _decoded_fold(records: list[object]) -> tuple[Any, Any]:
    from pki_exporter.aggregate.certificates import Fold
    from pki_exporter.graph.records import decode_leaf_page

    folding = Fold(NOW.timestamp(), WINDOWS)
    decoded = decode_leaf_page(json.dumps({"value": records}).encode())
    folding.add(decoded.records)
    folding.add_invalid(decoded.invalid)
    return folding.result(), folding.devices.result()


def test_device_id_types_and_display_fields_as_decoded() -> None:
    records: list[object] = [
        _leaf(),
        _leaf(deviceId=7),  # not a string: the record is invalid
        _leaf(deviceId={"id": "x"}),  # invalid too
        _leaf(deviceId=None),  # without device
        _leaf(deviceId=""),  # without device
        {k: v for k, v in _leaf().items() if k != "deviceId"},  # without device
        _leaf(deviceId="d-2", deviceName=42, serialNumber=None, thumbprint=["x"]),  # valid
        _leaf(deviceId="d-3", deviceName="\ud800cut", userPrincipalName="x" * 300),
    ]
    leaves, devices = _decoded_fold(records)
    assert leaves.invalid == 2
    assert leaves.total == 6
    assert devices.without_device == 3
    assert dict(devices.devices) == {"iOS": 3}
    rows = {row.device_id: row for row in devices.rows}
    assert rows["d-1"].device_name == "iPhone-1" and rows["d-1"].serial_number == "01"
    assert (rows["d-2"].device_name, rows["d-2"].serial_number, rows["d-2"].thumbprint) == (
        None,
        None,
        None,
    )
    # A lone surrogate costs the field, not the record; long values are cut.
    assert rows["d-3"].device_name is None
    assert rows["d-3"].user == "x" * 256


def test_more_platforms_than_sixteen_bits() -> None:
    end = NOW + timedelta(days=200)
    records = [Record(end, devicePlatform=f"P{n}", deviceId=f"d{n}") for n in range(70_000)]
    got = fold(records, page=5000)
    assert len(got.devices) == 70_000
    assert got.devices["P69999"] == 1


def test_a_presized_table_folds_the_same() -> None:
    records = random_records(random.Random(5), n=3000, n_devices=2500)
    plain = fold(records)
    devices = DeviceFold(NOW.timestamp(), WINDOWS, expected_devices=2400)
    devices.add(records)
    assert devices.result() == plain
