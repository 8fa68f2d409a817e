"""Per-device state: the exporter's peak RSS for 1,000,000 certificates on 1,000,000 devices.

``python -m bench.devices`` (options: ``--cas``, ``--certificates`` per CA, ``--concurrency``).

Two exporter processes refresh the same 10 CAs x 100,000 certificates (twice each: the
second refresh sizes each CA's device table from the first), each process on its
own (its peak RSS from wait4(), nobody else's), against the simulator in a third process:

- baseline: every certificate without a device (``deviceId`` null): the same pages, the
  same decoding, no per-device state at all;
- devices: every certificate active and on a device of its own (1,000,000 distinct
  ``deviceId``\\s, none renewed), so that every record goes into the per-device table.

The difference is what the per-device state costs at its worst; the target is the spec's
150 MB peak RSS for the whole exporter. A third, smaller run (a tenth of the certificates,
on as many devices) shows how the figure grows with the devices.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    PYTHON,
    Row,
    Table,
    child_env,
    machine,
    peak_rss_mb,
    rss_mb,
    run_child,
    simulator,
    verdict,
)

TARGET_MB = 150.0


def worker(config_path: str) -> int:
    """One exporter: refresh every CA once, print one JSON line (run in its own process)."""
    from pki_exporter.app import Exporter
    from pki_exporter.config.load import load_config

    exporter = Exporter(load_config(config_path), process_metrics=False)
    before = rss_mb(os.getpid())
    started = time.perf_counter()
    exporter.refresher.refresh_all()
    seconds = time.perf_counter() - started
    # The second refresh sizes each CA's table from the first one's device count.
    started = time.perf_counter()
    exporter.refresher.refresh_all()
    again = time.perf_counter() - started
    exporter.stop()
    certificates = devices = without = at_risk_rows = 0
    failed = []
    for tenant in exporter.store.tenants.values():
        for ca in tenant.cas.values():
            if ca.snapshot is None or not ca.last_success:
                failed.append(ca.ca_id)
                continue
            certificates += ca.snapshot.leaves.total
            devices += sum(ca.snapshot.devices.devices.values())
            without += ca.snapshot.devices.without_device
            at_risk_rows += len(ca.snapshot.devices.rows)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "again_seconds": again,
                "rss_before_mb": before,
                "peak_rss_mb": peak_rss_mb(os.getpid()),
                "certificates": certificates,
                "devices": devices,
                "without_device": without,
                "rows": at_risk_rows,
                "failed": failed,
            }
        ),
        flush=True,
    )
    return 0


def _run(
    label: str, cas: int, certificates: int, concurrency: int, extra: list[str]
) -> dict[str, float]:
    print(f"{label}: starting the simulator ({cas} CAs x {certificates:,})", flush=True)
    with simulator(cas=cas, certificates=certificates, extra=extra) as sim:
        print(f"  simulator ready in {sim.ready_seconds:.1f} s", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-devices-") as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(sim.exporter_config(concurrency=concurrency, timeout="120s"))
            result = run_child(
                [PYTHON, "-m", "bench.devices", "--worker", str(config)],
                child_env(**sim.secrets_env()),
                timeout=600,
            )
    if result.returncode != 0:
        raise SystemExit(f"{label}: the exporter failed:\n{result.stderr.decode()[-3000:]}")
    report: dict[str, float] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    if report["failed"]:
        raise SystemExit(f"{label}: CAs failed: {report['failed']}")
    report["wait4_peak_rss_mb"] = result.peak_rss_mb
    print(
        f"  {label}: {report['certificates']:,} certificates, {report['devices']:,} devices, "
        f"{report['without_device']:,} without device, refresh {report['seconds']:.1f} s "
        f"(again: {report['again_seconds']:.1f} s), peak RSS {result.peak_rss_mb:.0f} MB",
        flush=True,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.devices", description=__doc__)
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--cas", type=int, default=10)
    parser.add_argument("--certificates", type=int, default=100_000, help="per CA")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    print(f"bench.devices on {machine()}", flush=True)
    common = ["--quirk-share", "0", "--renewed-share", "0", "--status-shares", "active=1"]
    total = args.cas * args.certificates
    base = _run(
        "baseline (no device)",
        args.cas,
        args.certificates,
        args.concurrency,
        [*common, "--no-device-share", "1"],
    )
    devices = _run(
        "devices (one per certificate)",
        args.cas,
        args.certificates,
        args.concurrency,
        [*common, "--no-device-share", "0"],
    )
    small = _run(
        "devices, a tenth",
        args.cas,
        args.certificates // 10,
        args.concurrency,
        [*common, "--no-device-share", "0"],
    )
    # Every certificate is active and on its own device; the few that ended between the
    # simulator's anchor (its start) and the refresh count no longer.
    assert 0.9999 * total <= devices["devices"] <= total, devices
    assert base["without_device"] == total and base["devices"] == 0, base
    table = Table()
    peak, floor = devices["wait4_peak_rss_mb"], base["wait4_peak_rss_mb"]
    table.add(
        Row(
            f"peak RSS, {total:,} certificates on {total:,} devices "
            f"(concurrency {args.concurrency})",
            f"{peak:.0f} MB",
            f"{floor:.0f} MB (same certificates, no device)",
            f"{peak / floor:.2f}x (+{peak - floor:.0f} MB)",
            f"< {TARGET_MB:.0f} MB",
            verdict(peak < TARGET_MB),
        )
    )
    table.add(
        Row(
            f"peak RSS, {total // 10:,} certificates on as many devices",
            f"{small['wait4_peak_rss_mb']:.0f} MB",
            f"{peak:.0f} MB (the full run)",
            f"{small['wait4_peak_rss_mb'] / peak:.2f}x",
            "-",
            verdict(None),
        )
    )
    for which, label in (("seconds", "first"), ("again_seconds", "second, table sized")):
        table.add(
            Row(
                f"refresh ({label}), {total:,} certificates on {total:,} devices",
                f"{devices[which]:.1f} s",
                f"{base[which]:.1f} s (no device)",
                f"{devices[which] / base[which]:.2f}x",
                "< 15 s",
                verdict(devices[which] < 15),
            )
        )
    print()
    print(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
