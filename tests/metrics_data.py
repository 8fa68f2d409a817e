"""Hand-made CA states for the collector and exposition tests (no Graph, no fold)."""

from __future__ import annotations

from array import array
from collections.abc import Mapping

from pki_exporter.aggregate.certificates import LeafAggregate
from pki_exporter.aggregate.devices import DeviceAggregate
from pki_exporter.graph.records import CARecord
from pki_exporter.state import CASnapshot

NOW = 1_795_000_000.0
"""The frozen clock of these tests (2026-11-18)."""
DAY = 86400.0


def snapshot(
    ca_id: str,
    *,
    counts: Mapping[tuple[str, str], int] | None = None,
    earliest: float | None = NOW + 10 * DAY,
    expiring: tuple[tuple[int, int], ...] = ((7, 0), (30, 2)),
    latest_issuance: float | None = NOW - 2 * DAY,
    invalid: int = 0,
    devices: Mapping[str, int] | None = None,
    devices_expiring: tuple[tuple[int, Mapping[str, int]], ...] | None = None,
    renewal_due: tuple[tuple[int, Mapping[str, int]], ...] | None = None,
    without_device: int = 0,
    read_at: float = NOW - 60,
    display_name: str | None = "Issuing CA",
    ca_expiry: float | None = NOW + 400 * DAY,
    status: str = "active",
) -> CASnapshot:
    counts = {("active", "windows"): 3, ("revoked", "android"): 1} if counts is None else counts
    devices = {"windows": 2} if devices is None else devices
    leaves = LeafAggregate(
        counts, earliest, expiring, latest_issuance, invalid, sum(counts.values()) + invalid
    )
    figures = DeviceAggregate(
        devices,
        ((7, {"windows": 0}), (30, {"windows": 1}))
        if devices_expiring is None
        else devices_expiring,
        ((7, {"windows": 0}), (30, {"windows": 2})) if renewal_due is None else renewal_due,
        without_device,
        array("d"),
        (),
        None,
        30,
        read_at,
    )
    info = CARecord(
        ca_id,
        display_name,
        status,
        "issuingCertificateAuthority",
        "rsa2048",
        "sha256",
        "software",
        ca_expiry,
    )
    return CASnapshot(info, leaves, read_at, figures)
