"""A full refresh against the simulator, against the transfer floor, at 1e5 and 1e6.

The simulator runs in its own process, warmed (every page rendered and gzipped before the
first request), 10 CAs. For each size, interleaved and repeated (best and median shown):

- the floor: the same pages downloaded with the same HTTP client and decoding nothing
  (bench.transfer), gzip and identity, and the faster of the two is the floor;
- the exporter: ``bench.refresh_worker``, a process of its own running the exporter's code
  path (``Exporter`` + ``Refresher.refresh_all``: MSAL token, CA list, every page decoded
  and folded, snapshots swapped). The first refresh of the process pays the token, the
  TLS handshakes and Python's first-call costs; the figure is the second, as the exporter
  refreshes every ``refresh.interval``. Its peak RSS (VmHWM) is the exporter's alone;
- ``pki-exporter --once``, the command a cron job or the textfile collector would run,
  end to end from process start, with its own peak RSS;
- the official Microsoft Graph beta SDK for Python reading the same leaf certificates
  (bench.sdk), when installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import transfer
from bench.common import (
    PYTHON,
    ROOT,
    Row,
    SimProcess,
    Table,
    child_env,
    median,
    peak_rss_mb,
    verdict,
)

RATIO_TARGET = 0.8
SECONDS_TARGET_1E6 = 15.0
RSS_TARGET_MB = 150.0


@dataclass
class Size:
    certificates: int
    floor: dict[str, list[float]] = field(default_factory=lambda: {"gzip": [], "identity": []})
    refresh: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    floor_cpu: list[float] = field(default_factory=list)
    first_refresh: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    once: list[float] = field(default_factory=list)
    once_rss: list[float] = field(default_factory=list)
    counted: int = 0


def run_worker(sim: SimProcess, config: Path) -> dict[str, Any]:
    """One exporter process: two refreshes, their times and the process's peak RSS."""
    proc = subprocess.run(
        [PYTHON, "-m", "bench.refresh_worker", str(config), "2"],
        env=child_env(**sim.secrets_env(), PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        capture_output=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"refresh worker failed:\n{proc.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    if result["failed"]:
        raise SystemExit(f"refresh worker: CAs failed: {result['failed']}")
    return result


def run_once(sim: SimProcess, config: Path) -> tuple[float, float]:
    """``pki-exporter --once``: wall time from process start and peak RSS (VmHWM, polled)."""
    with tempfile.NamedTemporaryFile(suffix=".prom") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [PYTHON, "-m", "pki_exporter", "--once", "--config.file", str(config),
             "--output", out.name, "--log.level", "error"],
            env=child_env(**sim.secrets_env()),
            cwd=ROOT,
        )  # fmt: skip
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"pki-exporter --once exited {proc.returncode}")
    return seconds, peak


def measure(sim: SimProcess, size: Size, *, repeat: int, workdir: Path) -> None:
    config = workdir / f"config-{size.certificates}.yaml"
    config.write_text(sim.exporter_config(interval="5m", timeout="60s", concurrency=4))
    for n in range(repeat):
        for encoding in ("gzip", "identity"):
            walk = transfer.download_all(sim, encoding=encoding, concurrency=4)
            size.floor[encoding].append(walk.seconds)
            if encoding == "gzip":
                size.floor_cpu.append(walk.cpu_seconds)
            print(
                f"   floor ({encoding}) #{n + 1}: {walk.seconds:.2f} s, {walk.pages} pages, "
                f"{walk.wire_bytes / 1e6:.0f} MB on the wire",
                flush=True,
            )
        result = run_worker(sim, config)
        seconds = result["seconds"]
        assert isinstance(seconds, list)
        size.first_refresh.append(seconds[0])
        size.refresh.append(seconds[-1])
        size.cpu.append(result["cpu_seconds"][-1])
        size.rss.append(float(result["peak_rss_mb"]))
        size.counted = int(result["certificates"]) + int(result["invalid"])
        print(
            f"   exporter refresh #{n + 1}: first {seconds[0]:.2f} s, then {seconds[-1]:.2f} s "
            f"(CPU {result['cpu_seconds'][-1]:.2f} s), peak RSS "
            f"{result['peak_rss_mb']:.0f} MB, {size.counted:,} records",
            flush=True,
        )
    once, once_rss = run_once(sim, config)
    size.once.append(once)
    size.once_rss.append(once_rss)
    print(
        f"   pki-exporter --once: {once:.2f} s from process start, peak RSS {once_rss:.0f} MB",
        flush=True,
    )


def report(table: Table, sizes: list[Size]) -> None:
    for size in sizes:
        label = f"{size.certificates * 10:,.0f} certificates (10 CAs)"
        floor_encoding = min(size.floor, key=lambda e: min(size.floor[e]))
        floor = size.floor[floor_encoding]
        ratio = min(floor) / min(size.refresh)
        ratio_median = median(floor) / median(size.refresh)
        records = size.counted
        table.add(
            Row(
                f"full refresh, {label}",
                f"{min(size.refresh):.2f} s (median {median(size.refresh):.2f}) = "
                f"{records / min(size.refresh):,.0f} records/s; exporter CPU "
                f"{median(size.cpu):.1f} s",
                f"download only ({floor_encoding}, same client) {min(floor):.2f} s "
                f"(median {median(floor):.2f}; client CPU {median(size.floor_cpu):.1f} s with "
                f"gzip); other encoding "
                f"{min(size.floor['identity' if floor_encoding == 'gzip' else 'gzip']):.2f} s",
                f"{ratio:.2f}x of floor speed (medians {ratio_median:.2f}x)",
                f">= {RATIO_TARGET}x",
                verdict(ratio >= RATIO_TARGET),
            )
        )
    big = max(sizes, key=lambda s: s.certificates)
    small = min(sizes, key=lambda s: s.certificates)
    if big.certificates >= 100_000:
        table.add(
            Row(
                f"one full refresh, {big.certificates * 10:,} certificates",
                f"{min(big.refresh):.2f} s (first of its process {min(big.first_refresh):.2f} s; "
                f"`--once` from process start {min(big.once):.2f} s)",
                "-",
                "-",
                f"< {SECONDS_TARGET_1E6:.0f} s",
                verdict(min(big.refresh) < SECONDS_TARGET_1E6),
            )
        )
    for size in sizes:
        table.add(
            Row(
                f"exporter peak RSS, {size.certificates * 10:,} certificates",
                f"{max(size.rss):.0f} MB (refresh worker); `--once` {max(size.once_rss):.0f} MB",
                f"{max(small.rss):.0f} MB at {small.certificates * 10:,}"
                if size is not small
                else "-",
                f"{max(size.rss) / max(small.rss):.2f}x" if size is not small else "-",
                f"< {RSS_TARGET_MB:.0f} MB, flat",
                verdict(
                    max(size.rss) < RSS_TARGET_MB
                    and max(size.once_rss) < RSS_TARGET_MB
                    and (size is small or max(size.rss) <= 1.15 * max(small.rss))
                ),
            )
        )


def environment_note() -> str:
    return f"(simulator and exporter share the machine's {os.cpu_count()} CPUs)"
