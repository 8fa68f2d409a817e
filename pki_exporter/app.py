"""A running exporter, built and run: config -> store -> refresher -> collector -> server.

The command line (`cli`) parses and checks the flags and hands them here as `ServeOptions`;
everything from reading the config to the last thread stopped happens in this module:
`read_config` (the one place a config file is read and checked, for a start and for a
reload), `once` (``--once``), `serve` (the HTTP server and the signal loop), and
`Exporter`, which owns the refresher and the store and swaps the refresher on a reload.
A user's mistake found here (a config with problems, a port in use, an unreadable web
config) is a `UserError`: one line, exit code 1.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pki_exporter import __version__
from pki_exporter.config.check import check_config_file
from pki_exporter.config.model import Config
from pki_exporter.metrics.collector import PREFIX, ExporterCollector
from pki_exporter.refresher import Refresher
from pki_exporter.runtime import clock, logs
from pki_exporter.runtime.sharding import Shard
from pki_exporter.runtime.turns import Turns
from pki_exporter.state import Store
from pki_exporter.storage import SnapshotStorage, write_atomically
from pki_exporter.web.drilldown import DEFAULT_MODE as DEFAULT_DRILLDOWN
from pki_exporter.web.drilldown import certificates_page
from pki_exporter.web.pages import status_page
from pki_exporter.web.server import Endpoints, ExporterServer
from pki_exporter.web.server import serve as serve_in_background
from pki_exporter.web.toolkit import WebConfigError, WebConfigProvider

log = logs.get("app")


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit code 1."""


# -- the config file ----------------------------------------------------------------------


def read_config(path: str) -> tuple[Config | None, list[str]]:
    """Every problem of the config file at ``path``, in one call: the file's own (format,
    keys, values) and what it names outside itself (secret variables, credential files).
    Returns the config (None when the file is unusable) and one line per problem.

    The one place the exporter reads a config file, so that ``--config.check``, a start
    and a reload agree (the config package's one-pass check, whatever it is called)."""
    return check_config_file(path)


def unreadable_hint(path: str, problem: str) -> str:
    """With no config file at all, say how to get one, or to try the demo."""
    if problem.startswith("cannot read: No such file") and not os.path.exists(path):
        return f"{problem} (write one from config.example.yaml, or try --demo)"
    return problem


def summary(path: str, problems: list[str]) -> str:
    """The first problem, and how many more there are and where to see them all."""
    first = unreadable_hint(path, problems[0]) if problems else "unusable"
    more = len(problems) - 1
    if more < 1:
        return first
    return (
        f"{first} (and {more} more problem{'s' if more > 1 else ''}: run pki-exporter "
        f"--config.check --config.file {shlex.quote(path)} to list {'them' if more > 1 else 'it'})"
    )


def load_config_file(path: str) -> Config:
    """The config a start runs with; any problem of the file stops the start in one line
    (`UserError`), as a missing secret variable or file does."""
    config, problems = read_config(path)
    if config is None or problems:
        raise UserError(f"{path}: {summary(path, problems)}")
    return config


class _ReloadCollector(Collector):
    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily(
            PREFIX + "config_last_reload_successful",
            "1 if the last config (re)load succeeded, else 0.",
        )
        ok.add_metric([], 1.0 if self._exporter.last_reload_ok else 0.0)
        when = GaugeMetricFamily(
            PREFIX + "config_last_reload_success_timestamp_seconds",
            "When the config now in use was loaded.",
        )
        when.add_metric([], self._exporter.last_reload_success_at)
        yield ok
        yield when


class WebInfoCollector(Collector):
    """Where the exporter's pages are reachable (``--web.external-url``): alert annotations
    and dashboard links read it to point at ``/certificates`` of the right instance."""

    def __init__(self, external_url: str) -> None:
        self._external_url = external_url

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            PREFIX + "exporter_web_info",
            "The URL under which this exporter is reachable (--web.external-url), value 1.",
            labels=["external_url"],
        )
        info.add_metric([self._external_url], 1.0)
        yield info


def _crl_grace(config: Config) -> float | None:
    """The Store's CRL setting: the publication grace, None when CRLs are not read."""
    return config.crl.publication_grace if config.crl.enabled else None


