"""Decode and fold of pages already in memory, against ``json.loads`` plus a Python loop.

The pages are exactly what the simulator serves (its own renderer, default data set: ~1.2 KB
records, 2% of them with a real-tenant quirk, a few of those unreadable), so the fast path
and the record-by-record fallback of ``pki_exporter.graph.records`` both run, as they do against a
real tenant. The baseline is what one would write without msgspec: ``json.loads`` of the
page, then a loop over the dicts doing the same aggregation with the same semantics
(docs/design.md: invalid records left out, labels cut to 64, RFC 3339 dates with the 7th
fraction digit rounding). Both must arrive at the same aggregate, or the run stops.
"""

from __future__ import annotations

import gc
import json
import re
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from bench.common import Row, Table, verdict
from pki_exporter.aggregate.certificates import KNOWN_STATUSES, Fold, LeafAggregate
from pki_exporter.graph.records import LABEL_MAX, decode_leaf_page

TARGET = 5.0


def simulator_pages(cas: int, certificates: int, seed: int = 1) -> tuple[list[bytes], float]:
    """The leaf pages of a generated data set, rendered by the simulator, and its anchor."""
    from pki_simulator.dataset import Dataset, generate_spec
    from pki_simulator.render import LeafPages

    spec = generate_spec(seed=seed, cas=cas, certificates=certificates)
    dataset = Dataset(spec)
    pages = LeafPages(dataset, "https://127.0.0.1:8443")
    bodies = [pages.page(ca, n).raw for ca in dataset.all_cas() for n in range(ca.pages)]
    return bodies, spec.anchor.timestamp()


# -- the baseline: what one writes with the standard library ----------------------------

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.(\d+))?(?:[Zz]|[+-]\d{2}:?\d{2})?$"
)


def _parse(value: object) -> datetime | None:
    """RFC 3339 as docs/design.md reads it (the 7th fraction digit rounds; no offset = UTC)."""
    if not isinstance(value, str) or not value.isascii():
        return None
    match = _RFC3339.match(value)
    if match is None or value.endswith("\n"):
        return None
    fraction = match.group(1)
    text = value
    round_up = False
    if fraction and len(fraction) > 6:
        round_up = fraction[6] >= "5"
        text = value.replace("." + fraction, "." + fraction[:6], 1)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        if round_up:
            parsed += timedelta(microseconds=1)
    except (ValueError, OverflowError):
        return None
    return parsed


def _display(value: object) -> str:
    return value[:256] if isinstance(value, str) else ""


def _rank(label: object, record: object) -> tuple[object, ...]:
    """The tie-break between two certificates of a device ending at the same instant."""
    get = record.get  # type: ignore[attr-defined]
    return (
        label,
        _display(get("serialNumber")),
        _display(get("thumbprint")),
        _display(get("deviceName")),
        _display(get("userPrincipalName")),
    )


@dataclass
class Baseline:
    """The figures of one CA as a plain loop over ``json.loads`` output computes them."""

    certificates: LeafAggregate
    devices: dict[str, object]


