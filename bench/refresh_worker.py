"""One exporter process that refreshes every CA and reports (``python -m bench.refresh_worker
CONFIG``): the exporter's own code path (pki_exporter.app.Exporter, Refresher.refresh_all),
timed from the first token request to the last snapshot, in a process of its own so that
its peak RSS is the exporter's alone. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

from bench.common import peak_rss_mb, rss_mb


def main(argv: list[str]) -> int:
    import os

    from pki_exporter.app import Exporter
    from pki_exporter.config.load import load_config

    config = load_config(argv[0])
    repeat = int(argv[1]) if len(argv) > 1 else 1
    exporter = Exporter(config, process_metrics=False)
    before = rss_mb(os.getpid())
    seconds = []
    cpu = []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        exporter.refresher.refresh_all()
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    exporter.stop()
    certificates = invalid = 0
    failed = []
    for tenant in exporter.store.tenants.values():
        for ca in tenant.cas.values():
            if ca.snapshot is None or not ca.last_success:
                failed.append(ca.ca_id)
                continue
            certificates += ca.snapshot.leaves.total
            invalid += ca.snapshot.leaves.invalid
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "rss_before_mb": before,
                "peak_rss_mb": peak_rss_mb(os.getpid()),
                "certificates": certificates,
                "invalid": invalid,
                "failed": failed,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
