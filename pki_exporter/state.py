"""Immutable snapshots of what the exporter knows, and the counters beside them.

The refresher builds new frozen objects and swaps them in under a lock; the collector
reads one reference and never sees half an update. A CA's data is replaced only by a
complete, successful refresh: failures change the attempt fields, never the snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pki_exporter.aggregate.certificates import LeafAggregate
from pki_exporter.aggregate.devices import EMPTY_DEVICES, DeviceAggregate
from pki_exporter.aggregate.revocations import EMPTY_REVOCATIONS, RevocationAggregate
from pki_exporter.crl import model as crl_model
from pki_exporter.crl.coverage import NO_COVERAGE, Coverage, coverage
from pki_exporter.graph.records import CARecord
from pki_exporter.runtime import clock

REASONS = ("auth", "throttled", "http_4xx", "http_5xx", "timeout", "network", "invalid_response")
"""The fixed set of ``reason`` label values of refresh failures."""


@dataclass(frozen=True, slots=True)
class CASnapshot:
    """The last complete, successful read of one CA."""

    info: CARecord
    leaves: LeafAggregate
    read_at: float
    """Wall-clock time at which the refresh that produced it started."""
    devices: DeviceAggregate = EMPTY_DEVICES
    """Per-device renewal figures and the drill-down rows, as of ``read_at``."""
    revocations: RevocationAggregate = EMPTY_REVOCATIONS
    """The CRLs the CA's certificates name and its revoked, unexpired certificates."""


@dataclass(frozen=True, slots=True)
class CRLState:
    """One CRL of a CA: its last good read and how the last attempts went."""

    url: str
    info: crl_model.CRLInfo | None = None
    """The last good read (kept through failed reads and 304s)."""
    validators: crl_model.Validators | None = None
    attempted: bool = False
    success: bool = False
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    failures: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(crl_model.REASONS, 0))


@dataclass(frozen=True, slots=True)
class CAState:
    ca_id: str
    label: str
    """The `ca` label: configured name, else Graph's displayName, else the id."""
    snapshot: CASnapshot | None = None
    attempted: bool = False
    last_success: bool = False
    last_attempt_at: float | None = None
    last_duration: float | None = None
    last_error: str | None = None
    failures: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    restored: bool = False
    """The snapshot served was read from ``--storage.path`` at start-up, not yet replaced
    by a refresh of this process."""
    crls: Mapping[str, CRLState] = field(default_factory=dict)
    """URL -> state, for the CRLs the snapshot names (empty with ``crl.enabled: false``)."""
    coverage: Coverage = NO_COVERAGE
    """Revocations missing from their CRL, recomputed whenever the leaves or a CRL change."""


def _crls_for(
    snapshot: CASnapshot, known: Mapping[str, CRLState], grace: float | None
) -> tuple[Mapping[str, CRLState], Coverage]:
    """The CRL states a snapshot names (known ones kept) and the coverage they give."""
    if grace is None:
        return {}, NO_COVERAGE
    crls = {url: known.get(url) or CRLState(url) for url in snapshot.revocations.crl_urls}
    return crls, _coverage(snapshot, crls, grace)


def _coverage(snapshot: CASnapshot, crls: Mapping[str, CRLState], grace: float) -> Coverage:
    infos = {url: state.info for url, state in crls.items()}
    if not any(infos.values()):
        return NO_COVERAGE
    return coverage(snapshot.revocations, infos, clock.now(), grace)


@dataclass(frozen=True, slots=True)
class TenantState:
    name: str
    up: bool = False
    attempted: bool = False
    """True once the tenant's first cycle (token, discovery, every CA) has finished."""
    last_error: str | None = None
    cas: Mapping[str, CAState] = field(default_factory=dict)
    graph_requests: Mapping[str, int] = field(default_factory=dict)
    budget_wait_seconds: float = 0.0
    """Time the tenant's Graph requests spent waiting for its graph_budget."""
    restored: bool = False
    """Snapshots restored at start-up cover the tenant's CAs: it counts as refreshed for
    ``/ready`` before its first cycle ends."""


