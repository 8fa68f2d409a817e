"""Ground truth: the exact value of every certificate metric for a data set and a "now".

Computed from what the generator meant (`dataset.CAFacts`), following the "Metric
semantics" of docs/design.md, and nothing from the exporter: a test that compares the
exporter's output with these numbers compares two independent implementations.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from pki_simulator.dataset import DAY, KNOWN_STATUSES, LABEL_MAX, CAData, DeviceRecord

LEAF_CERTIFICATES = "intune_cloudpki_leaf_certificates"
EARLIEST_EXPIRY = "intune_cloudpki_leaf_certificate_earliest_expiry_timestamp_seconds"
EXPIRING = "intune_cloudpki_leaf_certificates_expiring"
LATEST_ISSUANCE = "intune_cloudpki_leaf_certificate_latest_issuance_timestamp_seconds"
CA_INFO = "intune_cloudpki_ca_info"
CA_EXPIRY = "intune_cloudpki_ca_certificate_expiry_timestamp_seconds"
INVALID = "intune_cloudpki_leaf_certificates_invalid"
DEVICES = "intune_cloudpki_devices"
DEVICES_EXPIRING = "intune_cloudpki_devices_expiring"
DEVICES_RENEWAL_DUE = "intune_cloudpki_devices_renewal_due"
WITHOUT_DEVICE = "intune_cloudpki_leaf_certificates_without_device"
METRICS = (
    LEAF_CERTIFICATES,
    EARLIEST_EXPIRY,
    EXPIRING,
    LATEST_ISSUANCE,
    CA_INFO,
    CA_EXPIRY,
    INVALID,
    DEVICES,
    DEVICES_EXPIRING,
    DEVICES_RENEWAL_DUE,
    WITHOUT_DEVICE,
)

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]


def _labels(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def _ca_label(value: object) -> str:
    return value[:LABEL_MAX] if isinstance(value, str) and value else "unknown"


def ca_labels(ca: CAData, tenant_names: Mapping[str, str] | None) -> dict[str, str]:
    """The ``tenant``, ``ca_id`` and ``ca`` labels of a CA's samples; ``tenant_names`` maps
    tenant ids (any case) to the configured names, else the simulator's own."""
    names = {k.lower(): v for k, v in (tenant_names or {}).items()}
    tenant_spec = ca.tenant.spec
    return {
        "tenant": names.get(tenant_spec.tenant_id.lower(), tenant_spec.name),
        "ca_id": ca.spec.id,
        "ca": ca.spec.display_name or ca.spec.id,
    }


def timestamp(now: datetime | float) -> float:
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now: must be timezone-aware")
        return now.timestamp()
    return float(now)


