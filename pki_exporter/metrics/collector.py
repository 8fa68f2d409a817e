"""Snapshots -> metric families.

Nothing here is proportional to the number of certificates: the fold already reduced
them. A CA that vanished from the Store vanishes from the output by construction.

A scrape must stay cheap while a refresh keeps the interpreter busy (docs/performance.md):
the families read from the CA states are built once per change of those states and reused,
each as a ``Composite`` of one part per CA, a part kept for as long as its CA's state is
the same object (the Store keeps the object of a CA that did not change). The render
cache (metrics/exposition.py) keeps the text of each family and part it has rendered for
as long as the same object comes back, so that a scrape renders only what changed since
the last one (the request counters, the scrape-time ``_days`` gauge, the process metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pki_exporter import __version__
from pki_exporter.crl.model import REASONS as CRL_REASONS
from pki_exporter.metrics.exposition import Composite
from pki_exporter.runtime import clock
from pki_exporter.state import REASONS, CAState, Store, TenantState

PREFIX = "intune_cloudpki_"
CA_LABELS = ("tenant", "ca_id", "ca")
_READ = "Read from Microsoft Graph every refresh.interval, not at scrape time."


def _help(text: str) -> str:
    return f"{text} {_READ}"


_Version = tuple[tuple[str, Mapping[str, CAState]], ...]
_Family = GaugeMetricFamily | CounterMetricFamily


def _same_cas(a: _Version, b: _Version) -> bool:
    """Whether two reads of the Store hold the very same CA states (copy-on-write: a CA
    whose state changed comes in a new mapping)."""
    return len(a) == len(b) and all(
        x[0] == y[0] and x[1] is y[1] for x, y in zip(a, b, strict=True)
    )


class CAFamilies(NamedTuple):
    """The families read from the CA states, by name, in the order they are exposed
    (the scrape-time ``leaf_certificate_earliest_expiry_days`` goes after the first two)."""

    leaf_certificates: _Family
    leaf_certificate_earliest_expiry_timestamp_seconds: _Family
    leaf_certificates_expiring: _Family
    leaf_certificate_latest_issuance_timestamp_seconds: _Family
    ca_info: _Family
    ca_certificate_expiry_timestamp_seconds: _Family
    leaf_certificates_invalid: _Family
    devices: _Family
    devices_expiring: _Family
    devices_renewal_due: _Family
    leaf_certificates_without_device: _Family
    refresh_success: _Family
    refresh_last_success_timestamp_seconds: _Family
    refresh_duration_seconds: _Family
    refresh_failures: _Family
    crl_fetch_success: _Family
    crl_fetch_failures: _Family
    crl_last_update_timestamp_seconds: _Family
    crl_next_update_timestamp_seconds: _Family
    crl_revoked_certificates: _Family
    crl_size_bytes: _Family
    leaf_certificates_revoked_unpublished: _Family


class _Merged(NamedTuple):
    """``CAFamilies``, each the ``Composite`` of one part per CA."""

    leaf_certificates: Composite
    leaf_certificate_earliest_expiry_timestamp_seconds: Composite
    leaf_certificates_expiring: Composite
    leaf_certificate_latest_issuance_timestamp_seconds: Composite
    ca_info: Composite
    ca_certificate_expiry_timestamp_seconds: Composite
    leaf_certificates_invalid: Composite
    devices: Composite
    devices_expiring: Composite
    devices_renewal_due: Composite
    leaf_certificates_without_device: Composite
    refresh_success: Composite
    refresh_last_success_timestamp_seconds: Composite
    refresh_duration_seconds: Composite
    refresh_failures: Composite
    crl_fetch_success: Composite
    crl_fetch_failures: Composite
    crl_last_update_timestamp_seconds: Composite
    crl_next_update_timestamp_seconds: Composite
    crl_revoked_certificates: Composite
    crl_size_bytes: Composite
    leaf_certificates_revoked_unpublished: Composite


class ExporterCollector(Collector):
    """Yields every metric of the spec from the Store's current snapshots.

    A scrape reads the Store once: every family of one scrape, the ``--storage.path``
    ones (``storage_write_failures`` given) included, comes from the same states, so
    that no scrape shows a CA refreshed in one family and not yet in another."""

    def __init__(
        self, store: Store, storage_write_failures: Callable[[], int] | None = None
    ) -> None:
        self._store = store
        self._storage_write_failures = storage_write_failures
        self._cached: tuple[_Version, _Merged] | None = None
        self._parts: dict[tuple[str, str], tuple[CAState, CAFamilies]] = {}
        self._headers = ca_families()
        """One empty family per metric: the header of every ``Composite``."""
        self._build = GaugeMetricFamily(
            PREFIX + "exporter_build_info", "Version of pki-exporter (value 1).", labels=["version"]
        )
        self._build.add_metric([__version__], 1.0)

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: the families depend on what Graph returned.
        return []

    def collect(self) -> Iterator[Metric]:
        tenants = self._store.tenants
        now = clock.now()
        # The Store swaps a tenant's CA mapping whenever one of its CAs changes state; the
        # request counters and the tenant's status change without touching it.
        version = tuple((tenant.name, tenant.cas) for tenant in tenants.values())
        cached = self._cached
        if cached is None or not _same_cas(cached[0], version):
            cached = self._cached = (version, self._merge(tenants.values()))
        earliest_days = GaugeMetricFamily(
            PREFIX + "leaf_certificate_earliest_expiry_days",
            "Days from now (computed at scrape time) to the earliest expiry of an active, unexpired leaf "
            "certificate; the expiry itself is read from Microsoft Graph every refresh.interval.",
            labels=CA_LABELS,
        )
        requests = CounterMetricFamily(
            PREFIX + "graph_requests",
            "HTTP requests to Microsoft Graph by status code.",
            labels=["tenant", "code"],
        )
        budget_wait = CounterMetricFamily(
            PREFIX + "graph_budget_wait_seconds",
            "Time the tenant's Graph requests spent waiting for its graph_budget (requests per 20 s).",
            labels=["tenant"],
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
            budget_wait.add_metric([tenant.name], tenant.budget_wait_seconds)
            for ca in tenant.cas.values():
                snapshot = ca.snapshot
                if snapshot is not None and snapshot.leaves.earliest_expiry is not None:
                    earliest_days.add_metric(
                        [tenant.name, ca.ca_id, ca.label],
                        (snapshot.leaves.earliest_expiry - now) / 86400.0,
                    )
        merged = cached[1]
        yield merged.leaf_certificates
        yield merged.leaf_certificate_earliest_expiry_timestamp_seconds
        yield earliest_days
        yield merged.leaf_certificates_expiring
        yield merged.leaf_certificate_latest_issuance_timestamp_seconds
        yield merged.ca_info
        yield merged.ca_certificate_expiry_timestamp_seconds
        yield merged.leaf_certificates_invalid
        yield merged.devices
        yield merged.devices_expiring
        yield merged.devices_renewal_due
        yield merged.leaf_certificates_without_device
        yield merged.refresh_success
        yield merged.refresh_last_success_timestamp_seconds
        yield merged.refresh_duration_seconds
        yield merged.refresh_failures
        if any(ca.crls for tenant in tenants.values() for ca in tenant.cas.values()):
            # crl.enabled: false (or no CRL named yet): none of these families at all
            yield merged.crl_fetch_success
            yield merged.crl_fetch_failures
            yield merged.crl_last_update_timestamp_seconds
            yield merged.crl_next_update_timestamp_seconds
            yield merged.crl_revoked_certificates
            yield merged.crl_size_bytes
            yield merged.leaf_certificates_revoked_unpublished
        yield requests
        yield budget_wait
        yield up
        yield self._build
        if self._storage_write_failures is not None:
            yield from _storage_families(tenants, self._storage_write_failures())

    def _merge(self, tenants: Iterable[TenantState]) -> _Merged:
        """The families read from the CA states, each the concatenation of one part per
        CA. A CA's parts are kept while its state is the same object (``Store`` keeps the
        object of a CA that did not change), and the render cache keeps their text: a CA
        whose refresh ends costs its own lines only."""
        known = self._parts
        parts: dict[tuple[str, str], tuple[CAState, CAFamilies]] = {}
        for tenant in tenants:
            for ca in tenant.cas.values():
                key = (tenant.name, ca.ca_id)
                hit = known.get(key)
                if hit is None or hit[0] is not ca:
                    hit = (ca, ca_families())
                    fill(hit[1], tenant.name, ca)
                parts[key] = hit
        self._parts = parts
        return _Merged(
            **{
                name: Composite(
                    getattr(self._headers, name),
                    [getattr(ca_parts, name) for _, ca_parts in parts.values()],
                )
                for name in CAFamilies._fields
            }
        )


def ca_families() -> CAFamilies:
    """Empty families of everything read from the CA states."""
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
    expiring = GaugeMetricFamily(
        PREFIX + "leaf_certificates_expiring",
        _help("Active leaf certificates with now < validityEndDateTime <= now + within_days days."),
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
    devices = GaugeMetricFamily(
        PREFIX + "devices",
        _help(
            "Distinct devices (deviceId) holding at least one active, unexpired leaf "
            "certificate of the CA, by the devicePlatform of their latest-ending one."
        ),
        labels=[*CA_LABELS, "platform"],
    )
    devices_expiring = GaugeMetricFamily(
        PREFIX + "devices_expiring",
        _help(
            "Devices whose latest-ending active certificate ends within within_days days: "
            "they have no newer certificate (they did not renew)."
        ),
        labels=[*CA_LABELS, "within_days", "platform"],
    )
    renewal_due = GaugeMetricFamily(
        PREFIX + "devices_renewal_due",
        _help(
            "Devices holding an active certificate that ends within within_days days, "
            "renewed or not (devices_expiring counts those that did not renew)."
        ),
        labels=[*CA_LABELS, "within_days", "platform"],
    )
    without_device = GaugeMetricFamily(
        PREFIX + "leaf_certificates_without_device",
        _help(
            "Readable leaf certificate records whose deviceId is null, missing or empty, "
            "whatever their status."
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
    crl = crl_families()
    return CAFamilies(
        **crl,
        leaf_certificates=leaf,
        leaf_certificate_earliest_expiry_timestamp_seconds=earliest,
        leaf_certificates_expiring=expiring,
        leaf_certificate_latest_issuance_timestamp_seconds=issuance,
        ca_info=info,
        ca_certificate_expiry_timestamp_seconds=ca_expiry,
        leaf_certificates_invalid=invalid,
        devices=devices,
        devices_expiring=devices_expiring,
        devices_renewal_due=renewal_due,
        leaf_certificates_without_device=without_device,
        refresh_success=success,
        refresh_last_success_timestamp_seconds=last_success,
        refresh_duration_seconds=duration,
        refresh_failures=failures,
    )


_CRL_READ = "Read from the CRL's URL every crl.interval, not at scrape time."
CRL_LABELS = (*CA_LABELS, "url")


def crl_families() -> dict[str, _Family]:
    """Empty families of the CRL checks (spec, "Revocation (CRL)")."""
    return {
        "crl_fetch_success": GaugeMetricFamily(
            PREFIX + "crl_fetch_success",
            "1 if the last read of this CRL gave a CRL whose issuer is the CA and whose "
            f"signature verifies against the CA certificate, else 0. {_CRL_READ}",
            labels=CRL_LABELS,
        ),
        "crl_fetch_failures": CounterMetricFamily(
            PREFIX + "crl_fetch_failures",
            "Failed reads of this CRL by reason (network, timeout, http_4xx, http_5xx, "
            f"too_large, invalid, signature, refused). {_CRL_READ}",
            labels=[*CRL_LABELS, "reason"],
        ),
        "crl_last_update_timestamp_seconds": GaugeMetricFamily(
            PREFIX + "crl_last_update_timestamp_seconds",
            f"thisUpdate of the last good read of this CRL. {_CRL_READ}",
            labels=CRL_LABELS,
        ),
        "crl_next_update_timestamp_seconds": GaugeMetricFamily(
            PREFIX + "crl_next_update_timestamp_seconds",
            "nextUpdate of the last good read of this CRL: after it, relying parties (RADIUS, "
            f"VPN) reject the CA's certificates or stop checking revocation. {_CRL_READ}",
            labels=CRL_LABELS,
        ),
        "crl_revoked_certificates": GaugeMetricFamily(
            PREFIX + "crl_revoked_certificates",
            f"Entries on the last good read of this CRL. {_CRL_READ}",
            labels=CRL_LABELS,
        ),
        "crl_size_bytes": GaugeMetricFamily(
            PREFIX + "crl_size_bytes",
            f"Size of the last good read of this CRL as served, in bytes. {_CRL_READ}",
            labels=CRL_LABELS,
        ),
        "leaf_certificates_revoked_unpublished": GaugeMetricFamily(
            PREFIX + "leaf_certificates_revoked_unpublished",
            "Certificates revoked in Graph more than crl.publication_grace ago, not yet "
            "expired, whose serial number is missing from the CRL they name. Computed again "
            "whenever the leaves (every refresh.interval) or a CRL (every crl.interval) are read.",
            labels=CA_LABELS,
        ),
    }


def fill_crls(families: CAFamilies, tenant: str, ca: CAState) -> None:
    """Add one CA's CRL samples (none when it names no CRL or CRLs are not read)."""
    if not ca.crls:
        return
    f = families
    labels = [tenant, ca.ca_id, ca.label]
    f.leaf_certificates_revoked_unpublished.add_metric(labels, float(ca.coverage.unpublished))
    for url, state in sorted(ca.crls.items()):
        crl_labels = [*labels, url]
        if state.attempted:
            f.crl_fetch_success.add_metric(crl_labels, 1.0 if state.success else 0.0)
        for reason in CRL_REASONS:
            f.crl_fetch_failures.add_metric(
                [*crl_labels, reason], float(state.failures.get(reason, 0))
            )
        info = state.info
        if info is None:
            continue
        f.crl_last_update_timestamp_seconds.add_metric(crl_labels, info.this_update)
        if info.next_update is not None:
            f.crl_next_update_timestamp_seconds.add_metric(crl_labels, info.next_update)
        f.crl_revoked_certificates.add_metric(crl_labels, float(info.entries))
        f.crl_size_bytes.add_metric(crl_labels, float(info.size))


