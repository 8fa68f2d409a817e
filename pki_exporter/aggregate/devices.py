"""Per-device renewal state of one CA during a refresh, and what it comes to.

A device that renewed keeps its old certificate until it lapses, so counting certificates
that end soon counts devices that are fine. What matters is each device's *latest-ending*
active certificate: when that one ends within N days, the device did not renew. Finding it
needs one entry per device for the length of a refresh; a tenant can have a million
devices, so the entries live in an open-addressing table (linear probing, at most 2/3
full, grown by half) of four arrays: the 64-bit hash of the deviceId, the latest end,
the first window holding the earliest end, the platform's index. 20 bytes a slot, 30-45
bytes a device, instead of the ~150 bytes a ``dict`` of Python ints costs. The table is
dropped when the refresh ends; the snapshot keeps only the aggregates, the sorted ends of
the devices at risk (8 bytes each) and the drill-down rows.

The drill-down rows (device, user, serial number...) are kept only for records inside the
largest window, at most ``keep`` devices at a time: when there are more, those ending last
are dropped and the list is from then on exact only up to the first dropped one
(``complete_until``). The exact rules are in docs/design.md, "Metric semantics".
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from pki_exporter.graph.records import LABEL_MAX

DISPLAY_MAX = 256
"""Longest device name, user, serial number or thumbprint kept for the drill-down."""

DRILLDOWN_CAP = 1000
"""Rows the drill-down lists at most for one CA and window (``?limit=`` up to this)."""

_EMPTY = 0
"""Key of a free slot; a deviceId that hashes to 0 is stored as 1 (a collision like any other)."""
_MAX_H = 0xFFFF
"""Platform indexes fit in 16 bits until this many labels, then the array widens."""


class DeviceRecordLike(Protocol):
    """The fields of a leaf record the per-device state reads."""

    @property
    def validityEndDateTime(self) -> datetime: ...
    @property
    def certificateStatus(self) -> str | None: ...
    @property
    def devicePlatform(self) -> str | None: ...
    @property
    def deviceId(self) -> str | None: ...
    @property
    def deviceName(self) -> object: ...
    @property
    def userPrincipalName(self) -> object: ...
    @property
    def serialNumber(self) -> object: ...
    @property
    def thumbprint(self) -> object: ...


@dataclass(frozen=True, slots=True)
class AtRiskDevice:
    """One drill-down row: a device and its latest-ending active certificate."""

    end: float
    """validityEndDateTime as epoch seconds (``datetime.timestamp()``)."""
    device_id: str
    device_name: str | None
    user: str | None
    platform: str
    serial_number: str | None
    thumbprint: str | None


@dataclass(frozen=True, slots=True)
class DeviceAggregate:
    """What the devices of one CA come to at the time of a refresh."""

    devices: Mapping[str, int]
    """platform -> devices holding at least one active, unexpired certificate."""
    expiring: tuple[tuple[int, Mapping[str, int]], ...]
    """(window in days, platform -> devices whose latest end is within it: they did not
    renew), every platform of ``devices`` present in each (0 when none)."""
    renewal_due: tuple[tuple[int, Mapping[str, int]], ...]
    """(window in days, platform -> devices whose *earliest* active, unexpired certificate
    ends within it: renewal due, done or not); the same platforms as ``expiring``."""
    without_device: int
    """Valid records whose deviceId is null, missing or empty, whatever their status."""
    at_risk_ends: array[float]
    """Latest end of every device at risk within the largest window, ascending."""
    rows: tuple[AtRiskDevice, ...]
    """The soonest devices at risk within the largest window, by (end, device id), at most
    ``DRILLDOWN_CAP``."""
    complete_until: float | None
    """None: ``rows`` hold every device at risk within the largest window (up to the cap).
    Else rows were dropped to bound memory: the list is exact only for ends before this."""
    largest_window: int
    now: float
    """The refresh's "now" (rounded to the microsecond) that every window counts from."""

    def bound(self, within_days: int) -> float:
        """The last instant inside a window of ``within_days`` days."""
        return (datetime.fromtimestamp(self.now, tz=UTC) + timedelta(days=within_days)).timestamp()

    def at_risk(self, within_days: int) -> int:
        """Devices whose latest end is within ``within_days`` days (exact for any window up
        to the largest)."""
        return bisect_right(self.at_risk_ends, self.bound(within_days))

    def complete(self, within_days: int) -> bool:
        """Whether ``rows`` hold every device at risk within ``within_days`` (up to the cap)."""
        return self.complete_until is None or self.bound(within_days) < self.complete_until


EMPTY_DEVICES = DeviceAggregate({}, (), (), 0, array("d"), (), None, 0, 0.0)


