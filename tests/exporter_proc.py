"""Run pki-exporter as a real subprocess and talk to it over HTTP, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

WINDOWS = (7, 30, 90)
CERT_METRICS = (  # the metrics the simulator has a ground truth for
    "intune_cloudpki_leaf_certificates",
    "intune_cloudpki_leaf_certificate_earliest_expiry_timestamp_seconds",
    "intune_cloudpki_leaf_certificates_expiring",
    "intune_cloudpki_leaf_certificate_latest_issuance_timestamp_seconds",
    "intune_cloudpki_ca_info",
    "intune_cloudpki_ca_certificate_expiry_timestamp_seconds",
    "intune_cloudpki_leaf_certificates_invalid",
    "intune_cloudpki_devices",
    "intune_cloudpki_devices_expiring",
    "intune_cloudpki_devices_renewal_due",
    "intune_cloudpki_leaf_certificates_without_device",
)


def certificate_samples(samples: Samples) -> Samples:
    """Only the metrics the simulator's ground truth covers."""
    return {k: v for k, v in samples.items() if k[0] in CERT_METRICS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def select(
    samples: Samples, prefix: str = "intune_cloudpki_", exclude: tuple[str, ...] = ()
) -> Samples:
    return {
        k: v for k, v in samples.items() if k[0].startswith(prefix) and not k[0].startswith(exclude)
    }


def tenant_config(sim: Any, tenant: Any, name: str, **overrides: Any) -> dict[str, Any]:
    """The config of one simulator tenant, with a client secret from the environment."""
    entry: dict[str, Any] = {
        "name": name,
        "tenant_id": tenant.tenant_id,
        "client_id": tenant.client_id,
        "authority_host": sim.url,
        "graph_url": sim.url,
        "ca_bundle": str(sim.ca_bundle_path),
        "credential": {"client_secret_env": f"SECRET_{name.upper().replace('-', '_')}"},
        "certification_authorities": "all",
    }
    entry.update(overrides)
    return entry


@dataclass
class ExporterProcess:
    """A running pki-exporter; ``stop()`` returns its log."""

    args: list[str]
    env: Mapping[str, str]
    cwd: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    scheme: str = "http"
    wrapper: list[str] = field(default_factory=list)
    """A command the exporter is run through (``unshare ...``), which must exec it."""
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> ExporterProcess:
        self.log_path = self.cwd / f"exporter-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "pki_exporter", *self.args],
            cwd=self.cwd,
            env=dict(self.env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_http("/healthz", timeout)
        if wait_ready:
            self.wait_http("/ready", timeout)
        return self

    def wait_http(self, path: str, timeout: float = 30.0, **kw: Any) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.log()}")
            try:
                response = httpx.get(self.url + path, timeout=5, **kw)
                if response.status_code == 200:
                    return response
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"{path} not 200 within {timeout}s ({last}):\n{self.log()}")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def scrape(self, **kw: Any) -> Samples:
        response = self.get("/metrics", **kw)
        assert response.status_code == 200, response.text
        return parse_samples(response.text)

    def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> Samples:
        """Scrape until ``predicate(samples)`` holds; returns those samples."""
        deadline = time.monotonic() + timeout
        samples: Samples = {}
        while time.monotonic() < deadline:
            samples = self.scrape()
            if predicate(samples):
                return samples
            time.sleep(0.1)
        raise AssertionError(
            f"timed out waiting for {what}; last scrape:\n{samples}\nlog:\n{self.log()}"
        )

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.log()


def write_config(path: Path, tenants: list[dict[str, Any]], **top: Any) -> Path:
    doc: dict[str, Any] = {
        "refresh": {"interval": "1s", "timeout": "5s", "concurrency": 4},
        "expiry_windows_days": [7, 30, 90],
        "tenants": tenants,
    }
    doc.update(top)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PKI_EXPORTER", "SECRET_", "AZURE_"))
    }
    env.update(extra)
    return env
