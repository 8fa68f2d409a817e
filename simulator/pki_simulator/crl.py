"""The CRLs a CA publishes: real RFC 5280 CRLs on Cloud PKI's schedule, with faults.

A CRL depends on the CA version's revoked certificates, on "now" (through the schedule) and
on the CRL faults in force, and on nothing else: it is built on first request for that
combination, signed deterministically (RFC 6979, so the same state gives the same bytes and
ETag), and kept, so a CRL of 100,000 entries costs its build (about a second) once.

Schedule (Microsoft's documentation): a CRL is valid for 7 days, republished every 3.5
days and on every revocation. Here thisUpdate is the later of the last 3.5-day
publication (counted from the version's notBefore) and the last revocation at or before
now; nextUpdate is thisUpdate + 7 days; the entries are the revocations up to thisUpdate.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki_simulator.faults import Fault, FaultSet, Scope
from pki_simulator.pki import (
    CRL_VALIDITY,
    PUBLICATION_INTERVAL,
    CAVersion,
    ca_name,
    curve_for,
    derived_key,
)

if TYPE_CHECKING:
    from pki_simulator.dataset import CAData

DAY = 86400
DER_TYPE = "application/pkix-crl"
PEM_TYPE = "application/x-pem-file"
#: the issuer a ``crl_foreign_issuer`` CRL names
FOREIGN_ISSUER = ca_name("Elsewhere Issuing CA", "Elsewhere")
#: made-up serials padding an oversize CRL start here (above any leaf's 128-bit serial)
PADDING_SERIAL = 1 << 150
_GARBAGE_SIZE = 2048
_CACHE = 64


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class CRLDocument:
    """One CRL as the CDN serves it, and what a careful reader makes of it."""

    body: bytes
    content_type: str
    etag: str
    #: Last-Modified (thisUpdate)
    last_modified: int
    this_update: int
    next_update: int
    #: serial numbers on it (padding included); empty for garbage
    serials: frozenset[int]
    entries: int
    #: None if it parses as a CRL whose issuer is the CA version and whose signature
    #: verifies against its key; else ``invalid`` (not a CRL) or ``signature``
    problem: str | None
    #: the content faults that shaped it (kinds)
    faults: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass(frozen=True)
class _Entries:
    """A version's revocations sorted by time: (revoked_at, serial), and the times alone."""

    items: tuple[tuple[int, int], ...]
    times: tuple[int, ...]


def scheduled_this_update(version: CAVersion, times: tuple[int, ...], now: float) -> int:
    """thisUpdate of the healthy CRL at ``now``: the last publication or revocation."""
    now_i = int(now)
    periods = (now_i - version.not_before) // PUBLICATION_INTERVAL
    published = version.not_before + periods * PUBLICATION_INTERVAL
    index = bisect.bisect_right(times, now_i)
    latest = times[index - 1] if index else published
    return max(published, latest)


def missing_serials(ca: CAData, number: int, count: int) -> frozenset[int]:
    """What ``crl_missing`` leaves out: the first ``count`` clean revoked certificates of
    the version (page order) unexpired at the anchor + 30 days and revoked at least a day
    before the anchor."""
    picked: list[int] = []
    anchor = ca.anchor_ts
    for record in ca.revocations().revoked:
        if len(picked) >= count:
            break
        if (
            record.version == number
            and record.clean
            and record.end > anchor + 30 * DAY
            and record.revoked_at <= anchor - DAY
        ):
            picked.append(record.serial)
    return frozenset(picked)


