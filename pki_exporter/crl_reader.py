"""When to read each CRL: on its own interval, apart from the Graph refresh.

CRL hosts are not Graph: their reads draw nothing from the Graph budget and carry no
token. A CA's CRLs are known once a refresh of the CA (or a restored snapshot) named them;
each is read at once, then every ``crl.interval``. A read's outcome goes to the Store,
which keeps the last good values through a failure and computes the coverage again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait

from pki_exporter.config.model import Config, TenantConfig
from pki_exporter.crl.fetch import BACKOFF, Fetcher, crl_client
from pki_exporter.crl.model import CRLFailure
from pki_exporter.crl.read import CACertificates, read_crl
from pki_exporter.runtime import clock, logs
from pki_exporter.runtime.workers import Workers
from pki_exporter.state import Store

log = logs.get("crl")

CONCURRENCY = 4
"""CRLs read at once across all tenants."""

_Key = tuple[str, str, str]
"""(tenant, CA id, CRL URL)."""


class CRLReader:
    """Reads every CRL the Store's CAs name, each every ``crl.interval``."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        stop: threading.Event | None = None,
        backoff: float = BACKOFF,
        fetcher_factory: Callable[[TenantConfig], Fetcher] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._stop = stop or threading.Event()
        self._wake = threading.Event()
        self._pool = Workers(CONCURRENCY, "pki-crl")
        self._due: dict[_Key, float] = {}
        self._inflight: dict[_Key, Future[None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        factory = fetcher_factory or (
            lambda tenant: Fetcher(
                crl_client(tenant, config.crl), config.crl, stop=self._stop, backoff=backoff
            )
        )
        self._fetchers = {tenant.name: factory(tenant) for tenant in config.tenants}
        self._certificates = {name: CACertificates(f) for name, f in self._fetchers.items()}

    @property
    def enabled(self) -> bool:
        return self._config.crl.enabled

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._loop, name="pki-crl-schedule", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A CA was refreshed (its CRLs may have changed): look for CRLs due now."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._pool.shutdown()
        if self._thread is not None:
            self._thread.join(1.0)
        for fetcher in self._fetchers.values():
            fetcher.close()

    def _named(self) -> list[tuple[_Key, str | None, str | None]]:
        """Every CRL the Store names: key, the CA certificate, the issuer URI."""
        named = []
        for tenant in self._store.tenants.values():
            for ca in tenant.cas.values():
                snapshot = ca.snapshot
                if snapshot is None:
                    continue
                revocations = snapshot.revocations
                for url in ca.crls:
                    try:
                        issuer = revocations.issuer_uris[revocations.crl_urls.index(url)]
                    except (ValueError, IndexError):
                        issuer = None
                    key = (tenant.name, ca.ca_id, url)
                    named.append((key, snapshot.info.certificate_url, issuer))
        return named

    def read_all(self) -> None:
        """Read every named CRL now and wait for the reads (``--once``)."""
        if not self.enabled:
            return
        futures = [
            self._pool.submit(self._read, key, cert, issuer) for key, cert, issuer in self._named()
        ]
        wait(futures)

    def _loop(self) -> None:
        interval = self._config.crl.interval
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            named = self._named()
            next_due = now + interval
            with self._lock:
                live = {key for key, _, _ in named}
                for key in list(self._due):
                    if key not in live:
                        del self._due[key]
                for key, cert, issuer in named:
                    due = self._due.get(key, now)
                    if key in self._inflight:
                        continue
                    if due <= now:
                        self._due[key] = now + interval
                        try:
                            self._inflight[key] = self._pool.submit(self._read, key, cert, issuer)
                        except RuntimeError:
                            return  # shut down
                    else:
                        next_due = min(next_due, due)
            self._wake.wait(max(0.0, next_due - time.monotonic()))

    def _read(self, key: _Key, certificate: str | None, issuer: str | None) -> None:
        tenant, ca_id, url = key
        try:
            ca = self._store.tenants[tenant].cas.get(ca_id)
            state = ca.crls.get(url) if ca is not None else None
            validators = state.validators if state is not None and state.info else None
            at = clock.now()
            try:
                result = read_crl(
                    self._fetchers[tenant],
                    self._certificates[tenant],
                    url,
                    ca_certificate=certificate,
                    issuer_uri=issuer,
                    validators=validators,
                )
            except CRLFailure as exc:
                if self._stop.is_set():
                    return
                logs.event(
                    log,
                    logging.WARNING,
                    "CRL read failed; its last good values stay",
                    tenant=tenant,
                    ca_id=ca_id,
                    url=url,
                    reason=exc.reason,
                    error=str(exc),
                )
                self._store.record_crl(tenant, ca_id, url, at=at, failure=exc)
                return
            except Exception as exc:  # a bug of ours: data like any failure, never a dead loop
                if self._stop.is_set():
                    return  # stopping: the clients were closed under the read
                log.exception("unexpected error reading CRL %s", url)
                failure = CRLFailure("invalid", f"internal error: {type(exc).__name__}")
                self._store.record_crl(tenant, ca_id, url, at=at, failure=failure)
                return
            if self._stop.is_set():
                return
            self._store.record_crl(
                tenant, ca_id, url, at=at, info=result.info, validators=result.validators
            )
            logs.event(
                log,
                logging.DEBUG,
                "CRL read",
                tenant=tenant,
                ca_id=ca_id,
                url=url,
                changed=result.info is not None,
            )
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            self._wake.set()
