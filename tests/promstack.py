"""Real Prometheus and Alertmanager processes for tests, and the dashboard's queries.

The tests run Debian's `prometheus` and `prometheus-alertmanager` as they are, on loopback
port 0 (the port bound is read from their "Listening on" log line), with configs generated into a temporary directory that also holds their
logs. Nothing here sleeps for a fixed time: every wait polls a condition up to a deadline
and, on timeout, says what it waited for, what it saw last and where the logs are.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
import yaml

if TYPE_CHECKING:
    from tests.exporter_proc import ExporterProcess

REPO = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = REPO / "grafana" / "pki-exporter.json"
RULES_PATH = REPO / "prometheus" / "alerts.yml"
RULES_TEST_PATH = REPO / "prometheus" / "alerts.test.yml"

T = TypeVar("T")


# ------------------------------------------------------------------------------- binaries


def require_binary(*names: str) -> str:
    """Path of the first of `names` on PATH.

    Missing binaries skip the test for an unprivileged user (who cannot install them) and
    fail it for root, because `make test` installs them as root
    (scripts/install-system-deps.sh) and a silent skip would hide that it did not.
    """
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    wanted = " or ".join(names)
    if os.geteuid() == 0:
        pytest.fail(f"{wanted} is not installed; run scripts/install-system-deps.sh")
    pytest.skip(f"{wanted} is not installed; run scripts/install-system-deps.sh as root")


# ---------------------------------------------------------------------------- waiting


def wait_until(
    probe: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; return that.

    Exceptions raised by the probe count as "not yet" (a server still starting refuses
    connections); the last one is reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except Exception as exc:  # reported below if the deadline passes
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}"
            if diagnostics is not None:
                message += "\n" + diagnostics()
            raise AssertionError(message)
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


_LISTENING_ON = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(?P<port>\d+)')


class ManagedProcess:
    """A child process in its own session, logging to a file, stopped for sure."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self._log.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def listening_port(self, timeout: float = 30.0) -> int:
        """The port the process bound, from its ``msg="Listening on" address=...`` line
        (exporter-toolkit logs the listener's own address: port 0 resolved)."""

        def bound() -> int | None:
            if not self.running():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}")
            match = _LISTENING_ON.search(self.log_path.read_text(errors="replace"))
            return int(match["port"]) if match else None

        return wait_until(
            bound,
            timeout=timeout,
            interval=0.05,
            what=f"{self.name}'s 'Listening on' line",
            diagnostics=self.describe,
        )

    def stop(self, grace: float = 10.0) -> None:
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self, lines: int = 30) -> str:
        state = "running" if self.running() else f"exited with {self.proc.returncode}"
        return f"--- {self.name} ({state}), log {self.log_path}:\n{self.tail(lines)}"


def _get_json(url: str, params: Mapping[str, str | Sequence[str]] | None = None) -> Any:
    response = httpx.get(url, params=params, timeout=5.0)
    response.raise_for_status()
    return response.json()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class Prometheus:
    """`prometheus` with a generated prometheus.yml; scrape and evaluation every second."""

    def __init__(
        self,
        workdir: Path,
        scrape_configs: list[dict[str, Any]],
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        interval: str = "1s",
    ) -> None:
        binary = require_binary("prometheus")
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": scrape_configs,
            "rule_files": [str(path) for path in rule_files],
        }
        if alertmanager_url is not None:
            target = alertmanager_url.removeprefix("http://")
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        (workdir / "prometheus-data").mkdir()
        self.process = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                "--web.listen-address=127.0.0.1:0",
                "--log.level=info",
            ],
            workdir,
        )
        try:
            self.port = self.process.listening_port()
        except BaseException:
            self.process.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: _ready(f"{self.url}/-/ready"),
            timeout=timeout,
            what=f"Prometheus ready on {self.url}",
            diagnostics=self.process.describe,
        )

    def _api(self, path: str, params: Mapping[str, str | Sequence[str]] | None = None) -> Any:
        body = _get_json(f"{self.url}/api/v1/{path}", params)
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result list (vector) or a one-element list (scalar)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5.0)
        body = response.json()
        if body.get("status") != "success":
            raise QueryError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self._api(f"label/{label}/values", {"match[]": [match]}))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._api("alerts")["alerts"])

    def stop(self) -> None:
        self.process.stop()


class QueryError(AssertionError):
    """Prometheus refused a query (syntax or execution error)."""


class Alertmanager:
    """`prometheus-alertmanager` without clustering, routing everything to one webhook."""

    def __init__(self, workdir: Path, webhook_url: str) -> None:
        binary = require_binary("prometheus-alertmanager", "alertmanager")
        config = {
            "route": {
                "receiver": "webhook",
                # '...' groups by every label: one notification per alert, easy to assert.
                "group_by": ["..."],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                }
            ],
        }
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        (workdir / "alertmanager-data").mkdir()
        self.process = ManagedProcess(
            "alertmanager",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.path={workdir / 'alertmanager-data'}",
                "--web.listen-address=127.0.0.1:0",
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
            workdir,
        )
        try:
            self.port = self.process.listening_port()
        except BaseException:
            self.process.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: _ready(f"{self.url}/-/ready"),
            timeout=timeout,
            what=f"Alertmanager ready on {self.url}",
            diagnostics=self.process.describe,
        )

    def stop(self) -> None:
        self.process.stop()