class Exporter:
    """Owns the refresher and the store; swaps the refresher when the config is reloaded."""

    def __init__(
        self,
        config: Config,
        *,
        config_file: str | None = None,
        process_metrics: bool = True,
        select: Callable[[Config], Config] | None = None,
        storage_path: str | None = None,
    ) -> None:
        """``config_file``: the file a reload reads again (None: the config was built in,
        as the demo's, and a reload says there is nothing to reload)."""
        self.config_file = config_file
        #: narrows every loaded config (``--tenant-shard``: this replica's tenants only)
        self._select: Callable[[Config], Config] = select or (lambda loaded: loaded)
        configured = [t.name for t in config.tenants]
        config = self._select(config)
        self.config = config
        self.store = Store([t.name for t in config.tenants], crl_grace=_crl_grace(config))
        #: ``--storage.path``: snapshots restored now, before the first refresh, and
        #: written after each successful one
        self.storage = SnapshotStorage(storage_path) if storage_path else None
        if self.storage is not None:
            self.storage.restore(config, configured, self.store)
        #: CPU turns of this process: the refresher's Graph clients give way to scrapes
        #: (the HTTP server takes ``turns.scrape()``); kept across reloads
        self.turns = Turns()
        self.refresher = Refresher(config, self.store, storage=self.storage, turns=self.turns)
        self.last_reload_ok = True
        self.last_reload_success_at = clock.now()
        self._reload_lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        storage = self.storage
        write_failures = None if storage is None else (lambda: storage.write_failures)
        self.registry.register(ExporterCollector(self.store, write_failures))
        self.registry.register(_ReloadCollector(self))
        if process_metrics:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)

    def before_scrape(self) -> None:
        """``refresh.interval: 0``: a scrape waits for a refresh (shared by concurrent
        scrapes). Runs before the scrape holds back refresh turns: it would wait for itself."""
        refresher = self.refresher
        if refresher.on_scrape:
            refresher.refresh_on_scrape()

    def start(self) -> None:
        self.refresher.start()

    def stop(self) -> None:
        self.refresher.stop()

    def ready(self) -> bool:
        return self.store.ready()

    def reload(self) -> str | None:
        """Load the config file again; on error keep the running config and return the error."""
        with self._reload_lock:
            if self.config_file is None:
                error = "no config file to reload (the demo's config is built in)"
                logs.event(log, logging.WARNING, "config not reloaded", reason=error)
                return error
            loaded, problems = read_config(self.config_file)
            if loaded is None or problems:
                error = summary(self.config_file, problems)
                self.last_reload_ok = False
                logs.event(
                    log,
                    logging.ERROR,
                    "config reload failed; keeping the running config",
                    error=error,
                )
                return error
            config = self._select(loaded)
            for warning in config.warnings:
                logs.event(log, logging.WARNING, warning)
            old = self.refresher
            old.stop()
            self.store.reconfigure([t.name for t in config.tenants])
            self.store.crl_grace = _crl_grace(config)
            self.config = config
            if self.storage is not None:
                self.storage.sweep(config, [t.name for t in loaded.tenants])
            self.refresher = Refresher(config, self.store, storage=self.storage, turns=self.turns)
            self.refresher.start()
            # The time first: a scrape between the two never sees success with the old time.
            self.last_reload_success_at = clock.now()
            self.last_reload_ok = True
            logs.event(log, logging.INFO, "config reloaded", tenants=len(config.tenants))
            return None


# -- running it ---------------------------------------------------------------------------


class Demo(Protocol):
    """The simulated tenant of ``--demo``, started by the command line (the only module
    that may import the simulator); closed here, with its temporary files, when the run
    ends however it ends."""

    @property
    def url(self) -> str: ...

    def close(self) -> None: ...


def once(
    config: Config,
    output: str | None,
    shard: Shard | None = None,
    demo: Demo | None = None,
) -> int:
    """``--once``: refresh every CA, print the metrics (or write them to ``output``), exit
    non-zero if any CA or tenant failed."""
    try:
        return _once(config, output, shard)
    finally:
        if demo is not None:
            demo.close()