def baseline_fold(
    bodies: list[bytes], now_ts: float, windows: tuple[int, ...], *, devices: bool
) -> Baseline:
    now = datetime.fromtimestamp(now_ts, tz=UTC)
    bounds = [now + timedelta(days=d) for d in windows]
    buckets = [0] * (len(windows) + 1)
    counts: dict[tuple[str, str], int] = {}
    earliest: datetime | None = None
    latest: datetime | None = None
    invalid = total = without = 0
    # device id -> [latest end, its platform label, earliest end, the latest's record]
    per_device: dict[str, list[Any]] = {}
    for body in bodies:
        page = json.loads(body)
        for record in page["value"]:
            if not isinstance(record, dict):
                invalid += 1
                continue
            status = record.get("certificateStatus")
            platform = record.get("devicePlatform")
            device = record.get("deviceId")
            if not (status is None or isinstance(status, str)) or not (
                platform is None or isinstance(platform, str)
            ):
                invalid += 1
                continue
            if devices and not (device is None or isinstance(device, str)):
                invalid += 1
                continue
            start = _parse(record.get("validityStartDateTime"))
            end = _parse(record.get("validityEndDateTime"))
            if start is None or end is None:
                invalid += 1
                continue
            total += 1
            label = platform[:LABEL_MAX] if platform else "Unknown"
            key = (status[:LABEL_MAX] if status else "unknown", label)
            counts[key] = counts.get(key, 0) + 1
            if latest is None or start > latest:
                latest = start
            if status == "active" and end > now:
                if earliest is None or end < earliest:
                    earliest = end
                buckets[bisect_left(bounds, end)] += 1
            if not devices:
                continue
            if not device:
                without += 1
            elif status == "active" and end > now:
                ts = end.timestamp()
                entry = per_device.get(device)
                if entry is None:
                    per_device[device] = [ts, label, ts, record]
                    continue
                if ts > entry[0] or (
                    ts == entry[0] and _rank(label, record) < _rank(entry[1], entry[3])
                ):
                    entry[0], entry[1], entry[3] = ts, label, record
                if ts < entry[2]:
                    entry[2] = ts
    for platform in {p for _, p in counts}:
        for status in KNOWN_STATUSES:
            counts.setdefault((status, platform), 0)
    running = 0
    expiring = []
    for days, n in zip(windows, buckets, strict=False):
        running += n
        expiring.append((days, running))
    certificates = LeafAggregate(
        counts=counts,
        earliest_expiry=earliest.timestamp() if earliest else None,
        expiring=tuple(expiring),
        latest_issuance=latest.timestamp() if latest else None,
        invalid=invalid,
        total=total,
    )
    summary: dict[str, object] = {}
    if devices:
        limits = [b.timestamp() for b in bounds]
        by_platform: dict[str, int] = {}
        late: dict[int, dict[str, int]] = {d: {} for d in windows}
        due: dict[int, dict[str, int]] = {d: {} for d in windows}
        at_risk = []
        for latest_end, platform, earliest_end, record in per_device.values():
            by_platform[platform] = by_platform.get(platform, 0) + 1
            for days, limit in zip(windows, limits, strict=True):
                if latest_end <= limit:
                    late[days][platform] = late[days].get(platform, 0) + 1
                if earliest_end <= limit:
                    due[days][platform] = due[days].get(platform, 0) + 1
            if limits and latest_end <= limits[-1]:
                at_risk.append((latest_end, record))
        at_risk.sort(key=lambda row: row[0])  # the drill-down: soonest first
        summary = {
            "devices": by_platform,
            "expiring": {d: {p: late[d].get(p, 0) for p in by_platform} for d in windows},
            "renewal_due": {d: {p: due[d].get(p, 0) for p in by_platform} for d in windows},
            "without_device": without,
            "at_risk": len(at_risk),
        }
    return Baseline(certificates, summary)


class _NoDevices:
    def add(self, records: object) -> None:
        pass

    def add_invalid(self, count: int) -> None:
        pass


def exporter_fold(
    bodies: list[bytes], now_ts: float, windows: tuple[int, ...], *, devices: bool
) -> Baseline:
    """What ``GraphClient.fold_leaves`` does with each page body (without the per-device
    state when ``devices`` is false: the certificate figures alone)."""
    fold = Fold(now_ts, windows)
    if not devices and hasattr(fold, "devices"):
        fold.devices = _NoDevices()  # type: ignore[assignment]
    for body in bodies:
        page = decode_leaf_page(body)
        fold.add(page.records)
        fold.add_invalid(page.invalid)
    certificates = fold.result()
    summary: dict[str, object] = {}
    if devices and hasattr(fold, "devices"):
        result = fold.devices.result()
        summary = {
            "devices": dict(result.devices),
            "expiring": {d: dict(m) for d, m in result.expiring},
            "renewal_due": {d: dict(m) for d, m in result.renewal_due},
            "without_device": result.without_device,
            "at_risk": len(result.at_risk_ends),
        }
    return Baseline(certificates, summary)