class WebhookReceiver:
    """An HTTP server that records Alertmanager's webhook notifications."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length))
                with receiver._lock:
                    receiver.notifications.append(payload)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification received so far, oldest first."""
        with self._lock:
            return [alert for payload in self.notifications for alert in payload["alerts"]]

    def find(self, alertname: str, status: str = "firing") -> list[dict[str, Any]]:
        return [
            alert
            for alert in self.alerts()
            if alert["labels"].get("alertname") == alertname and alert["status"] == status
        ]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------------------- rules


def rules_with_for(source: Path, destination: Path, duration: str) -> None:
    """Copy the alerting rules with every `for:` set to `duration`.

    A real fleet needs `for: 1h`; a test cannot wait that long. Only `for` changes: the
    expressions, labels and annotations are the ones users deploy.
    """
    document = yaml.safe_load(source.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = duration
    destination.write_text(yaml.safe_dump(document, sort_keys=False))


# --------------------------------------------------------------------------- dashboard

_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_REGEX_SPECIALS = re.compile(r"([\^$*+?.()|{}\[\]'])")


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every Prometheus target of every panel."""
    return [
        (panel.get("title", ""), target.get("refId", ""), target["expr"])
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def variable_query(variable: Mapping[str, Any]) -> str:
    query = variable.get("query", "")
    if isinstance(query, Mapping):
        query = query.get("query", "")
    return str(query)


def parse_label_values(query: str) -> tuple[str, str]:
    """`label_values(selector, label)` -> (selector, label)."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return match["selector"], match["label"]


def grafana_regex_escape(value: str) -> str:
    """How Grafana writes one selected value into a `=~"$var"` matcher for Prometheus.

    Regex metacharacters get a backslash, itself doubled inside the PromQL string
    (Grafana's prometheusSpecialRegexEscape).
    """
    return _REGEX_SPECIALS.sub(r"\\\\\1", value.replace("\\", "\\\\\\\\"))


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$name` and `${name}` as Grafana would; unknown variables are an error."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


# Grafana's built-in interval variables, for a Prometheus that scrapes every second.
BUILTIN_INTERVALS = {
    "__rate_interval": "15s",
    "__interval": "5s",
    "__interval_ms": "5000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}


@contextlib.contextmanager
def alerting_stack(
    workdir: Path, config: Path, env: Mapping[str, str], job: str
) -> Iterator[tuple[ExporterProcess, Prometheus, Alertmanager, WebhookReceiver]]:
    """A pki-exporter (``config``, ``env``) whose port is named in its --web.external-url,
    scraped as ``job`` by a Prometheus evaluating prometheus/alerts.yml with every `for:`
    shortened to 1s, its alerts routed by an Alertmanager to a webhook served here; all of
    them ready when this yields and stopped (last started, first stopped) when it ends."""
    from tests.exporter_proc import ExporterProcess, bound_port, on_a_free_port

    def start_exporter(port: int) -> ExporterProcess:
        exporter = ExporterProcess(
            args=[
                *("--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}"),
                *("--log.level", "debug", "--web.external-url", f"http://127.0.0.1:{port}/"),
            ],
            env=env,
            cwd=workdir,
            port=port,
        )
        return exporter.start(wait_ready=True)

    with contextlib.ExitStack() as stack:
        # The port is named in --web.external-url, so chosen before the exporter starts; the
        # exporter answering on it is ours once its own start line names it.
        exporter = on_a_free_port(start_exporter)
        stack.callback(exporter.stop)
        assert bound_port(exporter.log()) == exporter.port, exporter.log()
        webhook = WebhookReceiver()
        stack.callback(webhook.stop)
        alertmanager = Alertmanager(workdir, webhook.url)
        stack.callback(alertmanager.stop)
        rules = workdir / "alerts-for-1s.yml"
        rules_with_for(RULES_PATH, rules, "1s")
        prometheus = Prometheus(
            workdir,
            [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}],
            rule_files=[rules],
            alertmanager_url=alertmanager.url,
        )
        stack.callback(prometheus.stop)
        alertmanager.wait_ready()
        prometheus.wait_ready()
        yield exporter, prometheus, alertmanager, webhook


@dataclass
class AlertingStack:
    """What `alerting_stack` runs, beside the simulator the exporter reads."""

    workdir: Path
    sim: Any
    exporter: ExporterProcess
    prometheus: Prometheus
    alertmanager: Alertmanager
    webhook: WebhookReceiver

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.exporter.port}"

    @property
    def external_url(self) -> str:
        return f"{self.exporter.url}/"

    def diagnostics(self) -> str:
        exporter_log = "\n".join(self.exporter.log().splitlines()[-30:])
        return "\n".join(
            [
                f"logs and configs in {self.workdir}",
                self.prometheus.process.describe(),
                self.alertmanager.process.describe(),
                f"--- exporter, log {self.exporter.log_path}:\n{exporter_log}",
                f"--- webhook received: {self.webhook.alerts()}",
            ]
        )


def _has_data(result: list[dict[str, Any]]) -> bool:
    """An instant query's result holds at least one number (NaN is no data)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def wait_until_every_query_has_data(
    stack: AlertingStack, queries: list[tuple[str, str]], what: str
) -> None:
    """Poll Prometheus until each (where, PromQL) query returns data (range functions and
    offsets need a few scrapes of history); on the deadline, name every empty one."""
    empty: list[str] = []

    def all_have_data() -> bool:
        empty[:] = [
            f"{where}: {query}"
            for where, query in queries
            if not _has_data(stack.prometheus.query(query))
        ]
        return not empty

    wait_until(
        all_have_data,
        timeout=60,
        what=what,
        diagnostics=lambda: "\n".join(["queries without data:", *empty, stack.diagnostics()]),
    )
