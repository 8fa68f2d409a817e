"""Shared plumbing of the benchmarks: the simulator in its own process, the exporter's
config for it, timing, peak RSS and the table the figures are printed in.

Nothing here is part of the test suite; it is run by ``make bench`` (``python -m bench``).
"""

from __future__ import annotations

import os
import platform
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent


# -- the machine -------------------------------------------------------------------------


def machine() -> str:
    """nproc, CPU model and Python version: the figures mean nothing without them."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


# -- the table ---------------------------------------------------------------------------


@dataclass
class Row:
    """One figure, its baseline from the same run, and the target it is judged by."""

    name: str
    value: str
    baseline: str
    ratio: str
    target: str
    verdict: str = ""


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  -> {row.name}: {row.value} | baseline {row.baseline} | {row.ratio} | "
            f"target {row.target} {row.verdict}",
            flush=True,
        )

    def markdown(self) -> str:
        lines = [
            "| figure | measured | baseline (same run) | ratio | target | met |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.name} | {r.value} | {r.baseline} | {r.ratio} | {r.target} | {r.verdict} |"
            for r in self.rows
        ]
        return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "-"
    return "yes" if ok else "NO"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], unit: str = "s", digits: int = 2) -> str:
    """``median (min - max)`` of repeated measurements."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f} {unit}"
    return (
        f"{median(values):.{digits}f} {unit} ({min(values):.{digits}f} - {max(values):.{digits}f})"
    )


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a live process (its peak resident set), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class ChildResult:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: bytes
    stderr: bytes


def run_child(args: list[str], env: dict[str, str], timeout: float = 300) -> ChildResult:
    """Run a process to its end; its own peak RSS comes from wait4(), nobody else's."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=ROOT)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        # ru_maxrss is in kilobytes on Linux.
        return ChildResult(seconds, usage.ru_maxrss / 1024, proc.returncode, out.read(), err.read())


# -- the simulator -----------------------------------------------------------------------


UNLIMITED_BUDGET = {"requests_per_20s": 100_000, "writes_per_20s": 100_000}
"""The largest graph_budget the config takes: never binding on loopback."""


@dataclass
class SimTenant:
    name: str
    tenant_id: str
    client_id: str
    client_secret: str
    ca_ids: list[str]


@dataclass
class SimProcess:
    """``python -m pki_simulator`` in its own process, as a real tenant would be."""

    proc: subprocess.Popen[str]
    url: str
    ca_bundle: str
    tenants: list[SimTenant]
    ready_seconds: float
    certificates: int
    """Leaf certificates per CA."""
    page_size: int

    @property
    def records(self) -> int:
        return self.certificates * sum(len(t.ca_ids) for t in self.tenants)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exporter_config(
        self,
        *,
        interval: str = "5m",
        timeout: str = "60s",
        concurrency: int = 4,
        windows: Sequence[int] = (7, 30, 90),
        graph_budget: dict[str, int] | None = UNLIMITED_BUDGET,
    ) -> str:
        """The exporter's config for this simulator. The loopback benchmarks measure the
        exporter's own work, so by default the Graph budget is set out of the way (the
        simulator enforces no limits unless asked); ``bench.graph_budget`` measures the
        real-world refresh with the default budget and Graph's documented limits."""
        tenants = [
            {
                "name": t.name,
                "tenant_id": t.tenant_id,
                "client_id": t.client_id,
                "authority_host": self.url,
                "graph_url": self.url,
                "ca_bundle": self.ca_bundle,
                "credential": {"client_secret_env": f"BENCH_SECRET_{n}"},
                "certification_authorities": "all",
                **({"graph_budget": dict(graph_budget)} if graph_budget is not None else {}),
            }
            for n, t in enumerate(self.tenants)
        ]
        doc = {
            "refresh": {"interval": interval, "timeout": timeout, "concurrency": concurrency},
            "expiry_windows_days": list(windows),
            "tenants": tenants,
        }
        return yaml.safe_dump(doc, sort_keys=False)

    def secrets_env(self) -> dict[str, str]:
        return {f"BENCH_SECRET_{n}": t.client_secret for n, t in enumerate(self.tenants)}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_bundle)

    def token(self, client: httpx.Client, tenant: SimTenant) -> str:
        answer = client.post(
            f"{self.url}/{tenant.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": tenant.client_id,
                "client_secret": tenant.client_secret,
                "scope": f"{self.url}/.default",
            },
        )
        answer.raise_for_status()
        token: str = answer.json()["access_token"]
        return token


def _field(lines: list[str], name: str) -> list[str]:
    return [line.split(":", 1)[1].split()[0] for line in lines if line.startswith(name + ":")]


@contextmanager
def simulator(
    *,
    tenants: int = 1,
    cas: int = 10,
    certificates: int,
    page_size: int = 1000,
    extra: Sequence[str] = (),
    warm: bool = True,
) -> Iterator[SimProcess]:
    """Start the simulator (warmed: every page rendered and gzipped before serving)."""
    command = [
        PYTHON, "-m", "pki_simulator", "--tenants", str(tenants), "--cas", str(cas),
        "--certificates", str(certificates), "--page-size", str(page_size),
        "--port", str(free_port()), *extra,
    ]  # fmt: skip
    if warm:
        command.append("--warm")
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Serving until"):
                break
        else:
            raise RuntimeError("the simulator ended before serving:\n" + "\n".join(lines))
        ready = time.perf_counter() - started
        # Each tenant block: Tenant, Tenant id, Client id, Client secret, ..., its CA lines.
        sim_tenants: list[SimTenant] = []
        for line in lines:
            if line.startswith("Tenant:"):
                sim_tenants.append(SimTenant(line.split(":", 1)[1].strip(), "", "", "", []))
            elif sim_tenants and line.startswith("Tenant id:"):
                sim_tenants[-1].tenant_id = line.split(":", 1)[1].strip()
            elif sim_tenants and line.startswith("Client id:"):
                sim_tenants[-1].client_id = line.split(":", 1)[1].strip()
            elif sim_tenants and line.startswith("Client secret:"):
                sim_tenants[-1].client_secret = line.split(":", 1)[1].strip()
            elif sim_tenants and re.match(r"^  CA [0-9a-f-]{36} ", line):
                sim_tenants[-1].ca_ids.append(line.split()[1])
        yield SimProcess(
            proc,
            _field(lines, "Authority URL")[0],
            _field(lines, "CA bundle")[0],
            sim_tenants,
            ready,
            certificates,
            page_size,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PKI_EXPORTER_FAKE_NOW", None)
    env.update(extra)
    return env


def resource_children_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
