"""Ground truth: the exact value of every certificate metric for a data set and a "now".

Computed from what the generator meant (`dataset.CAFacts`), following the "Metric
semantics" of docs/design.md, and nothing from the exporter: a test that compares the
exporter's output with these numbers compares two independent implementations.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from datetime import datetime

from pki_exporter.simulator.dataset import DAY, KNOWN_STATUSES, LABEL_MAX, CAData

LEAF_CERTIFICATES = "intune_cloudpki_leaf_certificates"
EARLIEST_EXPIRY = "intune_cloudpki_leaf_certificate_earliest_expiry_timestamp_seconds"
EXPIRING = "intune_cloudpki_leaf_certificates_expiring"
LATEST_ISSUANCE = "intune_cloudpki_leaf_certificate_latest_issuance_timestamp_seconds"
CA_INFO = "intune_cloudpki_ca_info"
CA_EXPIRY = "intune_cloudpki_ca_certificate_expiry_timestamp_seconds"
INVALID = "intune_cloudpki_leaf_certificates_invalid"
METRICS = (
    LEAF_CERTIFICATES,
    EARLIEST_EXPIRY,
    EXPIRING,
    LATEST_ISSUANCE,
    CA_INFO,
    CA_EXPIRY,
    INVALID,
)

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]


def _labels(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def _ca_label(value: object) -> str:
    return value[:LABEL_MAX] if isinstance(value, str) and value else "unknown"


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
    names = {k.lower(): v for k, v in (tenant_names or {}).items()}
    samples: dict[SampleKey, float] = {}
    for ca in cas:
        tenant_spec = ca.tenant.spec
        base = {
            "tenant": names.get(tenant_spec.tenant_id.lower(), tenant_spec.name),
            "ca_id": ca.spec.id,
            "ca": ca.spec.display_name or ca.spec.id,
        }
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
    return samples
