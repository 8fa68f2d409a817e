"""The real-world refresh: Graph's documented limits on, 150-400 ms per leaf page.

``python -m bench.graph_budget [--quick]`` (also part of ``make bench``). For 100,000 and
1,000,000 certificates in 6 CAs (Cloud PKI's most per tenant), the simulator in its own
process enforces Microsoft's documented Intune limits (per app and tenant: 1,000 requests
and 100 writes per 20 s) and answers each leaf page after 150-400 ms. ``pki-exporter
--once`` (default ``graph_budget``, ``refresh.concurrency`` 6) reads every CA with each
``leaf_source``. Each refresh is set against two floors computed for the same requests:

- the budget floor: the time the documented limit allows for that many requests
  (``(ceil(n / limit) - 1) x 20 s``, writes and all requests each, the larger);
- the latency floor: the longest CA's page chain times the mean page latency.

It prints refresh time / max(floors) and the 429s received (goal: none), and, per 100,000
certificates, the requests and bytes on the wire (gzip) each source needs.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from bench.common import PYTHON, ROOT, Row, SimProcess, Table, child_env, machine, simulator
from pki_exporter.graph.client import NAVIGATION_PREFER, NAVIGATION_QUERY
from pki_exporter.graph.records import LEAF_FIELDS

CAS = 6
LATENCY = (0.15, 0.40)
WINDOW = 20.0
DOC_REQUESTS, DOC_WRITES = 1000, 100  # per app and tenant per 20 s (Microsoft's documentation)
NAV_PAGE = 999
ACTION_PAGE = 1000
RATIO_TARGET = 1.2
SOURCES = ("action", "navigation")


@dataclass
class Run:
    source: str
    total: int
    seconds: float
    wall: float
    """``--once`` from process start to exit."""
    requests: int
    writes: int
    throttled: int
    pages_longest_ca: int

    @property
    def budget_floor(self) -> float:
        windows = max(math.ceil(self.requests / DOC_REQUESTS), math.ceil(self.writes / DOC_WRITES))
        return (windows - 1) * WINDOW

    @property
    def latency_floor(self) -> float:
        return self.pages_longest_ca * sum(LATENCY) / 2

    @property
    def ratio(self) -> float:
        return self.seconds / max(self.budget_floor, self.latency_floor)


def _config(sim: SimProcess, source: str) -> str:
    doc = yaml.safe_load(
        sim.exporter_config(interval="1h", timeout="60s", concurrency=CAS, graph_budget=None)
    )
    for tenant in doc["tenants"]:
        tenant["leaf_source"] = source
    return yaml.safe_dump(doc, sort_keys=False)


def _samples(text: str, name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            values[labels] = float(value)
    return values


def refresh_once(sim: SimProcess, source: str, workdir: Path) -> Run:
    config = workdir / f"bench-budget-{source}.yaml"
    config.write_text(_config(sim, source))
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, "-m", "pki_exporter", "--once", "--config.file", str(config)],
        env=child_env(**sim.secrets_env()),
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"--once failed ({source}):\n{done.stderr[-2000:]}")
    # The refresh: the CAs are read at once, so the cycle is its longest CA (the CA list
    # before them is one GET); process start, imports and the token are left out.
    seconds = max(_samples(done.stdout, "intune_cloudpki_refresh_duration_seconds").values())
    codes = _samples(done.stdout, "intune_cloudpki_graph_requests_total")
    throttled = int(sum(v for k, v in codes.items() if 'code="429"' in k))
    requests = int(sum(codes.values()))
    per_ca = sim.certificates
    page = ACTION_PAGE if source == "action" else NAV_PAGE
    chain = math.ceil(per_ca / page)
    writes = chain * CAS if source == "action" else 0
    return Run(source, sim.records, seconds, wall, requests, writes, throttled, chain)


def wire(sim: SimProcess, source: str) -> tuple[int, int]:
    """Requests and gzip bytes on the wire to read every leaf of every CA with ``source``."""
    tenant = sim.tenants[0]
    requests = size = 0
    with httpx.Client(verify=sim.ssl_context(), timeout=120) as client:
        token = sim.token(client, tenant)
        headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
        for ca_id in tenant.ca_ids:
            base = f"{sim.url}/beta/deviceManagement/cloudCertificationAuthority/{ca_id}"
            if source == "action":
                method, prefer = "POST", "include-unknown-enum-members"
                url: str | None = f"{base}/getAllCloudCertificationAuthorityLeafCertificates"
            else:
                method, prefer = "GET", NAVIGATION_PREFER
                url = f"{base}/cloudCertificationAuthorityLeafCertificate?{NAVIGATION_QUERY}"
            while url:
                response = client.request(method, url, headers={**headers, "Prefer": prefer})
                response.raise_for_status()
                requests += 1
                size += response.num_bytes_downloaded
                url = response.json().get("@odata.nextLink")
    return requests, size


def run(table: Table, *, quick: bool = False, sizes: Sequence[int] = (100_000, 1_000_000)) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pki-bench-budget-") as tmp:
        workdir = Path(tmp)
        for total in sizes:
            per_ca = math.ceil(total / CAS)
            # Pages are rendered before serving (the action's by --warm, the navigation
            # property's for the exporter's $select here), so that the simulator's own CPU
            # is not what the refresh waits for.
            extra = [
                "--graph-limits",
                "default",
                "--page-latency",
                f"{LATENCY[0]}-{LATENCY[1]}",
                "--warm-navigation",
                ",".join(LEAF_FIELDS),
            ]
            print(
                f"\n== real-world refresh: {per_ca * CAS:,} certificates in {CAS} CAs, "
                f"documented limits on, {LATENCY[0]}-{LATENCY[1]} s per page",
                flush=True,
            )
            with simulator(cas=CAS, certificates=per_ca, extra=extra) as sim:
                for source in SOURCES:
                    result = refresh_once(sim, source, workdir)
                    print(
                        f"   {source}: {result.seconds:.1f} s, {result.requests} requests, "
                        f"{result.throttled} x 429; floors: budget {result.budget_floor:.1f} s, "
                        f"latency {result.latency_floor:.1f} s",
                        flush=True,
                    )
                    binding = max(result.budget_floor, result.latency_floor)
                    which = "budget" if result.budget_floor >= result.latency_floor else "latency"
                    table.add(
                        Row(
                            f"real-world refresh, {result.total:,} certificates, 6 CAs, "
                            f"leaf_source {source}",
                            f"{result.seconds:.1f} s (--once {result.wall:.1f} s from process "
                            f"start), {result.requests} requests, {result.throttled} x 429",
                            f"{which} floor {binding:.1f} s (budget {result.budget_floor:.1f} s, "
                            f"latency {result.latency_floor:.1f} s)",
                            f"{result.ratio:.2f}x",
                            f"<= {RATIO_TARGET}x, 0 x 429",
                            "yes"
                            if result.ratio <= RATIO_TARGET and result.throttled == 0
                            else "NO",
                        )
                    )
                if total == sizes[0]:
                    for source in SOURCES:
                        requests, size = wire(sim, source)
                        scale = 100_000 / sim.records
                        table.add(
                            Row(
                                f"reading 100,000 certificates, leaf_source {source}",
                                f"{requests * scale:.0f} requests, "
                                f"{size * scale / 1e6:.1f} MB on the wire (gzip)",
                                "-",
                                "-",
                                "(advice for large tenants)",
                                "-",
                            )
                        )
            if quick:
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.graph_budget")
    parser.add_argument("--quick", action="store_true", help="100,000 certificates only")
    args = parser.parse_args(argv)
    print(f"pki-exporter real-world refresh benchmark on {machine()}", flush=True)
    table = Table()
    run(table, quick=args.quick)
    print()
    print(table.markdown(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
