"""Run pki-exporter as a real subprocess and talk to it over HTTP, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

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
    """A port that was free a moment ago: only for a process that must be told its own
    address before it starts (``--web.external-url`` names the port). Everything else binds
    port 0 and reads the port bound (``ExporterProcess``, ``closed_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


T = TypeVar("T")


def on_a_free_port(start: Callable[[int], T], tries: int = 5) -> T:
    """``start(port)`` on a `free_port`, again on another when the port was taken between
    its pick and the child's bind (another test's process: the child's error, in the
    AssertionError ``start`` raises, says "Address already in use"), up to ``tries`` times."""
    for _ in range(tries - 1):
        try:
            return start(free_port())
        except AssertionError as exc:
            if "Address already in use" not in str(exc):
                raise
    return start(free_port())


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port where nothing listens, for as long as the block runs.

    The socket is bound but never listens: a connection to it is refused, and no other
    process can take the port meanwhile (as one could a port picked and released).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


#: The exporter's start line names the address it bound (logfmt or JSON), port 0 resolved.
_LISTEN = re.compile(
    r'"?listen"?\s*[=:]\s*"?(?P<scheme>https?)://(?P<host>\[[^\]]*\]|[^:/"\s]+):(?P<port>\d+)'
)


def bound_port(log: str) -> int | None:
    """The port in the exporter's "pki-exporter started" line, once it is logged."""
    for line in log.splitlines():
        if "pki-exporter started" in line:
            match = _LISTEN.search(line)
            if match:
                return int(match["port"])
    return None


class LineReader:
    """Lines of a child's pipe, each read with a deadline (never a blocking ``readline``).

    A daemon thread drains the pipe into a queue, so a child that stops writing (or
    writes more than a pipe holds) can neither hang the test nor block on its output.
    """

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: Any) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):  # closed under us when the test ends
            pass
        finally:
            self._queue.put(None)

    def readline(self, timeout: float = 30.0) -> str:
        """The next line; AssertionError after ``timeout`` seconds or at end of output."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s; so far: {self.lines}") from None
        if line is None:
            self._queue.put(None)
            raise AssertionError(f"output ended; it said: {self.lines}")
        self.lines.append(line)
        return line

    def until(self, predicate: Any, timeout: float = 30.0) -> str:
        """Read lines until one satisfies ``predicate``; that line. One deadline for all."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if predicate(line):
                return line


def reap(proc: subprocess.Popen[Any], grace: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always waits. The exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


@contextlib.contextmanager
def running(args: list[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """``subprocess.Popen`` that is reaped (terminated, then killed) when the block ends."""
    proc = subprocess.Popen(args, **popen)
    try:
        yield proc
    finally:
        reap(proc)


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\\n]*(?:\\[\\"n][^"\\\n]*)*)"'
_VALUE = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|Inf)|NaN"
_SAMPLE_LINE = re.compile(
    rf"({_NAME})(?:\{{((?:{_LABEL}(?:,{_LABEL})*,?)?)\}})? ({_VALUE})(?: -?\d+)?"
)
_LABEL_PAIR = re.compile(_LABEL)
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return re.sub(r"\\.", lambda m: _ESCAPES[m.group(0)], value)


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition (0.0.4): (name, sorted labels) -> value.

    Strict: a line that is neither a sample nor a comment (``# HELP``, ``# TYPE``), and a
    sample given twice, fail the test (prometheus_client's parser, used before, was a
    third of the end-to-end tests' CPU; its strictness is kept where it matters here).
    """
    samples: Samples = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#"):  # HELP, TYPE and comments
            continue
        match = _SAMPLE_LINE.fullmatch(line)
        if match is None:
            raise AssertionError(f"line {number} of the exposition is no sample: {line!r}")
        labels = match.group(2)
        pairs = (
            tuple(sorted((k, _unescape(v)) for k, v in _LABEL_PAIR.findall(labels)))
            if labels
            else ()
        )
        key = (match.group(1), pairs)
        if key in samples:
            raise AssertionError(f"line {number} of the exposition repeats a sample: {line!r}")
        samples[key] = float(match.group(7))
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
    """A running pki-exporter; ``stop()`` returns its log.

    With ``port=0`` (the default) the exporter is told to listen on port 0 by the caller
    (``--web.listen-address 127.0.0.1:0``) and the port the kernel gave it is read from its
    "pki-exporter started" log line: no port is picked, released and hoped for.
    """

    args: list[str]
    env: Mapping[str, str]
    cwd: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    scheme: str = "http"
    wrapper: list[str] = field(default_factory=list)
    """A command the exporter is run through (``unshare ...``), which must exec it."""
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> ExporterProcess:
        fd, name = tempfile.mkstemp(prefix="exporter-", suffix=".log", dir=self.cwd)
        self.log_path = Path(name)
        self._log = os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "pki_exporter", *self.args],
            cwd=self.cwd,
            env=dict(self.env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            if self.port == 0:
                self.port = self.wait_bound(timeout)
            self.wait_http("/healthz", timeout)
            if wait_ready:
                self.wait_http("/ready", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_bound(self, timeout: float = 30.0) -> int:
        """The port the exporter listens on, from its start line (port 0 resolved)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            port = bound_port(self.log())
            if port is not None:
                return port
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"no 'pki-exporter started' line within {timeout}s:\n{self.log()}")

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
        """SIGTERM, SIGKILL after ``timeout`` seconds; always reaped. The whole log."""
        if self.proc is not None:
            reap(self.proc, timeout)
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
