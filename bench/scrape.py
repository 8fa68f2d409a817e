"""``/metrics`` latency at ~100 requests/s with ~1,000 series and more, idle and while a
1,000,000-certificate refresh is running, measured with Debian's ``wrk``.

wrk is closed-loop; ``-t1 -c1`` with a Lua ``delay()`` between requests paces it. The delay
is calibrated so that the idle run makes 100 requests/s (10 ms minus the idle latency);
during a refresh, slower answers lower the rate a little (reported). The request carries
Prometheus' own headers (OpenMetrics preferred, gzip). The exporter is the real command
(``pki-exporter --config.file ... --web.listen-address ...``) against the warmed 1e6
simulator; for the "during a refresh" run its refresh interval is 1 s, so that cycles run
back to back for the whole measurement (checked: the Graph requests it made meanwhile are
counted from its own ``intune_cloudpki_graph_requests_total``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import PYTHON, ROOT, Row, SimProcess, child_env, free_port, verdict

TARGET_P99_MS = 25.0
ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
_LUA = """
wrk.method = "GET"
wrk.headers["Accept"] = "%(accept)s"
wrk.headers["Accept-Encoding"] = "gzip"
function delay()
  return %(delay_ms)d
end
done = function(summary, latency, requests)
  for _, p in pairs({50, 90, 99, 99.9}) do
    io.write(string.format("PCT %%g %%d\\n", p, latency:percentile(p)))
  end
  io.write(string.format("MAX %%d\\nMEAN %%f\\nCOUNT %%d\\nDURATION %%d\\n", latency.max,
    latency.mean, summary.requests, summary.duration))
  local e = summary.errors
  io.write(string.format("ERRORS %%d\\n", e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    requests: int
    seconds: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(url: str, seconds: float, delay_ms: int) -> Latency:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_LUA % {"accept": ACCEPT, "delay_ms": delay_ms})
    try:
        out = subprocess.run(
            ["wrk", "-t1", "-c1", f"-d{seconds:.0f}s", "--timeout", "5s", "-s", script.name, url],
            capture_output=True, text=True, timeout=seconds + 30, check=True,
        ).stdout  # fmt: skip
    finally:
        Path(script.name).unlink(missing_ok=True)
    pct = {float(p): int(v) / 1000 for p, v in re.findall(r"^PCT (\S+) (\d+)$", out, re.M)}
    field = {
        k: float(v) for k, v in re.findall(r"^(MAX|MEAN|COUNT|DURATION|ERRORS) (\S+)$", out, re.M)
    }
    return Latency(
        pct[50], pct[90], pct[99], pct[99.9], field["MAX"] / 1000, field["MEAN"] / 1000,
        int(field["COUNT"]), field["DURATION"] / 1e6, int(field["ERRORS"]),
    )  # fmt: skip


class Exporter:
    """``pki-exporter`` serving, against the simulator."""

    def __init__(self, sim: SimProcess, workdir: Path, interval: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / f"serve-{interval}.yaml"
        config.write_text(sim.exporter_config(interval=interval, timeout="60s", concurrency=4))
        self._log = open(workdir / f"serve-{interval}.log", "wb")  # noqa: SIM115 - closed in stop()
        prefix = [PYTHON, "-m", "pki_exporter"]
        if os.environ.get("BENCH_EXPORTER_SCRIPT"):  # an experiment: an instrumented exporter
            prefix = [PYTHON, os.environ["BENCH_EXPORTER_SCRIPT"]]
        if os.environ.get("BENCH_SWITCH_INTERVAL"):  # an experiment: the GIL's switch interval
            prefix = [PYTHON, "-c", "import sys, pki_exporter.app as s; s.SWITCH_INTERVAL = "
                      f"{float(os.environ['BENCH_SWITCH_INTERVAL'])}; from pki_exporter.cli "
                      "import main; sys.exit(main(sys.argv[1:]))"]  # fmt: skip
        self.proc = subprocess.Popen(
            [*prefix, "--config.file", str(config),
             "--web.listen-address", f"127.0.0.1:{self.port}", "--log.level", "error"],
            env=child_env(**sim.secrets_env()), cwd=ROOT, stdout=self._log, stderr=self._log,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> float:
        started = time.perf_counter()
        with httpx.Client() as client:
            while time.perf_counter() - started < timeout:
                if self.proc.poll() is not None:
                    raise SystemExit(f"pki-exporter exited {self.proc.returncode}")
                try:
                    if client.get(self.url + "/ready").status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise SystemExit("pki-exporter did not become ready")

    def scrape(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=30).text

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _graph_requests(text: str) -> float:
    return sum(
        float(m)
        for m in re.findall(r"^intune_cloudpki_graph_requests_total\{[^}]*\} (\S+)$", text, re.M)
    )


def run(sim: SimProcess, workdir: Path, *, seconds: float) -> list[Row]:
    if shutil.which("wrk") is None:
        print("   /metrics latency: skipped: wrk is not installed (apt-get install wrk)")
        return [Row("/metrics latency", "skipped: wrk is not installed", "-", "-", "-", "-")]
    rows = []
    results: dict[str, tuple[Latency, int, str]] = {}
    delay_ms = 10
    for phase, interval in (("idle", "1h"), ("during a 1e6-certificate refresh", "1s")):
        exporter = Exporter(sim, workdir, interval)
        try:
            ready = exporter.wait_ready()
            text = exporter.scrape()
            series = _series(text)
            if phase == "idle":
                calibration = wrk(exporter.url + "/metrics", 3, 10)
                delay_ms = max(0, round(10 - calibration.mean_ms))
            before = _graph_requests(text)
            result = wrk(exporter.url + "/metrics", seconds, delay_ms)
            after = _graph_requests(exporter.scrape())
        finally:
            exporter.stop()
        pages = after - before
        note = (
            f"{pages:.0f} Graph requests during the run (one refresh = "
            f"{sum(len(t.ca_ids) for t in sim.tenants)} CAs' pages)"
            if phase != "idle"
            else f"first refresh done {ready:.1f} s after start"
        )
        print(
            f"   /metrics {phase}: {series} series, {result.rate:.0f} req/s, p50 "
            f"{result.p50_ms:.2f} ms, p90 {result.p90_ms:.2f}, p99 {result.p99_ms:.2f}, p99.9 "
            f"{result.p999_ms:.2f}, max {result.max_ms:.2f}, {result.errors} errors; {note}",
            flush=True,
        )
        results[phase] = (result, series, note)
    idle = results["idle"][0]
    for phase, (result, series, note) in results.items():
        rows.append(
            Row(
                f"/metrics latency, {series} series, {phase}",
                f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms (max {result.max_ms:.1f}) "
                f"at {result.rate:.0f} req/s, {result.requests} requests, {result.errors} errors"
                + ("" if phase == "idle" else f"; {note}"),
                "idle p99 " + f"{idle.p99_ms:.1f} ms" if phase != "idle" else "-",
                f"{result.p99_ms / idle.p99_ms:.1f}x idle p99" if phase != "idle" else "-",
                f"p99 < {TARGET_P99_MS:.0f} ms",
                verdict(result.p99_ms < TARGET_P99_MS and result.errors == 0),
            )
        )
    return rows
