"""When to refresh, how many at once, swapping snapshots, failures as data.

Each tenant runs a cycle every ``refresh.interval`` (jittered by ±5% so that tenants
drift apart): get a token, discover the CAs (or take the configured list), then read
every CA through a pool shared by all tenants, at most ``refresh.concurrency`` at once.
A CA's data changes only when its read completed; a failure changes its status, its
failure counter and its last error, and nothing else.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from pki_exporter.aggregate.certificates import Fold
from pki_exporter.aggregate.revocations import EMPTY_REVOCATIONS
from pki_exporter.config.model import Config, TenantConfig
from pki_exporter.crl_reader import CRLReader
from pki_exporter.graph.budget import GraphBudget
from pki_exporter.graph.client import Cancelled, GraphClient, GraphError
from pki_exporter.graph.credentials import TokenProvider, token_provider
from pki_exporter.graph.records import ca_record
from pki_exporter.runtime import clock, logs
from pki_exporter.runtime.ids import is_guid
from pki_exporter.runtime.turns import Turns
from pki_exporter.runtime.workers import Workers
from pki_exporter.state import CASnapshot, Store
from pki_exporter.storage import SnapshotStorage

log = logs.get("refresher")

JITTER = 0.05


def refresh_deadline(config: Config) -> float:
    """The time one CA refresh (every page and retry of it) may take."""
    return max(config.refresh.interval, 5 * config.refresh.timeout)


@dataclass
class _Tenant:
    config: TenantConfig
    tokens: TokenProvider
    client: GraphClient
    budget: GraphBudget


class Refresher:
    """Keeps the Store fresh: a thread per tenant schedules cycles, a shared pool reads CAs."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        tokens_factory: Callable[[TenantConfig, float], TokenProvider] = token_provider,
        storage: SnapshotStorage | None = None,
        turns: Turns | None = None,
    ) -> None:
        """``turns``: the process's CPU turns, shared with the HTTP server (scrapes first)."""
        self._config = config
        self._store = store
        self._storage = storage
        self._stop = threading.Event()
        self._deadline = refresh_deadline(config)
        self._pool = Workers(config.refresh.concurrency, "pki-ca")
        self._discovery = threading.Semaphore(config.refresh.concurrency)
        self._threads: list[threading.Thread] = []
        #: the threads of `refresh_all` (``--once``, refresh on scrape) still running
        self._cycles: set[threading.Thread] = set()
        self._cycles_lock = threading.Lock()
        self._flight_lock = threading.Lock()
        self._inflight: Future[None] | None = None
        self._flight_pool = Workers(1, "pki-scrape")
        self._tenants: list[_Tenant] = []
        #: the CRLs the CAs name, read on their own schedule (spec, "Revocation (CRL)")
        self.crls = CRLReader(config, store, stop=self._stop)
        for tenant in config.tenants:
            tokens = tokens_factory(tenant, config.refresh.timeout)
            # One budget per tenant, shared by all its CA workers (and CA discovery).
            budget = GraphBudget(
                tenant.graph_budget.requests_per_20s,
                tenant.graph_budget.writes_per_20s,
                on_wait=functools.partial(store.count_budget_wait, tenant.name),
            )
            client = GraphClient(
                tenant.graph_url,
                tokens,
                timeout=config.refresh.timeout,
                ca_bundle=tenant.ca_bundle,
                on_response=functools.partial(store.count_request, tenant.name),
                stop=self._stop,
                budget=budget,
                leaf_source=tenant.leaf_source,
                turns=turns,
            )
            self._tenants.append(_Tenant(tenant, tokens, client, budget))

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background cycles; the first one of each tenant starts at once."""
        self.crls.start()
        if self.on_scrape:
            # interval 0: one refresh now; later ones come from scrapes, sharing this flight.
            with self._flight_lock:
                self._inflight = self._flight_pool.submit(self.refresh_all)
            return
        for tenant in self._tenants:
            thread = threading.Thread(
                target=self._loop,
                args=(tenant,),
                name=f"pki-tenant-{tenant.config.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 1.0) -> int:
        """Stop every thread of this refresher; wait for them at most ``timeout`` seconds.

        Retry and budget waits end at once, CAs not started are cancelled. A request in
        flight (up to refresh.timeout) is abandoned: its thread is a daemon that records
        nothing once stopped, and its HTTP clients are closed. Returns how many threads were
        left behind that way (logged), 0 when all have finished.
        """
        self._stop.set()
        self.crls.stop()
        for tenant in self._tenants:
            tenant.budget.cancel()
        self._pool.shutdown()
        self._flight_pool.shutdown()
        end = time.monotonic() + timeout
        with self._cycles_lock:
            threads = [*self._threads, *self._cycles]
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        busy = [t for t in threads if t.is_alive()]
        busy += self._pool.join(end) + self._flight_pool.join(end)
        for tenant in self._tenants:
            tenant.client.close()
            tenant.tokens.close()
        if busy:
            logs.event(log, logging.INFO, "abandoning Graph requests in flight", threads=len(busy))
        return len(busy)

    @property
    def on_scrape(self) -> bool:
        return self._config.refresh.interval == 0

    def _loop(self, tenant: _Tenant) -> None:
        interval = self._config.refresh.interval
        while not self._stop.is_set():
            started = time.monotonic()
            self._cycle(tenant)
            due = started + interval * (1 + random.uniform(-JITTER, JITTER))
            late = time.monotonic() - due
            if late > 0:
                logs.event(
                    log,
                    logging.WARNING,
                    "refresh cycle took longer than refresh.interval",
                    tenant=tenant.config.name,
                    late_seconds=round(late, 3),
                )
            self._stop.wait(max(0.0, due - time.monotonic()))

    def refresh_all(self) -> None:
        """One cycle of every tenant, in parallel; returns when all are done (``--once``, scrapes)."""
        threads = [
            threading.Thread(
                target=self._cycle, args=(t,), name=f"pki-cycle-{t.config.name}", daemon=True
            )
            for t in self._tenants
        ]
        for thread in threads:
            thread.start()
        with self._cycles_lock:  # started first: stop() joins them
            self._cycles.update(threads)
        for thread in threads:
            thread.join()
        with self._cycles_lock:
            self._cycles.difference_update(threads)

    def refresh_on_scrape(self) -> None:
        """``interval: 0``: a scrape triggers one refresh; concurrent scrapes share it."""
        with self._flight_lock:
            flight = self._inflight
            if flight is None or flight.done():
                flight = self._inflight = self._flight_pool.submit(self.refresh_all)
        flight.result()

    # -- one cycle -----------------------------------------------------------------------

    def _cycle(self, tenant: _Tenant) -> None:
        name = tenant.config.name
        try:
            cas = self._discover(tenant)
            if cas is None:
                return
            futures = [
                self._pool.submit(self._refresh_ca, tenant, ca_id, obj)
                for ca_id, obj in cas.items()
            ]
            # Wait for the CAs, but not past a stop: a request in flight may have up to
            # refresh.timeout to go, and it is abandoned (a stopped refresher records nothing).
            pending = set(futures)
            while pending and not self._stop.is_set():
                pending = wait(pending, timeout=0.25).not_done
        except RuntimeError:  # the pool was shut down: we are stopping
            return
        finally:
            self._store.finish_cycle(name)

    def _discover(self, tenant: _Tenant) -> dict[str, Mapping[str, Any] | None] | None:
        """Token and CA list; returns CA id -> CA object (None when it must be fetched)."""
        config = tenant.config
        name = config.name
        configured = config.certification_authorities
        with self._discovery:
            if self._stop.is_set():
                return None
            try:
                tenant.client.token(time.monotonic() + self._deadline)
            except Cancelled:
                return None
            except GraphError as exc:
                self._tenant_down(tenant, exc.reason, str(exc))
                return None
            if configured != "all":
                known = self._store.tenants[name].cas
                self._store.set_cas(
                    name,
                    {
                        ref.id: ref.name or (known[ref.id].label if ref.id in known else ref.id)
                        for ref in configured
                    },
                )
                self._store.set_tenant(name, up=True, error=None)
                return dict.fromkeys((ref.id for ref in configured), None)
            try:
                listed = tenant.client.list_cas(time.monotonic() + self._deadline)
            except Cancelled:
                return None
            except GraphError as exc:
                # Keep reading the CAs we know: their own calls may still work.
                self._tenant_down(tenant, exc.reason, f"CA discovery: {exc}", fail_cas=False)
                return dict.fromkeys(self._store.tenants[name].cas, None)
        cas: dict[str, Mapping[str, Any] | None] = {}
        for obj in listed:
            ca_id = obj.get("id")
            if not isinstance(ca_id, str) or not is_guid(ca_id):
                logs.event(
                    log,
                    logging.WARNING,
                    "CA with an invalid id ignored",
                    tenant=name,
                    id=str(ca_id)[:64],
                )
                continue
            cas[ca_id.lower()] = obj
        known = self._store.tenants[name].cas
        self._store.set_cas(
            name, {ca_id: ca_record(obj).display_name or ca_id for ca_id, obj in cas.items() if obj}
        )
        gone = set(known) - set(cas)
        if gone:
            logs.event(
                log,
                logging.INFO,
                "CAs no longer listed are no longer exported",
                tenant=name,
                ca_ids=",".join(sorted(gone)),
            )
        if self._storage is not None:
            self._storage.forget_unlisted(config, cas)
        self._store.set_tenant(name, up=True, error=None)
        return cas

    def _tenant_down(
        self, tenant: _Tenant, reason: str, error: str, *, fail_cas: bool = True
    ) -> None:
        name = tenant.config.name
        logs.event(
            log, logging.WARNING, "tenant refresh failed", tenant=name, reason=reason, error=error
        )
        self._store.set_tenant(name, up=False, error=error)
        configured = tenant.config.certification_authorities
        if configured != "all" and not self._store.tenants[name].cas:
            self._store.set_cas(name, {ref.id: ref.name or ref.id for ref in configured})
        if fail_cas:
            now = clock.now()
            for ca_id in self._store.tenants[name].cas:
                self._store.record_failure(name, ca_id, reason, error, now, 0.0)

    def _refresh_ca(self, tenant: _Tenant, ca_id: str, obj: Mapping[str, Any] | None) -> None:
        name = tenant.config.name
        started = clock.now()
        t0 = time.monotonic()
        deadline = t0 + self._deadline
        try:
            if obj is None:
                obj = tenant.client.get_ca(ca_id, deadline)
            info = ca_record(obj)
            known = self._store.tenants[name].cas.get(ca_id)
            last = known.snapshot if known is not None else None
            fold = Fold(
                started,
                self._config.expiry_windows_days,
                expected_devices=sum(last.devices.devices.values()) if last else 0,
                revocations=self._config.crl.enabled,
                ca_crl_url=info.crl_url,
            )
            pages = tenant.client.fold_leaves(ca_id, fold, deadline)
        except Cancelled:
            return
        except GraphError as exc:
            if self._stop.is_set():
                return  # stopping (shutdown, reload): the store belongs to what comes next
            duration = time.monotonic() - t0
            logs.event(
                log,
                logging.WARNING,
                "CA refresh failed",
                tenant=name,
                ca_id=ca_id,
                reason=exc.reason,
                error=str(exc),
            )
            self._store.record_failure(name, ca_id, exc.reason, str(exc), started, duration)
            return
        except (
            Exception
        ) as exc:  # a bug of ours must not kill the loop; it is data like any failure
            if self._stop.is_set():
                return
            duration = time.monotonic() - t0
            log.exception("unexpected error refreshing CA %s of %s", ca_id, name)
            self._store.record_failure(
                name,
                ca_id,
                "invalid_response",
                f"internal error: {type(exc).__name__}",
                started,
                duration,
            )
            return
        if self._stop.is_set():
            return
        aggregate = fold.result()
        duration = time.monotonic() - t0
        label = self._label(tenant.config, ca_id, info.display_name)
        self._store.record_success(
            name,
            ca_id,
            label,
            CASnapshot(
                info,
                aggregate,
                started,
                fold.devices.result(),
                fold.revocations.result() if fold.revocations is not None else EMPTY_REVOCATIONS,
            ),
            duration,
        )
        self.crls.wake()  # the CRLs it names are read at once the first time
        if self._storage is not None:  # --storage.path: the snapshot just served, to disk
            self._storage.save(tenant.config, self._store, ca_id, self._config.expiry_windows_days)
        logs.event(
            log,
            logging.DEBUG,
            "CA refreshed",
            tenant=name,
            ca_id=ca_id,
            certificates=aggregate.total,
            invalid=aggregate.invalid,
            pages=pages,
            seconds=round(duration, 3),
        )

    @staticmethod
    def _label(config: TenantConfig, ca_id: str, display_name: str | None) -> str:
        if config.certification_authorities != "all":
            for ref in config.certification_authorities:
                if ref.id == ca_id and ref.name:
                    return ref.name
        return display_name or ca_id
