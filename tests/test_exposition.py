"""The render cache against prometheus_client's own encoders, byte for byte.

Each check renders the same registry both ways (the clock is frozen, so the scrape-time
``_days`` gauge is the same): ``RenderCache.render(registry, encoder, content_type)`` must
equal ``encoder(registry)`` for the text format and OpenMetrics (with the escapings and
versions ``choose_encoder`` hands out), on several data sets, scrape after scrape while
the states change in between."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from pki_exporter.metrics.collector import ExporterCollector
from pki_exporter.metrics.exposition import CONTENT_TYPES, Composite, RenderCache
from pki_exporter.runtime import clock
from pki_exporter.state import Store
from tests.metrics_data import DAY, NOW, snapshot

ACCEPTS = [
    "",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    # Prometheus' own
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
]
Encoder = Callable[[Any], bytes]

ID = [f"{n:08x}-0000-4000-8000-{n:012x}" for n in range(1, 40)]


@pytest.fixture(autouse=True)
def frozen_clock() -> Iterator[None]:
    clock.freeze(NOW)
    yield
    clock.freeze(None)


@pytest.fixture(params=ACCEPTS, ids=lambda a: a or "no-accept")
def encoding(request: pytest.FixtureRequest) -> tuple[Encoder, str]:
    return choose_encoder(request.param)


def test_the_accept_headers_cover_both_encoders() -> None:
    types = {choose_encoder(accept)[1].split(";")[0] for accept in ACCEPTS}
    assert types == {"text/plain", "application/openmetrics-text"}


class _Counting(Collector):
    """A collector of its own besides the exporter's: new families every collect (a
    counter the test moves between scrapes), one kept family (like the build info), one
    empty family."""

    def __init__(self) -> None:
        self.value = 0
        self.kept = GaugeMetricFamily("other_info", "Kept between scrapes.", labels=["v"])
        self.kept.add_metric(['a "quoted" \\ value\nwith a newline'], 1.0)

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily("other_calls", "Scrapes so far.")
        counter.add_metric([], float(self.value))
        yield counter
        yield self.kept
        yield GaugeMetricFamily("other_empty", "No samples.", labels=["x"])


def registry_of(
    store: Store, *, storage: bool = False, other: _Counting | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector(store, (lambda: 3) if storage else None))
    registry.register(other or _Counting())
    return registry


class Scrapes:
    """Renders one registry through one cache, checking every rendering."""

    def __init__(
        self, store: Store, encoding: tuple[Encoder, str], *, storage: bool = False
    ) -> None:
        self.other = _Counting()
        self.registry = registry_of(store, storage=storage, other=self.other)
        self.encoder, self.content_type = encoding
        self.cache = RenderCache()
        self.count = 0

    def check(self) -> bytes:
        self.other.value += 1
        expected = self.encoder(self.registry)
        got = self.cache.render(self.registry, self.encoder, self.content_type)
        self.count += 1
        assert got == expected, f"scrape {self.count}"
        return got


def test_an_empty_store(encoding: tuple[Encoder, str]) -> None:
    scrapes = Scrapes(Store([]), encoding)
    first = scrapes.check()
    second = scrapes.check()
    assert second != first  # the other collector's counter moved
    assert len(second) == len(first)
    assert first.count(b"# TYPE ") == 23  # HELP and TYPE of the empty families too


def test_tenants_without_data(encoding: tuple[Encoder, str]) -> None:
    store = Store(["contoso", "fabrikam"])
    scrapes = Scrapes(store, encoding)
    scrapes.check()
    store.set_cas("contoso", {ID[0]: "Root", ID[1]: "Issuing"})
    scrapes.check()
    store.set_tenant("contoso", up=False, error="no token")
    store.finish_cycle("contoso")
    for ca_id in (ID[0], ID[1]):
        store.record_failure("contoso", ca_id, "auth", "no token", NOW, 0.0)
    scrapes.check()
    scrapes.check()


def test_a_refreshing_tenant_scrape_after_scrape(encoding: tuple[Encoder, str]) -> None:
    store = Store(["contoso", "fabrikam"])
    scrapes = Scrapes(store, encoding, storage=True)
    labels = {ca_id: f"CA {n}" for n, ca_id in enumerate(ID[:6])}
    store.set_cas("contoso", labels)
    store.set_cas("fabrikam", {ID[10]: 'Fab "quoted" \\ CA'})
    scrapes.check()
    for n, ca_id in enumerate(ID[:6]):  # CAs finish one by one, a scrape after each
        store.record_success("contoso", ca_id, labels[ca_id], snapshot(ca_id, invalid=n), 1.0 + n)
        store.count_request("contoso", 200)
        scrapes.check()
    store.restore("fabrikam", ID[10], 'Fab "quoted" \\ CA', snapshot(ID[10]), None)
    scrapes.check()
    store.record_failure("contoso", ID[2], "http_5xx", "HTTP 503", NOW, 2.0)  # data kept
    scrapes.check()
    store.set_cas("contoso", labels)  # the next cycle's discovery: nothing changed
    scrapes.check()
    store.set_cas("contoso", {**labels, ID[3]: "Renamed"})
    scrapes.check()
    del labels[ID[1]]  # a CA vanishes
    store.set_cas("contoso", labels)
    scrapes.check()
    store.set_cas("contoso", {ID[20]: "First", **labels})  # a new CA, in front
    store.record_success("contoso", ID[20], "First", snapshot(ID[20], devices={}), 0.5)
    scrapes.check()
    store.record_success(  # other figures: new platforms, windows, an expired CA
        "contoso",
        ID[0],
        "CA 0",
        snapshot(
            ID[0],
            counts={("active", "iOS"): 5, ("expired", "windows"): 2, ("unknown", "unknown"): 1},
            earliest=None,
            latest_issuance=None,
            ca_expiry=None,
            status="expired",
            devices={"iOS": 4, "windows": 0},
            devices_expiring=((7, {"iOS": 1, "windows": 0}),),
            renewal_due=((7, {"iOS": 3, "windows": 0}),),
            without_device=7,
        ),
        9.25,
    )
    scrapes.check()
    store.reconfigure(["fabrikam"])  # a reload drops a tenant
    scrapes.check()
    store.reconfigure(["fabrikam", "contoso"])
    scrapes.check()


def test_many_cas_and_values_that_format_differently(encoding: tuple[Encoder, str]) -> None:
    """~1,000 series; values that the encoders format their own way (integers, large
    timestamps, fractions, infinities are not produced by the exporter)."""
    store = Store(["t1", "t2", "t3"])
    for t, tenant in enumerate(store.tenants):
        ids = ID[t * 13 : t * 13 + 13]
        store.set_cas(tenant, {ca_id: f"CA {tenant}/{ca_id[:4]} ünïcode" for ca_id in ids})
        for n, ca_id in enumerate(ids):
            store.record_success(
                tenant,
                ca_id,
                f"CA {tenant}/{ca_id[:4]} ünïcode",
                snapshot(ca_id, read_at=NOW - n / 3, earliest=NOW + n * DAY / 7),
                n / 7,
            )
    scrapes = Scrapes(store, encoding)
    body = scrapes.check()
    assert body.count(b"\n") > 1000
    scrapes.check()


def test_the_cache_renders_only_what_changed() -> None:
    """After the first scrape, only the families made at scrape time are encoded; after
    one CA changed, its parts as well. (Counted by the families the encoder is given.)"""
    store = Store(["contoso"])
    store.set_cas("contoso", {ID[0]: "A", ID[1]: "B"})
    for ca_id in ID[:2]:
        store.record_success("contoso", ca_id, ca_id[:4], snapshot(ca_id), 1.0)
    registry = registry_of(store)
    encoded: list[tuple[str, int]] = []

    def counting(source: Any) -> bytes:
        for family in source.collect():
            encoded.append((family.name, len(family.samples)))
        return openmetrics.generate_latest(source)

    cache = RenderCache()
    content_type = openmetrics.CONTENT_TYPE_LATEST
    first = cache.render(registry, counting, content_type)
    assert len(encoded) == 15 * 3 + 8  # 15 headers and 2 x 15 parts; 5 + 3 other families
    encoded.clear()
    assert cache.render(registry, counting, content_type) == first
    per_scrape = [
        ("intune_cloudpki_leaf_certificate_earliest_expiry_days", 2),
        ("intune_cloudpki_graph_requests", 0),
        ("intune_cloudpki_graph_budget_wait_seconds", 1),
        ("intune_cloudpki_tenant_up", 0),
        ("other_calls", 1),
        ("other_empty", 0),
    ]
    assert encoded == per_scrape
    encoded.clear()
    store.record_success("contoso", ID[1], "B", snapshot(ID[1], read_at=NOW), 2.0)
    body = cache.render(registry, counting, content_type)
    assert body == openmetrics.generate_latest(registry)
    changed = [name for name, _ in encoded if (name, _) not in per_scrape]
    assert len(changed) == 15  # the parts of CA B, nothing of CA A
    assert changed[0] == "intune_cloudpki_leaf_certificates"


def test_content_types_are_kept_apart_and_bounded() -> None:
    store = Store(["contoso"])
    store.set_cas("contoso", {ID[0]: "A"})
    store.record_success("contoso", ID[0], "A", snapshot(ID[0]), 1.0)
    registry = registry_of(store)
    cache = RenderCache()
    accepts = [*ACCEPTS, "text/plain;version=1.0.0;escaping=values"]
    encodings = [choose_encoder(accept) for accept in accepts]
    assert len({content_type for _, content_type in encodings}) == CONTENT_TYPES + 1
    for _ in range(2):
        for encoder, content_type in encodings:
            assert cache.render(registry, encoder, content_type) == encoder(registry)
    # The most recently used, oldest first.
    recent = list(dict.fromkeys(ct for _, ct in reversed(encodings)))[:CONTENT_TYPES][::-1]
    assert list(cache._kept) == recent


def test_a_composite_is_its_parts() -> None:
    header = GaugeMetricFamily("x", "Help.", labels=["a"])
    one, two = (GaugeMetricFamily("x", "Help.", labels=["a"]) for _ in range(2))
    one.add_metric(["1"], 1.0)
    two.add_metric(["2"], 2.0)
    two.add_metric(["3"], 3.0)
    composite = Composite(header, [one, two])
    assert (composite.name, composite.documentation, composite.type) == ("x", "Help.", "gauge")
    assert composite.samples == [*one.samples, *two.samples]
    registry = CollectorRegistry(auto_describe=False)

    class Fixed(Collector):
        def collect(self) -> Iterator[Metric]:
            yield composite

    registry.register(Fixed())
    for encoder, content_type in (
        (generate_latest, "text/plain; version=0.0.4; charset=utf-8"),
        (openmetrics.generate_latest, openmetrics.CONTENT_TYPE_LATEST),
    ):
        cache = RenderCache()
        assert cache.render(registry, encoder, content_type) == encoder(registry)
        assert cache.render(registry, encoder, content_type) == encoder(registry)