def _once(config: Config, output: str | None, shard: Shard | None) -> int:
    exporter = Exporter(config, process_metrics=False, select=shard.select if shard else None)
    exporter.refresher.refresh_all()
    exporter.refresher.crls.read_all()  # the CRLs the leaves just named (crl.enabled)
    exporter.refresher.stop()
    data = generate_latest(exporter.registry)
    if output:
        target = Path(output)
        try:
            write_atomically(target.parent, target.name, data, mode=0o644)
        except OSError as exc:
            raise UserError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    failed = [
        f"{tenant.name}/{ca.label}"
        for tenant in exporter.store.tenants.values()
        for ca in tenant.cas.values()
        if not ca.last_success
    ]
    down = [tenant.name for tenant in exporter.store.tenants.values() if not tenant.up]
    if failed or down:
        fields = {"cas": ",".join(failed), "tenants_down": ",".join(down)}
        logs.event(log, logging.ERROR, "refresh failed", **{k: v for k, v in fields.items() if v})
        return 1
    return 0


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """The flags that shape a serving exporter, already checked by the command line."""

    host: str
    port: int
    listen: str
    """``--web.listen-address`` as resolved (for messages)."""
    web_config_file: str | None = None
    telemetry_path: str = "/metrics"
    external_url: str | None = None
    """``--web.external-url``, checked and ending in "/"; None: derived from the host name."""
    drilldown: str = DEFAULT_DRILLDOWN
    enable_lifecycle: bool = False
    storage_path: str | None = None
    shard: Shard | None = None


SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005),
in the serving process (docs/performance.md, "Scrapes before refresh work")."""


def serve(
    config: Config,
    options: ServeOptions,
    *,
    config_file: str | None,
    demo: Demo | None = None,
    demo_faults: list[str] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (SIGHUP reloads ``config_file``); returns the exit code.
    The demo's simulated tenant is closed on the way out, whatever the way; its deliberate
    faults (``demo_faults``) are told on the status page and in the start-up lines."""
    try:
        _serve(config, options, config_file, demo, demo_faults)
    finally:
        if demo is not None:
            demo.close()
    _exit_if_threads_remain()
    return 0


def url_host(host: str) -> str:
    """A host as it stands in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def default_external_url(scheme: str, port: int) -> str:
    """As Prometheus derives its own: this host's name and the port served on."""
    return f"{scheme}://{socket.gethostname()}:{port}/"


def _protects_personal_data(web: WebConfigProvider) -> bool:
    """TLS, and a password or a verified client certificate (the warning at start)."""
    config = web.config
    if config.tls is None:
        return False
    return bool(config.basic_auth_users) or config.tls.client_auth_type in (
        "RequireAndVerifyClientCert",
        "RequireAnyClientCert",
    )


def _endpoints(
    exporter: Exporter, options: ServeOptions, prefix: str, demo_faults: list[str] | None
) -> Endpoints:
    """The server's view of the exporter: metrics, pages, readiness, reload."""
    telemetry_path = options.telemetry_path

    def certificates(query: str, accept: str) -> tuple[int, bytes, str]:
        answer = certificates_page(
            exporter.store,
            query,
            exporter.config.expiry_windows_days,
            prefix=prefix,
            telemetry_path=telemetry_path,
            mode=options.drilldown,
            accept=accept,
        )
        return answer.status, answer.body, answer.content_type

    return Endpoints(
        registry=exporter.registry,
        ready=exporter.ready,
        status_page=lambda: status_page(
            exporter.store,
            telemetry_path,
            exporter.config.refresh.interval,
            prefix=prefix,
            windows=exporter.config.expiry_windows_days,
            drilldown=options.drilldown != "off",
            demo=demo_faults,
        ),
        telemetry_path=telemetry_path,
        reload=exporter.reload if options.enable_lifecycle else None,
        certificates=certificates,
        turns=exporter.turns,
        before_scrape=exporter.before_scrape,
    )