class Store:
    """The current state of every tenant; updated copy-on-write, read without locks."""

    def __init__(self, tenant_names: list[str], crl_grace: float | None = None) -> None:
        """``crl_grace``: ``crl.publication_grace`` when CRLs are read, None when not."""
        self.crl_grace = crl_grace
        self._lock = threading.Lock()
        self._tenants: Mapping[str, TenantState] = {
            name: TenantState(name) for name in tenant_names
        }

    @property
    def tenants(self) -> Mapping[str, TenantState]:
        return self._tenants

    def ready(self) -> bool:
        return all(t.attempted or t.restored for t in self._tenants.values())

    def _swap(self, name: str, tenant: TenantState) -> None:
        tenants = dict(self._tenants)
        tenants[name] = tenant
        self._tenants = tenants

    def set_tenant(self, name: str, *, up: bool, error: str | None) -> None:
        with self._lock:
            tenant = self._tenants[name]
            self._swap(name, replace(tenant, up=up, last_error=error))

    def finish_cycle(self, name: str) -> None:
        with self._lock:
            self._swap(name, replace(self._tenants[name], attempted=True))

    def set_cas(self, name: str, labels: Mapping[str, str]) -> None:
        """Make the tenant's CA list exactly ``labels`` (id -> label): new CAs appear, gone ones vanish.

        A CA whose label is unchanged keeps its state object, and a list that is the same
        keeps the tenant's mapping: readers (the collector's caches) tell a change by
        identity, and every cycle's CA discovery calls this."""
        with self._lock:
            tenant = self._tenants[name]
            old = tenant.cas
            cas: dict[str, CAState] = {}
            for ca_id, label in labels.items():
                known = old.get(ca_id)
                if known is None:
                    cas[ca_id] = CAState(ca_id, label)
                elif known.label != label:
                    cas[ca_id] = replace(known, label=label)
                else:
                    cas[ca_id] = known
            if list(cas) == list(old) and all(cas[k] is old[k] for k in cas):
                return
            self._swap(name, replace(tenant, cas=cas))

    def record_success(
        self, name: str, ca_id: str, label: str, snapshot: CASnapshot, duration: float
    ) -> None:
        with self._lock:
            tenant = self._tenants[name]
            if ca_id not in tenant.cas:
                return  # removed while it was being read
            crls, covered = _crls_for(snapshot, tenant.cas[ca_id].crls, self.crl_grace)
            ca = replace(
                tenant.cas[ca_id],
                crls=crls,
                coverage=covered,
                label=label,
                snapshot=snapshot,
                attempted=True,
                last_success=True,
                last_attempt_at=snapshot.read_at,
                last_duration=duration,
                last_error=None,
                restored=False,
            )
            self._swap(name, replace(tenant, cas={**tenant.cas, ca_id: ca}))

    def restore(
        self, name: str, ca_id: str, label: str, snapshot: CASnapshot, duration: float | None
    ) -> None:
        """Serve a snapshot read from disk at start-up, as the last successful refresh."""
        with self._lock:
            tenant = self._tenants[name]
            known = tenant.cas.get(ca_id)
            crls, covered = _crls_for(snapshot, known.crls if known else {}, self.crl_grace)
            ca = CAState(
                ca_id,
                label,
                crls=crls,
                coverage=covered,
                snapshot=snapshot,
                attempted=True,
                last_success=True,
                last_attempt_at=snapshot.read_at,
                last_duration=duration,
                restored=True,
            )
            self._swap(name, replace(tenant, cas={**tenant.cas, ca_id: ca}))

    def mark_restored(self, name: str) -> None:
        with self._lock:
            self._swap(name, replace(self._tenants[name], restored=True))

    def record_failure(
        self, name: str, ca_id: str, reason: str, error: str, started: float, duration: float
    ) -> None:
        with self._lock:
            tenant = self._tenants[name]
            if ca_id not in tenant.cas:
                return
            old = tenant.cas[ca_id]
            failures = dict(old.failures)
            failures[reason] = failures.get(reason, 0) + 1
            ca = replace(
                old,
                attempted=True,
                last_success=False,
                last_attempt_at=started,
                last_duration=duration,
                last_error=error,
                failures=failures,
            )
            self._swap(name, replace(tenant, cas={**tenant.cas, ca_id: ca}))

    def record_crl(
        self,
        name: str,
        ca_id: str,
        url: str,
        *,
        at: float,
        info: crl_model.CRLInfo | None = None,
        validators: crl_model.Validators | None = None,
        failure: crl_model.CRLFailure | None = None,
    ) -> None:
        """The outcome of one read of a CA's CRL: a new CRL (``info``), an unchanged one
        (neither ``info`` nor ``failure``: a 304), or a failure, which keeps the last good
        values. The coverage of the CA is computed again either way."""
        with self._lock:
            tenant = self._tenants.get(name)
            ca = tenant.cas.get(ca_id) if tenant is not None else None
            if tenant is None or ca is None or url not in ca.crls or ca.snapshot is None:
                return  # no longer named
            old = ca.crls[url]
            if failure is not None:
                failures = dict(old.failures)
                failures[failure.reason] = failures.get(failure.reason, 0) + 1
                new = replace(
                    old,
                    attempted=True,
                    success=False,
                    last_attempt_at=at,
                    last_error=f"{failure.reason}: {failure}",
                    failures=failures,
                )
            else:
                new = replace(
                    old,
                    info=info or old.info,
                    validators=validators or old.validators,
                    attempted=True,
                    success=True,
                    last_attempt_at=at,
                    last_success_at=at,
                    last_error=None,
                )
            crls = {**ca.crls, url: new}
            grace = self.crl_grace if self.crl_grace is not None else 0.0
            updated = replace(ca, crls=crls, coverage=_coverage(ca.snapshot, crls, grace))
            self._swap(name, replace(tenant, cas={**tenant.cas, ca_id: updated}))

    def count_request(self, name: str, code: int) -> None:
        with self._lock:
            tenant = self._tenants[name]
            requests = dict(tenant.graph_requests)
            key = str(code)
            requests[key] = requests.get(key, 0) + 1
            self._swap(name, replace(tenant, graph_requests=requests))

    def count_budget_wait(self, name: str, seconds: float) -> None:
        with self._lock:
            tenant = self._tenants[name]
            total = tenant.budget_wait_seconds + seconds
            self._swap(name, replace(tenant, budget_wait_seconds=total))

    def reconfigure(self, tenant_names: list[str]) -> None:
        """After a config reload: keep the state of tenants that remain, add new ones, drop the rest."""
        with self._lock:
            old = self._tenants
            self._tenants = {name: old.get(name) or TenantState(name) for name in tenant_names}
