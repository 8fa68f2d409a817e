"""``python -m bench`` (``make bench``): every figure of docs/performance.md, each beside a
baseline measured in the same run, on this machine.

    python -m bench            # every row, about 6 minutes on 2 cores
    python -m bench --quick    # every row, fewer repetitions and shorter runs (~4 minutes)

The simulator and the exporter run as processes of their own; nothing here is part of the
test suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench import crl, decode_fold, graph_budget, refresh, scrape, sdk, transfer
from bench.common import Row, Table, machine, simulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter runs")
    parser.add_argument(
        "--skip-1e6", action="store_true", help="leave out the 1,000,000-certificate rows"
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    table = Table()
    print(f"pki-exporter benchmarks on {machine()}", flush=True)
    decode_fold.run(table, quick=args.quick)
    crl.run(table, quick=args.quick)
    sizes = [refresh.Size(10_000)] + ([] if args.skip_1e6 else [refresh.Size(100_000)])
    with tempfile.TemporaryDirectory(prefix="pki-bench-") as tmp:
        workdir = Path(tmp)
        quirky: sdk.SdkResult | None = None
        for size in sizes:
            total = size.certificates * 10
            print(f"\n== full refresh: {total:,} certificates (10 CAs x {size.certificates:,}), "
                  "simulator warmed in its own process", flush=True)  # fmt: skip
            with simulator(certificates=size.certificates) as sim:
                print(f"   simulator ready in {sim.ready_seconds:.1f} s", flush=True)
                repeat = (2 if args.quick else 3) if total <= 100_000 else (1 if args.quick else 2)
                refresh.measure(sim, size, repeat=repeat, workdir=workdir)
                if total <= 100_000:
                    # The SDK on the benchmark's own pages: it stops at the first unreadable
                    # record, so this costs one page at most.
                    quirky = sdk.read_all(sim, budget=5)
                else:
                    for gzip in (False, True):
                        walk = transfer.simulator_throughput(sim, gzip=gzip)
                        table.add(
                            Row(
                                f"simulator serving, {total:,} certificates, "
                                f"{'gzip (bytes as sent)' if gzip else 'identity'}, one connection",
                                transfer.describe(walk, sim.records),
                                "-", "-", "not the bottleneck", "-",
                            )
                        )  # fmt: skip
                    print("\n== /metrics latency (wrk)", flush=True)
                    for row in scrape.run(sim, workdir, seconds=10 if args.quick else 20):
                        table.add(row)
        refresh.report(table, sizes)
        # The SDK's own rate, on pages it can read (no quirks), small: it is slow.
        print("\n== Graph beta SDK on a quirk-free data set (1 CA, pages of 200)", flush=True)
        if sdk.available() is None:
            with simulator(
                cas=1, certificates=600, page_size=200, extra=["--quirk-share", "0"]
            ) as small:
                clean = sdk.read_all(small, budget=10 if args.quick else 20)
        else:
            clean = sdk.SdkResult(None, None, 0, skipped=sdk.available())
        best = sizes[0]
        table.add(clean.row("1 CA", best.counted / min(best.refresh), quirky))
    # Graph's documented limits and real page latency (issue 11): minutes, not CPU-bound.
    graph_budget.run(table, quick=args.quick or args.skip_1e6)
    print(f"\n== results ({time.perf_counter() - started:.0f} s in all) on {machine()}\n")
    text = table.markdown()
    print(text, flush=True)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
