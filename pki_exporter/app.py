"""A running exporter: config -> store -> refresher -> collector, and config reloads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pki_exporter.config.check import check_config
from pki_exporter.config.load import ConfigError, load_config
from pki_exporter.config.model import Config
from pki_exporter.metrics.collector import PREFIX, ExporterCollector, StorageCollector
from pki_exporter.refresher import Refresher
from pki_exporter.runtime import clock, logs
from pki_exporter.runtime.turns import Turns
from pki_exporter.state import Store
from pki_exporter.storage import SnapshotStorage

log = logs.get("app")


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
        process_metrics: bool = True,
        select: Callable[[Config], Config] | None = None,
        storage_path: str | None = None,
    ) -> None:
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
        self.registry.register(ExporterCollector(self.store))
        self.registry.register(_ReloadCollector(self))
        if self.storage is not None:
            storage = self.storage
            self.registry.register(StorageCollector(self.store, lambda: storage.write_failures))
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
            try:
                loaded = load_config(self.config.source)
                config = self._select(loaded)
                problems = check_config(config)  # a missing secret fails a reload too
                if problems:
                    raise ConfigError("", problems[0])
            except ConfigError as exc:
                self.last_reload_ok = False
                logs.event(
                    log,
                    logging.ERROR,
                    "config reload failed; keeping the running config",
                    error=str(exc),
                )
                return str(exc)
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
            self.last_reload_ok = True
            self.last_reload_success_at = clock.now()
            logs.event(log, logging.INFO, "config reloaded", tenants=len(config.tenants))
            return None
