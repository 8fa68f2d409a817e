"""``/metrics`` rendering in process, with and without the render cache.

``python -m bench.render [--tenants N] [--cas N] [--repeat N]``: a Store filled by hand
(every CA with 4 statuses x 5 platforms, 3 expiry windows, devices on 5 platforms: ~75
series a CA; the default 2 x 12 CAs make ~1,800 series), the exporter's collector in a
registry, and per encoder (text 0.0.4, OpenMetrics 1.0.0) the time of

- ``generate_latest(registry)``: no render cache (the collector's families are still
  kept between scrapes: this is the encoding alone);
- ``RenderCache.render`` when nothing changed since the last scrape;
- ``RenderCache.render`` after one CA's refresh ended (a new state for that CA).

Both outputs are compared byte for byte before timing.
"""

from __future__ import annotations

import argparse
import timeit
from array import array

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from pki_exporter.aggregate.certificates import LeafAggregate
from pki_exporter.aggregate.devices import DeviceAggregate
from pki_exporter.graph.records import CARecord
from pki_exporter.metrics.collector import ExporterCollector
from pki_exporter.metrics.exposition import RenderCache
from pki_exporter.runtime import clock
from pki_exporter.state import CASnapshot, Store

STATUSES = ("active", "revoked", "expired", "unknownFutureValue")
PLATFORMS = ("windows", "android", "iOS", "macOS", "unknown")
WINDOWS = (7, 14, 30)
ENCODERS = (
    ("text", generate_latest, "text/plain; version=0.0.4; charset=utf-8"),
    ("openmetrics", openmetrics.generate_latest, openmetrics.CONTENT_TYPE_LATEST),
)


def snapshot(i: int, read_at: float) -> CASnapshot:
    counts = {
        (status, platform): (i * 7 + j * 3 + k) % 50
        for j, status in enumerate(STATUSES)
        for k, platform in enumerate(PLATFORMS)
    }
    leaves = LeafAggregate(
        counts,
        1.8e9 + i,
        tuple((w, i + w) for w in WINDOWS),
        1.7e9 + i,
        i % 3,
        sum(counts.values()),
    )
    devices = DeviceAggregate(
        {p: i + k for k, p in enumerate(PLATFORMS)},
        tuple((w, {p: (i + w + k) % 9 for k, p in enumerate(PLATFORMS)}) for w in WINDOWS),
        tuple((w, {p: (i + w + k) % 11 for k, p in enumerate(PLATFORMS)}) for w in WINDOWS),
        i % 4,
        array("d"),
        (),
        None,
        max(WINDOWS),
        read_at,
    )
    info = CARecord(
        f"{i:08x}-0000-4000-8000-000000000000",
        f"CA {i}",
        "active",
        "issuingCertificateAuthority",
        "rsa2048",
        "sha256",
        "software",
        1.9e9 + i,
    )
    return CASnapshot(info, leaves, read_at, devices)


def filled_store(tenants: int, cas: int) -> Store:
    store = Store([f"tenant{t}" for t in range(tenants)])
    for t in range(tenants):
        name = f"tenant{t}"
        ids = {f"{t:04x}{c:04x}-0000-4000-8000-000000000000": f"CA {t}.{c}" for c in range(cas)}
        store.set_cas(name, ids)
        for n, (ca_id, label) in enumerate(ids.items()):
            store.record_success(name, ca_id, label, snapshot(t * 1000 + n, 1.75e9), 1.5 + n)
        store.set_tenant(name, up=True, error=None)
        store.finish_cycle(name)
        store.count_request(name, 200)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.render")
    parser.add_argument("--tenants", type=int, default=2)
    parser.add_argument("--cas", type=int, default=12, help="CAs per tenant")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    clock.freeze(1.75e9)  # the scrape-time _days gauge, the same in both renderings
    store = filled_store(args.tenants, args.cas)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector(store))
    series = sum(1 for line in generate_latest(registry).splitlines() if not line.startswith(b"#"))
    print(f"{series} series ({args.tenants} tenants x {args.cas} CAs), ms per render:")
    first = next(iter(store.tenants["tenant0"].cas.values()))
    changes = iter(range(1, 1 << 30))

    def one_ca_changed(cache: RenderCache, encoder: object, content_type: str) -> bytes:
        store.record_success(
            "tenant0", first.ca_id, first.label, snapshot(next(changes), 1.75e9), 2.0
        )
        return cache.render(registry, encoder, content_type)  # type: ignore[arg-type]

    for name, encoder, content_type in ENCODERS:
        cache = RenderCache()
        if cache.render(registry, encoder, content_type) != encoder(registry):
            raise SystemExit(f"{name}: the render cache differs from generate_latest")
        n = args.repeat
        plain = timeit.timeit(lambda e=encoder: e(registry), number=n) / n * 1e3
        same = timeit.timeit(
            lambda c=cache, e=encoder, t=content_type: c.render(registry, e, t), number=n
        )
        changed = timeit.timeit(
            lambda c=cache, e=encoder, t=content_type: one_ca_changed(c, e, t), number=n
        )
        print(
            f"  {name:12} generate_latest {plain:6.2f}   cache, nothing changed "
            f"{same / n * 1e3:5.2f}   cache, one CA changed {changed / n * 1e3:5.2f}"
        )


if __name__ == "__main__":
    main()