class CRLPublisher:
    """Builds and caches the CRL documents of every CA version."""

    def __init__(self, faults: FaultSet) -> None:
        self._faults = faults
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._cache: OrderedDict[tuple[object, ...], CRLDocument] = OrderedDict()
        self._entries: dict[tuple[int, int], _Entries] = {}

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._entries.clear()

    def _version_entries(self, ca: CAData, number: int) -> _Entries:
        key = (id(ca), number)
        with self._lock:
            known = self._entries.get(key)
        if known is None:
            items = sorted(
                (r.revoked_at, r.serial) for r in ca.revocations().revoked if r.version == number
            )
            known = _Entries(tuple(items), tuple(t for t, _ in items))
            with self._lock:
                self._entries[key] = known
        return known

    def content_faults(self, ca: CAData, number: int, *, count: bool = False) -> list[Fault]:
        scope = Scope("crl", ca.tenant.spec.tenant_id, ca.spec.id, version=number)
        return self._faults.crl_state(scope, count=count)

    def document(
        self, ca: CAData, number: int, now: float, *, healthy: bool = False, count: bool = False
    ) -> CRLDocument:
        """The CRL of version ``number`` of ``ca`` at ``now``: as served (with the content
        faults in force), or ``healthy`` (as it would be without them)."""
        version = ca.versions()[number]
        entries = self._version_entries(ca, number)
        faults = [] if healthy else self.content_faults(ca, number, count=count)
        kinds: set[str] = {f.kind for f in faults}
        this_update = scheduled_this_update(version, entries.times, now)
        stale = [f for f in faults if f.kind == "crl_stale"]
        if stale:
            fault = stale[-1]
            next_update = int(self._faults.added_at(fault) + (fault.next_update_in or 0.0))
            this_update = next_update - CRL_VALIDITY
        missing = max((f.count or 0 for f in faults if f.kind == "crl_missing"), default=0)
        pad_to = max((f.size or 0 for f in faults if f.kind == "crl_oversize"), default=None)
        key = (
            id(ca),
            number,
            this_update,
            missing,
            pad_to,
            tuple(sorted(kinds - {"crl_stale", "crl_missing", "crl_oversize"})),
        )
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        with self._build_lock:  # one build at a time: a 100,000-entry CRL is built once
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None:
                return cached
            omitted = missing_serials(ca, number, missing) if missing else frozenset()
            upto = bisect.bisect_right(entries.times, this_update)
            items = [(s, t) for t, s in entries.items[:upto] if s not in omitted]
            document = self._build(ca, version, this_update, items, kinds, pad_to)
        with self._lock:
            self._cache[key] = document
            while len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return document

    def _build(
        self,
        ca: CAData,
        version: CAVersion,
        this_update: int,
        items: list[tuple[int, int]],
        kinds: set[str],
        pad_to: int | None,
    ) -> CRLDocument:
        next_update = this_update + CRL_VALIDITY
        applied = tuple(sorted(kinds))
        if "crl_garbage" in kinds:
            noise = random.Random(f"{ca.spec.id}|garbage").randbytes(_GARBAGE_SIZE - 1)
            body = b"\xff" + noise  # never a DER SEQUENCE, never PEM
            return _document(
                body, DER_TYPE, this_update, next_update, frozenset(), 0, "invalid", applied
            )
        der = _sign(ca, version, this_update, items, kinds)
        serials = [s for s, _ in items]
        if pad_to is not None and len(der) <= pad_to:
            padding: list[tuple[int, int]] = []
            while len(der) <= pad_to:
                per_entry = max(20, len(der) // max(1, len(items) + len(padding)))
                more = (pad_to - len(der)) // per_entry + 16
                start = PADDING_SERIAL + len(padding)
                padding.extend((start + i, this_update - DAY) for i in range(more))
                der = _sign(ca, version, this_update, items + padding, kinds)
            serials.extend(s for s, _ in padding)
        body, content_type = der, DER_TYPE
        if "crl_pem" in kinds:
            crl = x509.load_der_x509_crl(der)
            body, content_type = crl.public_bytes(serialization.Encoding.PEM), PEM_TYPE
        problem = "signature" if kinds & {"crl_foreign_key", "crl_foreign_issuer"} else None
        return _document(
            body,
            content_type,
            this_update,
            next_update,
            frozenset(serials),
            len(serials),
            problem,
            applied,
        )


def _document(
    body: bytes,
    content_type: str,
    this_update: int,
    next_update: int,
    serials: frozenset[int],
    entries: int,
    problem: str | None,
    faults: tuple[str, ...],
) -> CRLDocument:
    return CRLDocument(
        body=body,
        content_type=content_type,
        etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        last_modified=this_update,
        this_update=this_update,
        next_update=next_update,
        serials=serials,
        entries=entries,
        problem=problem,
        faults=faults,
    )


def _sign(
    ca: CAData,
    version: CAVersion,
    this_update: int,
    items: list[tuple[int, int]],
    kinds: set[str],
) -> bytes:
    # The builder copies its list on every add_revoked_certificate (quadratic): hand it the
    # whole list at once instead.
    revoked = [
        x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_utc(at)).build()
        for serial, at in items
    ]
    issuer = FOREIGN_ISSUER if "crl_foreign_issuer" in kinds else version.subject
    key = version.key
    if "crl_foreign_key" in kinds:
        key = derived_key(f"{ca.spec.id}|v{version.number}|foreign", curve_for(ca.spec.key_size))
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer,
        last_update=_utc(this_update),
        next_update=_utc(this_update + CRL_VALIDITY),
        extensions=[],
        revoked_certificates=revoked,
    )
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(version.key.public_key()),
        critical=False,
    ).add_extension(x509.CRLNumber(this_update), critical=False)
    crl = builder.sign(key, version.hash_algorithm, ecdsa_deterministic=True)
    return crl.public_bytes(serialization.Encoding.DER)