def expected_samples(
    cas: Iterable[CAData],
    now: datetime | float,
    windows: Iterable[int] = (7, 30, 90),
    tenant_names: Mapping[str, str] | None = None,
) -> dict[SampleKey, float]:
    """Every certificate sample of the given CAs, keyed by (metric, sorted labels)."""
    now_ts = timestamp(now)
    windows = tuple(windows)
    samples: dict[SampleKey, float] = {}
    for ca in cas:
        base = ca_labels(ca, tenant_names)
        record = ca.record()
        samples[
            (
                CA_INFO,
                _labels(
                    **base,
                    status=_ca_label(record.get("certificationAuthorityStatus")),
                    type=_ca_label(record.get("cloudCertificationAuthorityType")),
                    key_size=_ca_label(record.get("certificateKeySize")),
                    hashing_algorithm=_ca_label(
                        record.get("cloudCertificationAuthorityHashingAlgorithm")
                    ),
                    key_platform=_ca_label(record.get("keyPlatform")),
                ),
            )
        ] = 1.0
        samples[(CA_EXPIRY, _labels(**base))] = float(ca.valid_until_ts)

        facts = ca.facts()
        samples[(INVALID, _labels(**base))] = float(facts.invalid)
        platforms = {platform for _, platform in facts.counts}
        for platform in platforms:
            for status in KNOWN_STATUSES:
                key = (LEAF_CERTIFICATES, _labels(**base, status=status, platform=platform))
                samples[key] = 0.0
        for (status, platform), count in facts.counts.items():
            key = (LEAF_CERTIFICATES, _labels(**base, status=status, platform=platform))
            samples[key] = float(count)
        ends = facts.active_ends
        first_unexpired = bisect.bisect_right(ends, now_ts)
        if first_unexpired < len(ends):
            samples[(EARLIEST_EXPIRY, _labels(**base))] = ends[first_unexpired]
        for days in windows:
            within = bisect.bisect_right(ends, now_ts + days * DAY) - first_unexpired
            samples[(EXPIRING, _labels(**base, within_days=str(days)))] = float(within)
        if facts.latest_start is not None:
            samples[(LATEST_ISSUANCE, _labels(**base))] = facts.latest_start

        samples[(WITHOUT_DEVICE, _labels(**base))] = float(facts.no_device)
        latest = latest_per_device(ca, now_ts)
        earliest = earliest_per_device(ca, now_ts)
        for device in latest.values():
            key = (DEVICES, _labels(**base, platform=device.platform))
            samples[key] = samples.get(key, 0.0) + 1.0
            for days in windows:
                key = (
                    DEVICES_EXPIRING,
                    _labels(**base, within_days=str(days), platform=device.platform),
                )
                ending = 1.0 if device.end <= now_ts + days * DAY else 0.0
                samples[key] = samples.get(key, 0.0) + ending
                key = (
                    DEVICES_RENEWAL_DUE,
                    _labels(**base, within_days=str(days), platform=device.platform),
                )
                due = 1.0 if earliest[device.device_id] <= now_ts + days * DAY else 0.0
                samples[key] = samples.get(key, 0.0) + due
    return samples


def _tie_break(record: DeviceRecord) -> tuple[str, ...]:
    return (
        record.platform,
        record.serial_number or "",
        record.thumbprint or "",
        record.device_name or "",
        record.user or "",
    )


def latest_per_device(ca: CAData, now: datetime | float) -> dict[str, DeviceRecord]:
    """device id -> its latest-ending active certificate still valid at ``now``.

    Ties on the end go to the smallest platform label, then the smallest serial number,
    thumbprint, device name and user (missing counts as empty), as docs/design.md says.
    """
    now_ts = timestamp(now)
    latest: dict[str, DeviceRecord] = {}
    for record in ca.device_records():
        if record.end <= now_ts:
            continue
        known = latest.get(record.device_id)
        if (
            known is None
            or record.end > known.end
            or (record.end == known.end and _tie_break(record) < _tie_break(known))
        ):
            latest[record.device_id] = record
    return latest


def earliest_per_device(ca: CAData, now: datetime | float) -> dict[str, float]:
    """device id -> the earliest end among its active certificates still valid at ``now``."""
    now_ts = timestamp(now)
    earliest: dict[str, float] = {}
    for record in ca.device_records():
        if record.end > now_ts and record.end < earliest.get(record.device_id, float("inf")):
            earliest[record.device_id] = record.end
    return earliest


def devices_at_risk(ca: CAData, now: datetime | float, within_days: int) -> list[dict[str, object]]:
    """The drill-down rows: devices whose latest-ending active certificate ends within
    ``within_days`` of ``now``, soonest first (then by device id), as the exporter's
    ``/certificates?format=json`` lists them."""
    now_ts = timestamp(now)
    bound = now_ts + within_days * DAY
    rows = sorted(
        (r for r in latest_per_device(ca, now_ts).values() if r.end <= bound),
        key=lambda r: (r.end, r.device_id),
    )
    return [
        {
            "device_id": r.device_id,
            "device_name": r.device_name,
            "user": r.user,
            "platform": r.platform,
            "serial_number": r.serial_number,
            "thumbprint": r.thumbprint,
            "end": format_end(r.end),
            "end_timestamp": r.end,
        }
        for r in rows
    ]


def format_end(ts: float) -> str:
    """An end instant as the drill-down writes it: RFC 3339 in UTC, microseconds only
    when there are some."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
