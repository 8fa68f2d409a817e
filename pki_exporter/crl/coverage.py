"""Revocations missing from their CRL: revoked in Intune, still accepted everywhere.

A certificate counts when Graph says it was revoked more than ``publication_grace`` ago
(``now - revocationDateTime > grace``; one without a readable time is not kept by the
fold), it has not expired, the CRL it names has been read (its
last good values), and its serial number is not on that CRL. Serial numbers compare as
integers (both sides are kept as 20 big-endian bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pki_exporter.aggregate.revocations import (
    SERIAL_WIDTH,
    RevocationAggregate,
    RevokedCertificate,
)
from pki_exporter.crl.model import CRLInfo

ROWS_MAX = 1000
"""Unpublished revocations listed per CA at most (the count is always exact)."""


@dataclass(frozen=True, slots=True)
class Coverage:
    """What the coverage check of one CA comes to."""

    unpublished: int
    """Certificates missing from the CRL they name (the metric)."""
    rows: tuple[RevokedCertificate, ...]
    """The first ``ROWS_MAX`` of them, earliest revoked first, then by serial number."""
    checked_at: float


NO_COVERAGE = Coverage(0, (), 0.0)


def coverage(
    revocations: RevocationAggregate,
    crls: Mapping[str, CRLInfo | None],
    now: float,
    grace: float,
) -> Coverage:
    """Check every revoked, unexpired certificate of a CA against the CRL it names.

    ``crls``: URL -> the last good read of that CRL (None or absent: never read, nothing
    can be said). The serial sets are built here for one pass and dropped.
    """
    urls = revocations.crl_urls
    sets: list[frozenset[bytes] | None] = []
    for url in urls:
        info = crls.get(url)
        sets.append(info.serial_set() if info is not None else None)
    serials = revocations.serials
    ends = revocations.ends
    revoked_at = revocations.revoked_at
    index = revocations.crl_index
    cutoff = now - grace
    missing: list[int] = []
    for i in range(len(ends)):
        k = index[i]
        if k >= len(sets):
            continue
        found = sets[k]
        if found is None or ends[i] <= now:
            continue
        if revoked_at[i] >= cutoff:  # inside the grace: the CRL may not have it yet
            continue
        if serials[i * SERIAL_WIDTH : (i + 1) * SERIAL_WIDTH] not in found:
            missing.append(i)
    missing.sort(key=lambda i: (revoked_at[i], serials[i * SERIAL_WIDTH : (i + 1) * SERIAL_WIDTH]))
    rows = tuple(revocations.certificate(i) for i in missing[:ROWS_MAX])
    return Coverage(len(missing), rows, now)