_Row = tuple[float, str, str | None, str | None, str, str | None, str | None]
"""An AtRiskDevice while folding (end, device id, name, user, platform, serial, thumbprint):
a tuple costs a third of a frozen dataclass to make, and sorts by (end, device id)."""


def _rank(row: _Row) -> tuple[str, ...]:
    """Tie-break between two certificates of one device ending at the same instant."""
    return (row[4], row[5] or "", row[6] or "", row[2] or "", row[3] or "")


class DeviceFold:
    """Folds leaf records of one CA into per-device state, against a fixed ``now``."""

    __slots__ = (
        "_bound",
        "_bounds",
        "_candidates",
        "_count",
        "_cut_device",
        "_cut_end",
        "_due",
        "_ends",
        "_keep",
        "_keys",
        "_labels",
        "_limit",
        "_now",
        "_now_dt",
        "_platform_index",
        "_platforms",
        "_size",
        "_windows",
        "_without",
    )

    def __init__(
        self,
        now: float,
        windows: Iterable[int],
        keep: int | None = None,
        expected_devices: int = 0,
    ) -> None:
        """``expected_devices`` (the last refresh's count) sizes the table up front: growing
        it means re-inserting every device in Python, the costliest step of a first read."""
        self._windows = tuple(sorted(set(windows)))
        # The same instants as the certificate fold: now rounded to the microsecond.
        self._now_dt = datetime.fromtimestamp(now, tz=UTC)
        self._now = self._now_dt.timestamp()
        self._bounds = [(self._now_dt + timedelta(days=days)).timestamp() for days in self._windows]
        self._bound = self._bounds[-1] if self._bounds else self._now
        self._keep = keep if keep is not None else DRILLDOWN_CAP * max(1, len(self._windows))
        self._without = 0
        self._platform_index: dict[str | None, int] = {}
        self._labels: list[str] = []
        self._candidates: dict[int, _Row] = {}
        # (end, device id) of the first candidate ever dropped: the list is exact before it,
        # and a record at or after it can be dropped at once (+inf: none dropped yet)
        self._cut_end = math.inf
        self._cut_device = ""
        size = 1 << 10
        while size * 2 // 3 < expected_devices * 1.05:
            size = size * 3 // 2
        self._allocate(size)

    def _allocate(self, size: int) -> None:
        self._keys = array("q", bytes(8 * size))
        self._ends = array("d", bytes(8 * size))
        # the first window holding the device's earliest certificate (len(windows): none)
        self._due = array("H", bytes(2 * size))
        wide = "H" if len(self._labels) < _MAX_H else "I"
        self._platforms = array(wide, bytes(array(wide).itemsize * size))
        self._size = size
        self._limit = size * 2 // 3
        self._count = 0

    def _grow(self) -> None:
        old = zip(self._keys, self._ends, self._due, self._platforms, strict=True)
        count = self._count
        self._allocate(len(self._keys) * 3 // 2)
        keys, ends, due, platforms, size = (
            self._keys,
            self._ends,
            self._due,
            self._platforms,
            self._size,
        )
        for key, end, first, p in old:
            if key:  # not _EMPTY
                i = key % size
                while keys[i]:
                    i = i + 1 if i + 1 < size else 0
                keys[i] = key
                ends[i] = end
                due[i] = first
                platforms[i] = p
        self._count = count

    def _platform(self, raw: str | None) -> int:
        index = self._platform_index.get(raw)
        if index is None:
            index = self._platform_index[raw] = len(self._labels)
            self._labels.append(raw[:LABEL_MAX] if raw else "Unknown")
            if index == _MAX_H and self._platforms.typecode == "H":
                self._platforms = array("I", self._platforms)  # more platforms than fit in 16 bits
        return index

    def add(self, records: Iterable[DeviceRecordLike]) -> None:
        """Fold one page of valid records (the hot loop: keep it flat)."""
        now_dt = self._now_dt
        bound = self._bound
        labels = self._labels
        platform_index = self._platform_index
        candidates = self._candidates
        keys, ends, due, platforms = self._keys, self._ends, self._due, self._platforms
        size, count, limit = self._size, self._count, self._limit
        bounds = self._bounds
        outside = len(bounds)
        most = self._keep + self._keep // 4  # a prune drops a fifth: rare, and memory bounded
        cut_end, cut_device = self._cut_end, self._cut_device
        without = 0
        for record in records:
            device = record.deviceId
            if not device:
                without += 1
                continue
            if record.certificateStatus != "active":
                continue
            end_dt = record.validityEndDateTime
            if end_dt.tzinfo is None:
                end_dt = end_dt.replace(tzinfo=UTC)
            if end_dt <= now_dt:
                continue
            end = end_dt.timestamp()
            p = platform_index.get(record.devicePlatform)
            if p is None:
                p = self._platform(record.devicePlatform)
                platforms = self._platforms
            window = bisect_left(bounds, end) if end <= bound else outside
            key = hash(device) or 1
            i = key % size
            while True:
                slot_key = keys[i]
                if slot_key == key:
                    if window < due[i]:  # noqa: PLR1730 - a call to min() costs more
                        due[i] = window
                    known = ends[i]
                    if end > known or (end == known and labels[p] < labels[platforms[i]]):
                        ends[i] = end
                        platforms[i] = p
                        newer: bool | None = True
                    elif end == known and p == platforms[i]:
                        newer = None  # a tie the drill-down row breaks
                    else:
                        newer = False
                    break
                if slot_key == _EMPTY:
                    keys[i] = key
                    ends[i] = end
                    due[i] = window
                    platforms[i] = p
                    count += 1
                    newer = True
                    if count > limit:
                        self._count = count
                        self._grow()
                        keys, ends, due = self._keys, self._ends, self._due
                        platforms, size, limit = self._platforms, self._size, self._limit
                    break
                i = i + 1 if i + 1 < size else 0
            if newer is False:
                continue
            if end > bound or end > cut_end or (end == cut_end and device >= cut_device):
                if newer and key in candidates:
                    del candidates[key]  # renewed beyond the largest window (or the cut)
                continue
            # Inside the largest window: a drill-down row (display fields: strings, cut).
            name, user = record.deviceName, record.userPrincipalName
            serial, thumbprint = record.serialNumber, record.thumbprint
            row: _Row = (
                end,
                device,
                name[:DISPLAY_MAX] if name.__class__ is str else None,
                user[:DISPLAY_MAX] if user.__class__ is str else None,
                labels[p],
                serial[:DISPLAY_MAX] if serial.__class__ is str else None,
                thumbprint[:DISPLAY_MAX] if thumbprint.__class__ is str else None,
            )
            if newer is None:
                known_row = candidates.get(key)
                if known_row is None or _rank(row) >= _rank(known_row):
                    continue
            candidates[key] = row
            if len(candidates) > most:
                self._prune()
                candidates = self._candidates
                cut_end, cut_device = self._cut_end, self._cut_device
        self._count = count
        self._without += without

    def _prune(self) -> None:
        """Keep the ``keep`` soonest candidates; the list is exact only before the first dropped."""
        ranked = sorted(self._candidates.items(), key=lambda kv: kv[1])
        end, device = ranked[self._keep][1][:2]
        self._cut_end, self._cut_device = min((self._cut_end, self._cut_device), (end, device))
        self._candidates = dict(ranked[: self._keep])

    def result(self) -> DeviceAggregate:
        labels = self._labels
        bounds = self._bounds
        n_windows = len(bounds)
        devices = [0] * len(labels)
        # per platform: devices whose latest end falls in (bounds[w-1], bounds[w]]; a device
        # ending exactly on a bound is inside that window (bisect_left)
        buckets = [[0] * (n_windows + 1) for _ in labels]
        due = [[0] * (n_windows + 1) for _ in labels]
        at_risk: list[float] = []
        bound = self._bound
        for key, end, first, p in zip(
            self._keys, self._ends, self._due, self._platforms, strict=True
        ):
            if key == _EMPTY:
                continue
            devices[p] += 1
            buckets[p][n_windows if end > bound else bisect_left(bounds, end)] += 1
            due[p][first] += 1
            if end <= bound:
                at_risk.append(end)
        by_platform: dict[str, int] = {}
        for p, count in enumerate(devices):
            if count:
                by_platform[labels[p]] = by_platform.get(labels[p], 0) + count

        def per_window(counted: list[list[int]]) -> tuple[tuple[int, dict[str, int]], ...]:
            result: list[tuple[int, dict[str, int]]] = []
            for w, days in enumerate(self._windows):
                within: dict[str, int] = dict.fromkeys(by_platform, 0)
                for p, counts in enumerate(counted):
                    if devices[p]:
                        within[labels[p]] += sum(counts[: w + 1])
                result.append((days, within))
            return tuple(result)

        at_risk.sort()
        cut = (self._cut_end, self._cut_device)
        rows = [row for row in sorted(self._candidates.values()) if (row[0], row[1]) < cut]
        return DeviceAggregate(
            devices=by_platform,
            expiring=per_window(buckets),
            renewal_due=per_window(due),
            without_device=self._without,
            at_risk_ends=array("d", at_risk),
            rows=tuple(AtRiskDevice(*row) for row in rows[:DRILLDOWN_CAP]),
            complete_until=None if math.isinf(cut[0]) else cut[0],
            largest_window=self._windows[-1] if self._windows else 0,
            now=self._now,
        )
