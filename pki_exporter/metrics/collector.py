"""Snapshots -> metric families, and the exposition text of them.

Nothing here is proportional to the number of certificates: the fold already reduced
them. A CA that vanished from the Store vanishes from the output by construction.

A scrape must stay cheap while a refresh keeps the interpreter busy (docs/performance.md):
the families read from the CA states are built once per change of those states and reused,
and ``render`` keeps the text of each family it has rendered for as long as the same family
object comes back, so that a scrape renders only what changed since the last one (the
request counters, the scrape-time ``_days`` gauge, the process metrics).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pki_exporter import __version__
from pki_exporter.runtime import clock
from pki_exporter.state import REASONS, CAState, Store, TenantState

PREFIX = "intune_cloudpki_"
CA_LABELS = ("tenant", "ca_id", "ca")
_READ = "Read from Microsoft Graph every refresh.interval, not at scrape time."


def _help(text: str) -> str:
    return f"{text} {_READ}"


_Version = tuple[tuple[str, Mapping[str, CAState]], ...]
_Family = GaugeMetricFamily | CounterMetricFamily
_PARTS = "_pki_exporter_parts"
"""Attribute of a family built from per-CA parts: (its empty header family, the parts)."""


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(CAState) if f.name != "snapshot")


def _same_state(a: CAState, b: CAState) -> bool:
    """Whether two states of a CA show the same: the same snapshot object and equal other
    fields (each cycle's CA discovery makes new states of unchanged CAs)."""
    return a is b or (
        a.snapshot is b.snapshot
        and all(getattr(a, name) == getattr(b, name) for name in _STATE_FIELDS)
    )


def _same_cas(a: _Version, b: _Version) -> bool:
    """Whether two reads of the Store hold the very same CA states (copy-on-write: a CA
    whose state changed comes in a new mapping)."""
    return len(a) == len(b) and all(
        x[0] == y[0] and x[1] is y[1] for x, y in zip(a, b, strict=True)
    )


class Turns:
    """Scrapes before refresh work, in one interpreter.

    A refresh keeps the interpreter busy (decoding and folding pages, holding the GIL);
    a scrape releases and retakes the GIL a dozen times (socket, /proc, gzip) and would
    wait behind every refresh thread each time. So the refresh threads take turns on their
    CPU-bound work (``cpu()``, one page at a time), and none starts a turn while a scrape is
    being rendered (``begin_scrape``/``end_scrape``), for at most ``MAX_YIELD`` seconds per
    turn so that a flood of scrapes cannot stall a refresh.
    """

    MAX_YIELD = 0.05

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._scrapes = 0

    @contextmanager
    def cpu(self) -> Iterator[None]:
        with self._cond:
            deadline = time.monotonic() + self.MAX_YIELD
            while self._busy or self._scrapes:
                left = deadline - time.monotonic()
                if self._scrapes and not self._busy and left <= 0:
                    break
                self._cond.wait(left if left > 0 and not self._busy else None)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def begin_scrape(self) -> None:
        with self._cond:
            self._scrapes += 1
            while self._busy:
                self._cond.wait()

    def end_scrape(self) -> None:
        with self._cond:
            self._scrapes -= 1
            self._cond.notify_all()


TURNS = Turns()
"""Shared by the refresh (``GraphClient.fold_leaves``) and ``render``."""

_scraping = threading.local()


class ExporterCollector(Collector):
    """Yields every metric of the spec from the Store's current snapshots."""

    def __init__(self, store: Store, before_collect: Callable[[], None] | None = None) -> None:
        self._store = store
        self._before_collect = before_collect
        self._cached: tuple[_Version, list[Metric]] | None = None
        self._parts: dict[tuple[str, str], tuple[CAState, list[_Family]]] = {}
        self._headers = _families()
        """One empty family per metric: what ``render`` takes the HELP and TYPE lines from."""
        self._build = GaugeMetricFamily(
            PREFIX + "exporter_build_info", "Version of pki-exporter (value 1).", labels=["version"]
        )
        self._build.add_metric([__version__], 1.0)

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: the families depend on what Graph returned.
        return []

    def collect(self) -> Iterator[Metric]:
        if self._before_collect is not None:
            self._before_collect()  # a refresh on scrape: before the scrape takes its turn
        if getattr(_scraping, "armed", False):
            _scraping.armed = False
            _scraping.began = True
            TURNS.begin_scrape()
        tenants = self._store.tenants
        now = clock.now()
        # The Store swaps a tenant's CA mapping whenever one of its CAs changes state; the
        # request counters and the tenant's status change without touching it.
        version = tuple((tenant.name, tenant.cas) for tenant in tenants.values())
        cached = self._cached
        if cached is None or not _same_cas(cached[0], version):
            cached = self._cached = (version, self._ca_families(tenants.values()))
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
        families = cached[1]
        yield from families[:2]
        yield earliest_days
        yield from families[2:]
        yield from (requests, budget_wait, up, self._build)

    def _ca_families(self, tenants: Iterable[TenantState]) -> list[Metric]:
        """The families read from the CA states, in the order they are exposed (the
        scrape-time ``_days`` gauge goes after the first two). Each is the concatenation of
        one part per CA; a CA's parts are kept while its state is the same object, and
        ``render`` keeps their text: a CA whose refresh ends costs its own lines only."""
        known = self._parts
        parts: dict[tuple[str, str], tuple[CAState, list[_Family]]] = {}
        for tenant in tenants:
            for ca in tenant.cas.values():
                key = (tenant.name, ca.ca_id)
                hit = known.get(key)
                if hit is None or not _same_state(hit[0], ca):
                    hit = (ca, _families())
                    _fill(hit[1], tenant.name, ca)
                parts[key] = hit
        self._parts = parts
        merged: list[Metric] = []
        for index, header in enumerate(self._headers):
            family = copy.copy(header)
            pieces = tuple(ca_parts[index] for _, ca_parts in parts.values())
            family.samples = [sample for piece in pieces for sample in piece.samples]
            setattr(family, _PARTS, (header, pieces))
            merged.append(family)
        return merged


def _families() -> list[_Family]:
    """Empty families of everything read from the CA states, in the order exposed."""
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
    return [
        leaf,
        earliest,
        expiring,
        issuance,
        info,
        ca_expiry,
        invalid,
        devices,
        devices_expiring,
        renewal_due,
        without_device,
        success,
        last_success,
        duration,
        failures,
    ]


def _fill(families: list[_Family], tenant: str, ca: CAState) -> None:
    """Add one CA's samples to ``_families()``."""
    (
        leaf,
        earliest,
        expiring,
        issuance,
        info,
        ca_expiry,
        invalid,
        devices,
        devices_expiring,
        renewal_due,
        without_device,
        success,
        last_success,
        duration,
        failures,
    ) = families
    labels = [tenant, ca.ca_id, ca.label]
    if ca.attempted:
        success.add_metric(labels, 1.0 if ca.last_success else 0.0)
        if ca.last_duration is not None:
            duration.add_metric(labels, ca.last_duration)
    for reason in REASONS:
        failures.add_metric([*labels, reason], float(ca.failures.get(reason, 0)))
    snapshot = ca.snapshot
    if snapshot is None:
        return
    last_success.add_metric(labels, snapshot.read_at)
    leaves = snapshot.leaves
    for (status, platform), count in sorted(leaves.counts.items()):
        leaf.add_metric([*labels, status, platform], float(count))
    if leaves.earliest_expiry is not None:
        earliest.add_metric(labels, leaves.earliest_expiry)
    for days, count in leaves.expiring:
        expiring.add_metric([*labels, str(days)], float(count))
    if leaves.latest_issuance is not None:
        issuance.add_metric(labels, leaves.latest_issuance)
    invalid.add_metric(labels, float(leaves.invalid))
    device_figures = snapshot.devices
    for platform, count in sorted(device_figures.devices.items()):
        devices.add_metric([*labels, platform], float(count))
    for family, per_window in (
        (devices_expiring, device_figures.expiring),
        (renewal_due, device_figures.renewal_due),
    ):
        for days, by_platform in per_window:
            for platform, count in sorted(by_platform.items()):
                family.add_metric([*labels, str(days), platform], float(count))
    without_device.add_metric(labels, float(device_figures.without_device))
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


class _One:
    """A registry of one family, for the encoders of prometheus_client."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterable[Metric]:
        return (self._family,)


_EOF = b"# EOF\n"
_Cache = dict[tuple[str, int], tuple[Metric, bytes]]
_render_cache: _Cache = {}
_render_lock = threading.Lock()


def render(registry: Collector, encoder: Callable[[Any], bytes], content_type: str) -> bytes:
    """``encoder(registry)``, byte for byte, rendering only what changed since the last call.

    The text of every family is kept for as long as the collector hands out the same family
    object; a family built from per-CA parts (``_PARTS``) is put together from the kept
    text of its parts, so that a CA whose refresh ended costs the rendering of its own
    lines. Each piece is rendered by ``encoder`` itself, so the output is what ``encoder``
    makes of the whole registry (OpenMetrics' ``# EOF`` comes once, at the end).
    """
    return _Rendering(encoder, content_type).join(list(registry.collect()))


@contextmanager
def scrape() -> Iterator[None]:
    """One scrape, from collecting to the last byte sent: refresh threads start no CPU turn
    meanwhile (``Turns``). The scrape's turn begins in ``ExporterCollector.collect`` once
    its ``before_collect`` has run: a refresh on scrape must not wait for the scrape."""
    _scraping.armed, _scraping.began = True, False
    try:
        yield
    finally:
        _scraping.armed = False
        if _scraping.began:
            _scraping.began = False
            TURNS.end_scrape()


class _Rendering:
    """One call of ``render``: what it found in the cache, what it rendered."""

    def __init__(self, encoder: Callable[[Any], bytes], content_type: str) -> None:
        self._encoder = encoder
        self._content_type = content_type
        self._cache = _render_cache
        self._kept: _Cache = {}
        self._eof = False

    def _hit(self, family: Metric) -> bytes | None:
        key = (self._content_type, id(family))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not family:
            return None
        self._kept[key] = hit
        return hit[1]

    def _text(self, family: Metric) -> bytes:
        text = self._hit(family)
        if text is None:
            text = self._encoder(_One(family))
            if text.endswith(_EOF):
                text = text[: -len(_EOF)]
                self._eof = True
            # The family is held with its text, so that its id cannot be reused meanwhile.
            self._kept[(self._content_type, id(family))] = (family, text)
        return text

    def join(self, families: list[Metric]) -> bytes:
        global _render_cache  # noqa: PLW0603
        out: list[bytes] = []
        for family in families:
            built: tuple[Metric, tuple[Metric, ...]] | None = getattr(family, _PARTS, None)
            text = self._hit(family)
            if text is not None:
                for piece in (built[0], *built[1]) if built is not None else ():
                    self._hit(piece)  # kept for when the family is rebuilt around them
            elif built is not None:
                header = self._text(built[0])  # HELP and TYPE of an empty family
                # Each part renders as the header and its own samples.
                text = header + b"".join(self._text(part)[len(header) :] for part in built[1])
                self._kept[(self._content_type, id(family))] = (family, text)
            else:
                text = self._text(family)
            out.append(text)
        if self._eof or self._content_type.startswith("application/openmetrics-text"):
            out.append(_EOF)
        with _render_lock:
            # Keep what this call used, and the other content types' entries: bounded by
            # the families and parts of one scrape per content type.
            _render_cache = {
                **{k: v for k, v in _render_cache.items() if k[0] != self._content_type},
                **self._kept,
            }
        return b"".join(out)


class StorageCollector(Collector):
    """``--storage.path``: where each served snapshot came from, and failed writes.

    Registered only when the storage is on, so that an exporter without it exposes no
    series about it."""

    def __init__(self, store: Store, write_failures: Callable[[], int]) -> None:
        self._store = store
        self._write_failures = write_failures

    def collect(self) -> Iterator[Metric]:
        restored = GaugeMetricFamily(
            PREFIX + "snapshot_restored",
            "1 while the data served for this CA is the snapshot restored from --storage.path "
            "at start-up, 0 once a refresh of this process replaced it.",
            labels=CA_LABELS,
        )
        for tenant in self._store.tenants.values():
            for ca in tenant.cas.values():
                if ca.snapshot is not None:
                    restored.add_metric(
                        [tenant.name, ca.ca_id, ca.label], 1.0 if ca.restored else 0.0
                    )
        failures = CounterMetricFamily(
            PREFIX + "storage_write_failures",
            "Snapshot writes to --storage.path that failed (disk full, read-only, permissions); "
            "the exporter goes on serving from memory.",
        )
        failures.add_metric([], float(self._write_failures()))
        yield restored
        yield failures