def _serve(
    config: Config,
    options: ServeOptions,
    config_file: str | None,
    demo: Demo | None,
    demo_faults: list[str] | None,
) -> None:
    host, port, listen = options.host, options.port, options.listen
    try:
        web = WebConfigProvider(options.web_config_file)
    except WebConfigError as exc:
        raise UserError(f"--web.config.file: {exc}") from None
    shard = options.shard
    exporter = Exporter(
        config,
        config_file=config_file,
        select=shard.select if shard else None,
        storage_path=options.storage_path,
    )
    prefix = urlsplit(options.external_url).path if options.external_url else "/"
    try:
        server = ExporterServer(
            (host, port), _endpoints(exporter, options, prefix, demo_faults), web
        )
    except socket.gaierror:
        raise UserError(
            f"--web.listen-address: cannot listen on {listen}: unknown host {host!r} "
            "(give an IP address or a resolvable name)"
        ) from None
    except OSError as exc:
        raise UserError(
            f"--web.listen-address: cannot listen on {listen}: {exc.strerror or exc}"
        ) from None
    for warning in exporter.config.warnings:
        logs.event(log, logging.WARNING, warning)
    if options.drilldown == "full" and not _protects_personal_data(web):
        logs.event(
            log,
            logging.WARNING,
            "/certificates serves personal data (user principal names, device names) without "
            "TLS and basic auth or client certificates; set them in --web.config.file, or "
            "--web.drilldown=devices",
        )
    # SimpleQueue: its put() may run inside its own get() (a signal handler, below) without
    # deadlocking; queue.Queue.put would wait for the lock its interrupted get() holds.
    requests: queue.SimpleQueue[str] = queue.SimpleQueue()

    def on_signal(signum: int, _frame: Any) -> None:
        requests.put("reload" if signum == signal.SIGHUP else "stop")

    # Before anything runs: a signal from now on is queued, never the default action.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    exporter.start()
    # The whole process, once: a scrape takes the GIL back a dozen times (socket, /proc,
    # gzip), and while a refresh decodes pages each of those waits up to this long.
    sys.setswitchinterval(SWITCH_INTERVAL)
    serve_in_background(server)
    scheme = "https" if web.tls_enabled else "http"
    bound = server.server_address[1]
    shown_host = host or "0.0.0.0"  # noqa: S104 - what the user asked for
    external_url = options.external_url or default_external_url(scheme, bound)
    exporter.registry.register(WebInfoCollector(external_url))
    logs.event(
        log,
        logging.INFO,
        "pki-exporter started",
        version=__version__,
        listen=f"{scheme}://{url_host(shown_host)}:{bound}",
        external_url=external_url,
        tenants=len(exporter.config.tenants),
        config=config_file or config.source,
        **(
            {"tenant_shard": str(shard), "tenants_configured": len(config.tenants)} if shard else {}
        ),
    )
    if demo is not None:
        local = "127.0.0.1" if host in ("", "0.0.0.0", "127.0.0.1") else host  # noqa: S104
        where = f"{scheme}://{url_host(local)}:{bound}"
        print(
            f"pki-exporter demo: simulated tenant at {demo.url}\n"
            f"  metrics:     {where}{options.telemetry_path}\n"
            f"  status page: {where}/\n"
            "  This is generated sample data (no Azure account); its faults are deliberate:\n"
            + "".join(f"    - {fault}\n" for fault in demo_faults or ())
            + "  stop with Ctrl-C",
            flush=True,
        )
    while True:
        try:
            # Woken each second: a signal may reach another thread, and Python runs its
            # handler only when the main thread is back in its own code.
            request = requests.get(timeout=1.0)
        except queue.Empty:
            continue
        if request == "stop":
            break
        exporter.reload()
    logs.event(log, logging.INFO, "stopping")
    server.shutdown()
    server.server_close()
    exporter.stop()


def _exit_if_threads_remain() -> None:
    """The last resort: leave at once if a thread that is not ours to abandon still runs.

    The refresher stops its own threads (and leaves only daemon threads blocked on Graph
    behind); the interpreter would wait for any other non-daemon thread for ever. None is
    expected: this says so in the log and exits rather than hang a stopping process.
    """
    main = threading.main_thread()
    left = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    for thread in left:
        thread.join(1.0)
    left = [t for t in left if t.is_alive()]
    if left:
        logs.event(
            log,
            logging.ERROR,
            "threads that cannot be stopped; exiting without waiting for them",
            threads=",".join(sorted(t.name for t in left)),
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