def fill(families: CAFamilies, tenant: str, ca: CAState) -> None:
    """Add one CA's samples to ``ca_families()``."""
    f = families
    labels = [tenant, ca.ca_id, ca.label]
    fill_crls(families, tenant, ca)
    if ca.attempted:
        f.refresh_success.add_metric(labels, 1.0 if ca.last_success else 0.0)
        if ca.last_duration is not None:
            f.refresh_duration_seconds.add_metric(labels, ca.last_duration)
    for reason in REASONS:
        f.refresh_failures.add_metric([*labels, reason], float(ca.failures.get(reason, 0)))
    snapshot = ca.snapshot
    if snapshot is None:
        return
    f.refresh_last_success_timestamp_seconds.add_metric(labels, snapshot.read_at)
    leaves = snapshot.leaves
    for (status, platform), count in sorted(leaves.counts.items()):
        f.leaf_certificates.add_metric([*labels, status, platform], float(count))
    if leaves.earliest_expiry is not None:
        f.leaf_certificate_earliest_expiry_timestamp_seconds.add_metric(
            labels, leaves.earliest_expiry
        )
    for days, count in leaves.expiring:
        f.leaf_certificates_expiring.add_metric([*labels, str(days)], float(count))
    if leaves.latest_issuance is not None:
        f.leaf_certificate_latest_issuance_timestamp_seconds.add_metric(
            labels, leaves.latest_issuance
        )
    f.leaf_certificates_invalid.add_metric(labels, float(leaves.invalid))
    device_figures = snapshot.devices
    for platform, count in sorted(device_figures.devices.items()):
        f.devices.add_metric([*labels, platform], float(count))
    for family, per_window in (
        (f.devices_expiring, device_figures.expiring),
        (f.devices_renewal_due, device_figures.renewal_due),
    ):
        for days, by_platform in per_window:
            for platform, count in sorted(by_platform.items()):
                family.add_metric([*labels, str(days), platform], float(count))
    f.leaf_certificates_without_device.add_metric(labels, float(device_figures.without_device))
    ca_info = snapshot.info
    f.ca_info.add_metric(
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
        f.ca_certificate_expiry_timestamp_seconds.add_metric(labels, ca_info.expiry)


def _storage_families(tenants: Mapping[str, TenantState], write_failures: int) -> Iterator[Metric]:
    """``--storage.path``: where each served snapshot came from, and failed writes.

    Exposed only when the storage is on, so that an exporter without it exposes no
    series about it."""
    restored = GaugeMetricFamily(
        PREFIX + "snapshot_restored",
        "1 while the data served for this CA is the snapshot restored from --storage.path "
        "at start-up, 0 once a refresh of this process replaced it.",
        labels=CA_LABELS,
    )
    for tenant in tenants.values():
        for ca in tenant.cas.values():
            if ca.snapshot is not None:
                restored.add_metric([tenant.name, ca.ca_id, ca.label], 1.0 if ca.restored else 0.0)
    failures = CounterMetricFamily(
        PREFIX + "storage_write_failures",
        "Snapshot writes to --storage.path that failed (disk full, read-only, permissions); "
        "the exporter goes on serving from memory.",
    )
    failures.add_metric([], float(write_failures))
    yield restored
    yield failures
