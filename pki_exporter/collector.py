"""Snapshots -> metric families, fresh on every collect.

Nothing here is proportional to the number of certificates: the fold already reduced
them. A CA that vanished from the Store vanishes from the output by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pki_exporter import __version__, clock
from pki_exporter.state import REASONS, Store

PREFIX = "intune_cloudpki_"
CA_LABELS = ("tenant", "ca_id", "ca")
_READ = "Read from Microsoft Graph every refresh.interval, not at scrape time."


def _help(text: str) -> str:
    return f"{text} {_READ}"


class ExporterCollector(Collector):
    """Yields every metric of the spec from the Store's current snapshots."""

    def __init__(self, store: Store, before_collect: Callable[[], None] | None = None) -> None:
        self._store = store
        self._before_collect = before_collect

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: the families depend on what Graph returned.
        return []

    def collect(self) -> Iterator[Metric]:
        if self._before_collect is not None:
            self._before_collect()
        tenants = self._store.tenants
        now = clock.now()
        leaf = GaugeMetricFamily(
            PREFIX + "leaf_certificates",
            _help("Leaf certificates of the CA by Graph's certificateStatus and devicePlatform."),
            labels=[*CA_LABELS, "status", "platform"],
        )
        earliest = GaugeMetricFamily(
            PREFIX + "leaf_certificate_earliest_expiry_timestamp_seconds",
            _help("Earliest validityEndDateTime among active, unexpired leaf certificates."),
            labels=CA_LABELS,
        )
        earliest_days = GaugeMetricFamily(
            PREFIX + "leaf_certificate_earliest_expiry_days",
            "Days from now (computed at scrape time) to the earliest expiry of an active, unexpired leaf "
            "certificate; the expiry itself is read from Microsoft Graph every refresh.interval.",
            labels=CA_LABELS,
        )
        expiring = GaugeMetricFamily(
            PREFIX + "leaf_certificates_expiring",
            _help(
                "Active leaf certificates with now < validityEndDateTime <= now + within_days days."
            ),
            labels=[*CA_LABELS, "within_days"],
        )
        issuance = GaugeMetricFamily(
            PREFIX + "leaf_certificate_latest_issuance_timestamp_seconds",
            _help(
                "Latest validityStartDateTime among the CA's leaf certificates (stalled issuance shows here)."
            ),
            labels=CA_LABELS,
        )
        info = GaugeMetricFamily(
            PREFIX + "ca_info",
            _help("The certification authority resource itself (value 1)."),
            labels=[*CA_LABELS, "status", "type", "key_size", "hashing_algorithm", "key_platform"],
        )
        ca_expiry = GaugeMetricFamily(
            PREFIX + "ca_certificate_expiry_timestamp_seconds",
            _help("validityEndDateTime of the CA's own certificate."),
            labels=CA_LABELS,
        )
        invalid = GaugeMetricFamily(
            PREFIX + "leaf_certificates_invalid",
            _help(
                "Leaf certificate records of the last refresh that could not be read and were left out."
            ),
            labels=CA_LABELS,
        )
        success = GaugeMetricFamily(
            PREFIX + "refresh_success",
            "1 if the last refresh of this CA from Microsoft Graph succeeded, else 0.",
            labels=CA_LABELS,
        )
        last_success = GaugeMetricFamily(
            PREFIX + "refresh_last_success_timestamp_seconds",
            "When the data now served for this CA was read from Microsoft Graph.",
            labels=CA_LABELS,
        )
        duration = GaugeMetricFamily(
            PREFIX + "refresh_duration_seconds",
            "Duration of the last refresh of this CA from Microsoft Graph.",
            labels=CA_LABELS,
        )
        failures = CounterMetricFamily(
            PREFIX + "refresh_failures",
            "Failed refreshes of this CA from Microsoft Graph, by reason.",
            labels=[*CA_LABELS, "reason"],
        )
        requests = CounterMetricFamily(
            PREFIX + "graph_requests",
            "HTTP requests to Microsoft Graph by status code.",
            labels=["tenant", "code"],
        )
        up = GaugeMetricFamily(
            PREFIX + "tenant_up",
            "1 if the last token request and CA discovery for the tenant succeeded, else 0.",
            labels=["tenant"],
        )
        for tenant in tenants.values():
            if tenant.attempted or tenant.up:
                up.add_metric([tenant.name], 1.0 if tenant.up else 0.0)
            for code, count in sorted(tenant.graph_requests.items()):
                requests.add_metric([tenant.name, code], float(count))
            for ca in tenant.cas.values():
                labels = [tenant.name, ca.ca_id, ca.label]
                if ca.attempted:
                    success.add_metric(labels, 1.0 if ca.last_success else 0.0)
                    if ca.last_duration is not None:
                        duration.add_metric(labels, ca.last_duration)
                for reason in REASONS:
                    failures.add_metric([*labels, reason], float(ca.failures.get(reason, 0)))
                snapshot = ca.snapshot
                if snapshot is None:
                    continue
                last_success.add_metric(labels, snapshot.read_at)
                leaves = snapshot.leaves
                for (status, platform), count in sorted(leaves.counts.items()):
                    leaf.add_metric([*labels, status, platform], float(count))
                if leaves.earliest_expiry is not None:
                    earliest.add_metric(labels, leaves.earliest_expiry)
                    earliest_days.add_metric(labels, (leaves.earliest_expiry - now) / 86400.0)
                for days, count in leaves.expiring:
                    expiring.add_metric([*labels, str(days)], float(count))
                if leaves.latest_issuance is not None:
                    issuance.add_metric(labels, leaves.latest_issuance)
                invalid.add_metric(labels, float(leaves.invalid))
                ca_info = snapshot.info
                info.add_metric(
                    [
                        *labels,
                        ca_info.status,
                        ca_info.type,
                        ca_info.key_size,
                        ca_info.hashing_algorithm,
                        ca_info.key_platform,
                    ],
                    1.0,
                )
                if ca_info.expiry is not None:
                    ca_expiry.add_metric(labels, ca_info.expiry)
        build = GaugeMetricFamily(
            PREFIX + "exporter_build_info", "Version of pki-exporter (value 1).", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield from (
            leaf,
            earliest,
            earliest_days,
            expiring,
            issuance,
            info,
            ca_expiry,
            invalid,
            success,
            last_success,
            duration,
            failures,
            requests,
            up,
            build,
        )
