"""Ground truth of revocation: what the exporter should say about every CRL, and which
revocations never reached one.

Computed from what the generator meant (`dataset.RevokedRecord`) and from the CRL documents
the CDN serves (`crl.CRLDocument`: the bytes, the entries the simulator put on them), never
from the exporter. The rules are the spec's ("Revocation (CRL)" and the metric table); the
choices the spec leaves open are written out in docs/simulator.md, "PKI and CRLs".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pki_simulator.crl import CRLDocument
from pki_simulator.faults import CRL_TRANSPORT_FAULTS, Fault, Scope
from pki_simulator.truth import SampleKey, ca_labels, format_end, timestamp

if TYPE_CHECKING:
    from pki_simulator.app import Simulator
    from pki_simulator.dataset import CAData

CRL_FETCH_SUCCESS = "intune_cloudpki_crl_fetch_success"
CRL_LAST_UPDATE = "intune_cloudpki_crl_last_update_timestamp_seconds"
CRL_NEXT_UPDATE = "intune_cloudpki_crl_next_update_timestamp_seconds"
CRL_REVOKED = "intune_cloudpki_crl_revoked_certificates"
CRL_SIZE = "intune_cloudpki_crl_size_bytes"
REVOKED_UNPUBLISHED = "intune_cloudpki_leaf_certificates_revoked_unpublished"
CRL_METRICS = (
    CRL_FETCH_SUCCESS,
    CRL_LAST_UPDATE,
    CRL_NEXT_UPDATE,
    CRL_REVOKED,
    CRL_SIZE,
    REVOKED_UNPUBLISHED,
)
DEFAULT_GRACE = 4 * 3600.0
DEFAULT_MAX_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class CRLValues:
    """The gauges of one CRL: thisUpdate, nextUpdate, entries, bytes as served."""

    this_update: int
    next_update: int
    revoked_certificates: int
    size_bytes: int

    @classmethod
    def of(cls, document: CRLDocument) -> CRLValues:
        return cls(document.this_update, document.next_update, document.entries, document.size)


@dataclass(frozen=True)
class CRLTruth:
    """One CRL (one CA version) at one instant.

    ``served`` are the values of the CRL the CDN serves now (None when what it serves is
    not a CRL, or nothing is served: an HTTP error, a hang, a reset). ``kept`` are the
    values the exporter shows: ``served`` when the read succeeds, else those of the
    healthy CRL (the one it read before the fault was switched on: a failed read keeps the
    last good values). ``reason`` is the failure reason of the spec's set, None on success.
    """

    tenant_id: str
    ca_id: str
    ca: str
    version: int
    url: str
    cacert_url: str
    #: the CA resource's ``certificateRevocationListUrl`` (its current version)
    current: bool
    #: named by the CA at that instant: current, or some unexpired certificate names it
    named: bool
    fetch_success: int
    reason: str | None
    served: CRLValues | None
    kept: CRLValues
    #: serial numbers on the kept CRL (not in `to_dict`)
    kept_serials: frozenset[int]

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "kept_serials"}
        data["served"] = None if self.served is None else self.served.__dict__.copy()
        data["kept"] = self.kept.__dict__.copy()
        return data


def _transport_reason(fault: Fault) -> str:
    if fault.kind == "crl_error":
        return "http_5xx" if (fault.status or 404) >= 500 else "http_4xx"
    return "timeout" if fault.kind == "crl_hang" else "network"


def named_versions(ca: CAData, now: float) -> list[int]:
    """The versions whose CRL the CA names at ``now``: the current one, and any whose
    valid certificates (any status) are not all expired."""
    latest = ca.revocations().latest_end
    return [
        n
        for n in ca.version_numbers
        if n == ca.current_version or latest.get(n, float("-inf")) > now
    ]


def crl_truth(sim: Simulator, ca: CAData, number: int, now: float, max_size: int) -> CRLTruth:
    scope = Scope("crl", ca.tenant.spec.tenant_id, ca.spec.id, version=number)
    transport = sim.faults.matching(scope, CRL_TRANSPORT_FAULTS)
    served_doc = sim.crls.document(ca, number, now)
    healthy = sim.crls.document(ca, number, now, healthy=True)
    reason: str | None = None
    served: CRLValues | None = None
    if transport:
        reason = _transport_reason(transport[0])
    else:
        if served_doc.problem != "invalid":
            served = CRLValues.of(served_doc)
        if served_doc.problem is not None:
            reason = served_doc.problem
        elif served_doc.size > max_size:
            reason = "too_large"
    kept_doc = healthy if reason is not None else served_doc
    return CRLTruth(
        tenant_id=ca.tenant.spec.tenant_id,
        ca_id=ca.spec.id,
        ca=ca.spec.display_name or ca.spec.id,
        version=number,
        url=ca.crl_urls[number],
        cacert_url=ca.cacert_urls[number],
        current=number == ca.current_version,
        named=number in named_versions(ca, now),
        fetch_success=0 if reason else 1,
        reason=reason,
        served=served,
        kept=CRLValues.of(kept_doc),
        kept_serials=kept_doc.serials,
    )


def expected_crls(
    sim: Simulator, cas: Iterable[CAData], now: datetime | float, *, max_size: int
) -> list[CRLTruth]:
    now_ts = timestamp(now)
    return [
        crl_truth(sim, ca, number, now_ts, max_size) for ca in cas for number in ca.version_numbers
    ]


def unpublished_rows(
    sim: Simulator, ca: CAData, now: datetime | float, *, grace: float, max_size: int
) -> list[dict[str, object]]:
    """Certificates revoked in Graph more than ``grace`` seconds before ``now``, not yet
    expired, whose serial number (as an integer) is not on the kept CRL of the version
    that issued them; oldest revocation first, then by serial number."""
    now_ts = timestamp(now)
    kept = {n: crl_truth(sim, ca, n, now_ts, max_size) for n in ca.version_numbers}
    rows = sorted(
        (
            r
            for r in ca.revocations().revoked
            if r.in_graph
            and now_ts - r.revoked_at > grace
            and r.end > now_ts
            and r.serial not in kept[r.version].kept_serials
        ),
        key=lambda r: (r.revoked_at, r.serial),
    )
    return [
        {
            "serial_number": r.serial_number,
            "thumbprint": r.thumbprint,
            "device_id": r.device_id,
            "revoked_at": format_end(r.revoked_at),
            "revoked_timestamp": float(r.revoked_at),
            "crl_url": ca.crl_urls[r.version],
        }
        for r in rows
    ]


def crl_samples(
    sim: Simulator,
    cas: Iterable[CAData],
    now: datetime | float,
    *,
    grace: float,
    max_size: int,
    tenant_names: Mapping[str, str] | None = None,
) -> dict[SampleKey, float]:
    """The CRL samples of the CRLs the CAs name at ``now``, labelled ``tenant``, ``ca_id``,
    ``ca`` and ``url``, and ``revoked_unpublished`` per CA."""
    now_ts = timestamp(now)
    samples: dict[SampleKey, float] = {}
    for ca in cas:
        base = ca_labels(ca, tenant_names)
        for number in named_versions(ca, now_ts):
            truth = crl_truth(sim, ca, number, now_ts, max_size)
            labels = tuple(sorted({**base, "url": truth.url}.items()))
            samples[(CRL_FETCH_SUCCESS, labels)] = float(truth.fetch_success)
            samples[(CRL_LAST_UPDATE, labels)] = float(truth.kept.this_update)
            samples[(CRL_NEXT_UPDATE, labels)] = float(truth.kept.next_update)
            samples[(CRL_REVOKED, labels)] = float(truth.kept.revoked_certificates)
            samples[(CRL_SIZE, labels)] = float(truth.kept.size_bytes)
        rows = unpublished_rows(sim, ca, now_ts, grace=grace, max_size=max_size)
        samples[(REVOKED_UNPUBLISHED, tuple(sorted(base.items())))] = float(len(rows))
    return samples
