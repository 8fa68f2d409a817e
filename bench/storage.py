"""Warm restart (``--storage.path``): what writing and reading a CA's snapshot costs.

``python -m bench.storage`` (``--certificates N``, ``--repeat N``, ``--dir PATH`` for the
disk to write to; default a temporary directory beside the checkout, not a tmpfs).

One CA of 1,000,000 certificates, two ways:

- simulator: the simulator's pages for one CA, decoded and folded one at a time as a
  refresh does (the drill-down holds its 1,000 soonest devices at risk); the time of that
  decode + fold is the baseline: a refresh of the CA takes at least that (without any
  network), so the ratio is an upper bound of the write's share of a refresh;
- worst case: every one of 1,000,000 devices at risk within the largest window (so that
  the sorted ends of the devices at risk, 8 bytes each, are as long as they can be) and a
  full drill-down of 1,000 rows with 256-character fields.

Each is written with ``SnapshotStorage.save`` (encode, temporary file, fsync, rename,
fsync of the directory), read back with ``restore``, and the file size reported.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import tracemalloc
from array import array
from collections.abc import Callable
from pathlib import Path

from pki_exporter.aggregate.certificates import Fold, LeafAggregate
from pki_exporter.aggregate.devices import DRILLDOWN_CAP, AtRiskDevice, DeviceAggregate
from pki_exporter.config.load import parse_config
from pki_exporter.graph.records import CARecord, decode_leaf_page
from pki_exporter.state import CASnapshot, Store
from pki_exporter.storage import SnapshotStorage, file_name

WINDOWS = (7, 30, 90)
TENANT_ID = "11111111-2222-3333-4444-555555555555"
CA_ID = "aaaaaaaa-0000-0000-0000-000000000001"
CONFIG = f"""
expiry_windows_days: [7, 30, 90]
tenants:
  - name: bench
    tenant_id: {TENANT_ID}
    client_id: 99999999-2222-3333-4444-555555555555
    credential: {{client_secret_env: PKI_EXPORTER_CLIENT_SECRET}}
    certification_authorities: all
"""


def simulator_snapshot(certificates: int) -> tuple[CASnapshot, float]:
    """Fold one simulated CA's pages one at a time; returns the snapshot and the seconds
    the decode + fold took (page rendering excluded)."""
    from pki_simulator.dataset import Dataset, generate_spec
    from pki_simulator.render import LeafPages

    spec = generate_spec(seed=1, cas=1, certificates=certificates)
    dataset = Dataset(spec)
    pages = LeafPages(dataset, "https://127.0.0.1:8443")
    (ca,) = dataset.all_cas()
    now = spec.anchor.timestamp()
    fold = Fold(now, WINDOWS)
    seconds = 0.0
    for n in range(ca.pages):
        body = pages.page(ca, n).raw
        started = time.perf_counter()
        page = decode_leaf_page(body)
        fold.add(page.records)
        fold.add_invalid(page.invalid)
        seconds += time.perf_counter() - started
    started = time.perf_counter()
    leaves, devices = fold.result(), fold.devices.result()
    seconds += time.perf_counter() - started
    info = CARecord(CA_ID, "Bench CA", "active", "issuing", "rsa4096", "sha256", "hsm", now + 1e8)
    return CASnapshot(info, leaves, now, devices), seconds


def worst_snapshot(devices: int) -> CASnapshot:
    """Every device at risk, a full drill-down of maximal rows."""
    now = 1_795_694_400.0
    step = 90 * 86400 / devices
    ends = array("d", (now + 1 + i * step for i in range(devices)))
    field = "x" * 256
    rows = tuple(
        AtRiskDevice(ends[i], f"{i:036d}", field, field, "windows", field, field)
        for i in range(DRILLDOWN_CAP)
    )
    platforms = {"windows": devices}
    aggregate = DeviceAggregate(
        devices=platforms,
        expiring=tuple((d, platforms) for d in WINDOWS),
        renewal_due=tuple((d, platforms) for d in WINDOWS),
        without_device=0,
        at_risk_ends=ends,
        rows=rows,
        complete_until=ends[DRILLDOWN_CAP * len(WINDOWS)],
        largest_window=90,
        now=now,
    )
    counts = {("active", "windows"): devices, ("revoked", "windows"): 0, ("expired", "windows"): 0}
    leaves = LeafAggregate(counts, ends[0], tuple((d, devices) for d in WINDOWS), now, 0, devices)
    info = CARecord(CA_ID, "Bench CA", "active", "issuing", "rsa4096", "sha256", "hsm", now + 1e8)
    return CASnapshot(info, leaves, now, aggregate)


def _times(fn: Callable[[], object], repeat: int) -> list[float]:
    result = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        result.append(time.perf_counter() - started)
    return result


def measure(name: str, snapshot: CASnapshot, directory: Path, repeat: int) -> dict[str, float]:
    config = parse_config(CONFIG, "<bench>")
    tenant = config.tenants[0]
    store = Store(["bench"])
    store.set_cas("bench", {CA_ID: "Bench CA"})
    store.record_success("bench", CA_ID, "Bench CA", snapshot, 1.0)
    storage = SnapshotStorage(directory)
    assert storage.save(tenant, store, CA_ID, WINDOWS)

    def write() -> None:
        assert storage.save(tenant, store, CA_ID, WINDOWS)

    def read() -> None:
        fresh = Store(["bench"])
        assert storage.restore(config, ["bench"], fresh) == 1

    tracemalloc.start()
    write()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    writes = _times(write, repeat)
    reads = _times(read, repeat)
    restored = Store(["bench"])
    storage.restore(config, ["bench"], restored)
    assert restored.tenants["bench"].cas[CA_ID].snapshot == snapshot
    size = (directory / file_name("bench", CA_ID)).stat().st_size
    devices = snapshot.devices
    print(
        f"{name}: {snapshot.leaves.total:,} certificates, "
        f"{sum(devices.devices.values()):,} devices, {len(devices.at_risk_ends):,} at risk, "
        f"{len(devices.rows):,} drill-down rows\n"
        f"  file {size / 1e6:.2f} MB; write best {min(writes) * 1000:.1f} ms "
        f"(median {statistics.median(writes) * 1000:.1f}); "
        f"restore best {min(reads) * 1000:.1f} ms (median {statistics.median(reads) * 1000:.1f}); "
        f"memory allocated during a write, peak {peak / 1e6:.2f} MB (tracemalloc)"
    )
    return {"size": size, "write": min(writes), "write_median": statistics.median(writes)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage")
    parser.add_argument("--certificates", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: beside the repo)")
    args = parser.parse_args()
    root = Path(args.dir) if args.dir else Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix=".bench-storage-", dir=root) as tmp:
        print(f"== snapshot storage, writing to {tmp}")
        snapshot, fold_seconds = simulator_snapshot(args.certificates)
        print(
            f"baseline: decode + fold of the CA's {args.certificates:,} certificates "
            f"(in memory, no network) {fold_seconds:.2f} s"
        )
        sim = measure("simulator data", snapshot, Path(tmp) / "sim", args.repeat)
        del snapshot
        worst = measure(
            "worst case", worst_snapshot(args.certificates), Path(tmp) / "worst", args.repeat
        )
        for name, figures in (("simulator data", sim), ("worst case", worst)):
            print(
                f"{name}: write = {figures['write'] / fold_seconds:.2%} of the decode + fold "
                f"(median {figures['write_median'] / fold_seconds:.2%})"
            )


if __name__ == "__main__":
    main()