@dataclass
class Timing:
    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)


def _time(fn: Callable[..., object], *args: object, repeat: int, **kwargs: object) -> Timing:
    seconds = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn(*args, **kwargs)
        seconds.append(time.perf_counter() - started)
    return Timing(seconds)


def run(table: Table, *, quick: bool = False) -> None:
    certificates = 20_000 if quick else 50_000
    cas = 2
    print(
        f"\n== decode + fold: {cas} CAs x {certificates:,} certificates, simulator pages, in memory"
    )
    bodies, now = simulator_pages(cas, certificates)
    windows = (7, 30, 90)
    size = sum(map(len, bodies))
    records = cas * certificates
    variants = (False, True) if hasattr(Fold(now, windows), "devices") else (False,)
    for devices in variants:
        ours = exporter_fold(bodies, now, windows, devices=devices)
        theirs = baseline_fold(bodies, now, windows, devices=devices)
        if ours.certificates.invalid != theirs.certificates.invalid and not devices:
            # Without the device rules, a wrong-typed deviceId is no reason to leave a record
            # out; the exporter always applies them. Compare the certificate figures only
            # where both read the same records.
            theirs = baseline_fold(bodies, now, windows, devices=True)
            theirs.devices = {}
        if ours != theirs:
            raise SystemExit(f"decode+fold and the baseline disagree:\n{ours}\n{theirs}")
        what = "certificate and device figures" if devices else "certificate figures"
        print(f"   {what}: both agree on every figure ({ours.certificates.invalid} unreadable)")
    # Interleaved, best of N: the machine is noisy, the best run is the least disturbed.
    timed: dict[str, list[float]] = {}
    jobs: dict[str, Callable[[], object]] = {
        "decode": lambda: [decode_leaf_page(b) for b in bodies],
        "loads": lambda: [json.loads(b) for b in bodies],
    }
    for devices in variants:
        jobs[f"ours {devices}"] = partial(exporter_fold, bodies, now, windows, devices=devices)
        jobs[f"base {devices}"] = partial(baseline_fold, bodies, now, windows, devices=devices)
    for _ in range(4 if quick else 7):
        for name, job in jobs.items():
            timed.setdefault(name, []).extend(_time(job, repeat=1).seconds)
    best = {name: min(seconds) for name, seconds in timed.items()}
    print(
        f"   {len(bodies)} pages, {size / 1e6:.0f} MB, {records:,} records; msgspec decode "
        f"alone {size / best['decode'] / 1e6:.0f} MB/s, json.loads alone "
        f"{size / best['loads'] / 1e6:.0f} MB/s"
    )
    for devices in variants:
        mine, base = best[f"ours {devices}"], best[f"base {devices}"]
        ratio = base / mine
        what = "certificate and device figures" if devices else "certificate figures"
        table.add(
            Row(
                f"decode + fold ({what}), in-memory pages",
                f"{mine:.3f} s = {size / mine / 1e6:.0f} MB/s, {records / mine:,.0f} records/s",
                f"json.loads + loop {base:.3f} s = {size / base / 1e6:.0f} MB/s, "
                f"{records / base:,.0f} records/s",
                f"{ratio:.1f}x",
                f">= {TARGET:.0f}x",
                verdict(ratio >= TARGET),
            )
        )
    pages = len(bodies)
    split = [
        f"decode {best['decode'] / pages * 1e3:.2f} ms",
        f"certificate fold {(best['ours False'] - best['decode']) / pages * 1e3:.2f} ms",
    ]
    if True in variants:
        split.append(f"device fold {(best['ours True'] - best['ours False']) / pages * 1e3:.2f} ms")
    table.add(
        Row(
            "where a page's CPU goes (1,000 records, 1.2 MB, one thread, best runs)",
            ", ".join(split),
            f"json.loads alone {best['loads'] / pages * 1e3:.2f} ms",
            "-",
            "(explains the refresh rows)",
            "-",
        )
    )
