"""What reading a CRL comes to: a few numbers and the serials, never the CRL itself."""

from __future__ import annotations

from dataclasses import dataclass

REASONS = (
    "network",
    "timeout",
    "http_4xx",
    "http_5xx",
    "too_large",
    "invalid",
    "signature",
    "refused",
)
"""The fixed set of ``reason`` label values of CRL read failures (spec, metric table)."""

SERIAL_WIDTH = 20
"""RFC 5280 caps a serial number at 20 octets: each serial is kept as 20 big-endian bytes,
so that Graph's hex strings (any case, any leading zeros) and the CRL's integers compare
as the same bytes."""


def serial_key(value: int) -> bytes | None:
    """A serial number as its fixed-width key; None when it cannot be one (negative, or
    longer than 20 octets: no conforming certificate or CRL entry has it)."""
    if value < 0 or value.bit_length() > 8 * SERIAL_WIDTH:
        return None
    return value.to_bytes(SERIAL_WIDTH, "big")


@dataclass(frozen=True, slots=True)
class CRLInfo:
    """A CRL that was read, whose issuer is the CA and whose signature verifies."""

    this_update: float
    next_update: float | None
    entries: int
    """Entries on the CRL (``revoked_certificates``)."""
    size: int
    """Bytes as served."""
    serials: bytes
    """The entries' serial numbers, ``SERIAL_WIDTH`` bytes each, in the CRL's order: 20
    bytes an entry instead of the ~130 a set of Python ints costs."""

    def serial_set(self) -> frozenset[bytes]:
        """The serials as a set, for one coverage pass (built, used, dropped)."""
        blob = self.serials
        return frozenset(blob[i : i + SERIAL_WIDTH] for i in range(0, len(blob), SERIAL_WIDTH))


@dataclass(frozen=True, slots=True)
class Validators:
    """What a conditional request sends back: the last good response's ETag / Last-Modified."""

    etag: str | None = None
    last_modified: str | None = None


class CRLFailure(Exception):
    """A read that did not give a usable CRL: ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
