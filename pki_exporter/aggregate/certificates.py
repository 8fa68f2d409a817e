"""Pages -> per-CA aggregates.

The fold sees each page once and keeps only counters and extremes, so memory does not
grow with the number of certificates. Dates stay ``datetime`` objects while folding:
comparing them is done in C, converting a million of them to floats is not free.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pki_exporter.aggregate.devices import DeviceFold
from pki_exporter.aggregate.revocations import RevocationFold
from pki_exporter.graph.records import LABEL_MAX, LeafRecord

KNOWN_STATUSES = ("active", "revoked", "expired")
"""Exported for every platform present, 0 where there is none, so queries need no `or vector(0)`."""


@dataclass(frozen=True, slots=True)
class LeafAggregate:
    """What one complete read of a CA's leaf certificates comes to."""

    counts: Mapping[tuple[str, str], int]
    """(status, platform) -> certificates, with the known statuses filled in per platform."""
    earliest_expiry: float | None
    expiring: tuple[tuple[int, int], ...]
    """(window in days, active certificates with now < end <= now + window)."""
    latest_issuance: float | None
    invalid: int
    total: int


class Fold:
    """Accumulates leaf records of one CA, page by page, against a fixed ``now``."""

    __slots__ = (
        "_bounds",
        "_buckets",
        "_counts",
        "_earliest",
        "_invalid",
        "_latest",
        "_now",
        "_windows",
        "devices",
        "revocations",
    )

    def __init__(
        self,
        now: float,
        windows: Iterable[int],
        expected_devices: int = 0,
        *,
        revocations: bool = False,
        ca_crl_url: str | None = None,
    ) -> None:
        """``revocations``: also fold what the CRL checks need (``crl.enabled``), with the
        CA's own CRL URL ``ca_crl_url``."""
        self._windows = tuple(sorted(set(windows)))
        self._now = datetime.fromtimestamp(now, tz=UTC)
        self._bounds = [self._now + timedelta(days=days) for days in self._windows]
        self._buckets = [0] * (len(self._windows) + 1)
        self._counts: dict[tuple[str | None, str | None], int] = {}
        self._earliest: datetime | None = None
        self._latest: datetime | None = None
        self._invalid = 0
        self.devices = DeviceFold(now, self._windows, expected_devices=expected_devices)
        """The per-device state of the same records (docs/design.md, "Devices")."""
        self.revocations = RevocationFold(now, ca_crl_url) if revocations else None
        """The CRLs named and the revoked certificates (pki_exporter/aggregate/revocations.py)."""

    def add_invalid(self, count: int) -> None:
        self._invalid += count

    def add(self, records: list[LeafRecord]) -> None:
        """Fold one page of records (the hot loop: keep it flat)."""
        counts = self._counts
        now = self._now
        bounds = self._bounds
        buckets = self._buckets
        earliest = self._earliest
        latest = self._latest
        for record in records:
            status = record.certificateStatus
            key = (status, record.devicePlatform)
            counts[key] = counts.get(key, 0) + 1
            start = record.validityStartDateTime
            if start.tzinfo is None:
                start = start.replace(tzinfo=UTC)
            if latest is None or start > latest:
                latest = start
            if status == "active":
                end = record.validityEndDateTime
                if end.tzinfo is None:
                    end = end.replace(tzinfo=UTC)
                if end > now:
                    if earliest is None or end < earliest:
                        earliest = end
                    buckets[bisect_left(bounds, end)] += 1
        self._earliest = earliest
        self._latest = latest
        self.devices.add(records)
        if self.revocations is not None:
            self.revocations.add(records)

    def result(self) -> LeafAggregate:
        counts: dict[tuple[str, str], int] = {}
        total = 0
        for (status, platform), n in self._counts.items():
            key = (
                status[:LABEL_MAX] if status else "unknown",
                platform[:LABEL_MAX] if platform else "Unknown",
            )
            counts[key] = counts.get(key, 0) + n
            total += n
        for platform in {platform for _, platform in counts}:
            for status in KNOWN_STATUSES:
                counts.setdefault((status, platform), 0)
        expiring = []
        running = 0
        for days, in_bucket in zip(self._windows, self._buckets, strict=False):
            running += in_bucket
            expiring.append((days, running))
        return LeafAggregate(
            counts=counts,
            earliest_expiry=self._earliest.timestamp() if self._earliest else None,
            expiring=tuple(expiring),
            latest_issuance=self._latest.timestamp() if self._latest else None,
            invalid=self._invalid,
            total=total,
        )
