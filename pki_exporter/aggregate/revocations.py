"""Per CA: which CRLs its certificates name, and its revoked, unexpired certificates.

The coverage check (pki_exporter/crl/coverage.py) needs, for each certificate revoked in
Graph and not yet expired: its serial number, when it was revoked, when it ends, which CRL
it names, and for the drill-down its thumbprint and device id. A tenant can hold a million
certificates of which a tenth revoked, so each is kept in fixed-width columns: serial 20
bytes, thumbprint 20, device id 16, revocation time and end 8 each, CRL index 1: 73 bytes
a revoked certificate, instead of ~600 for a tuple of Python objects. A thumbprint that is
not 40 hex digits or a device id that is not a GUID is kept as text beside, for the first
``ODD_KEEP`` such certificates only (the rest show empty in the drill-down).

The CRLs: the CA's own ``certificateRevocationListUrl`` first, then the distinct
``crlDistributionPointUrl``s of unexpired certificates, most-named first, at most
``MAX_CRLS``; a certificate naming a CRL beyond those is not checked (``unchecked``).
"""

from __future__ import annotations

import sys
import uuid
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from pki_exporter.graph.records import URL_MAX, parse_timestamp

MAX_CRLS = 8
"""CRLs read per CA at most (spec, "Revocation (CRL)")."""
_TRACKED = 64
"""Distinct CRL URLs counted during a fold; a hostile tenant's millionth URL costs nothing."""
NO_CRL = 255
"""The CRL index of a certificate whose CRL is not read (none named, or beyond MAX_CRLS)."""
ODD_KEEP = 1000
SERIAL_WIDTH = 20
THUMB_WIDTH = 20
DEVICE_WIDTH = 16


class RevocationRecordLike(Protocol):
    @property
    def validityEndDateTime(self) -> datetime: ...
    @property
    def certificateStatus(self) -> str | None: ...
    @property
    def deviceId(self) -> str | None: ...
    @property
    def serialNumber(self) -> object: ...
    @property
    def thumbprint(self) -> object: ...
    @property
    def crlDistributionPointUrl(self) -> object: ...
    @property
    def certificationAuthorityIssuerUri(self) -> object: ...
    @property
    def revocationDateTime(self) -> object: ...


def serial_bytes(value: object) -> bytes | None:
    """Graph's hex serial number (any case, leading zeros, ``:`` or spaces) as 20 big-endian
    bytes; None when it is not one."""
    if not isinstance(value, str) or not value or len(value) > 128:
        return None
    try:
        number = int(value, 16)
    except ValueError:
        try:
            number = int(value.replace(":", "").replace(" ", ""), 16)
        except ValueError:
            return None
    if number < 0 or number.bit_length() > 8 * SERIAL_WIDTH:
        return None
    return bytes(number.to_bytes(SERIAL_WIDTH, "big"))


def revocation_time(value: object) -> float | None:
    """``revocationDateTime`` as epoch seconds. Whole seconds (what Graph and the simulator
    write) take the C parser; fractions go through ``parse_timestamp``, which rounds the
    7th digit as the rest of the exporter does."""
    if isinstance(value, str) and "." not in value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return parse_timestamp(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return parse_timestamp(value)


@dataclass(frozen=True, slots=True)
class RevokedCertificate:
    """One revoked, unexpired certificate as the drill-down shows it."""

    serial: str
    """Upper-case hex without leading zeros."""
    thumbprint: str | None
    device_id: str | None
    revoked_at: float
    end: float
    crl_url: str | None


@dataclass(frozen=True, slots=True)
class RevocationAggregate:
    """The CRLs of a CA and its revoked, unexpired certificates, as of one refresh."""

    crl_urls: tuple[str, ...] = ()
    """At most MAX_CRLS; the CA's own first."""
    issuer_uris: tuple[str | None, ...] = ()
    """Per CRL: the ``certificationAuthorityIssuerUri`` its certificates name (the CA
    certificate of another version), None for the CA's own CRL or when none is named."""
    serials: bytes = b""
    thumbprints: bytes = b""
    device_ids: bytes = b""
    revoked_at: array[float] = field(default_factory=lambda: array("d"))
    """revocationDateTime (a revoked certificate without a readable one is not kept: the
    grace cannot be applied to it)."""
    ends: array[float] = field(default_factory=lambda: array("d"))
    crl_index: bytes = b""
    """Index into ``crl_urls`` per certificate, NO_CRL when its CRL is not read."""
    odd: Mapping[int, tuple[str | None, str | None]] = field(default_factory=dict)
    """index -> (thumbprint, device id) kept as text when they do not fit their column."""
    unchecked: int = 0
    """Revoked, unexpired certificates whose CRL is not read (none named, or past MAX_CRLS)."""

    def __len__(self) -> int:
        return len(self.ends)

    def certificate(self, i: int) -> RevokedCertificate:
        """The ``i``-th revoked certificate, decoded for display."""
        serial = int.from_bytes(self.serials[i * SERIAL_WIDTH : (i + 1) * SERIAL_WIDTH], "big")
        thumb_raw = self.thumbprints[i * THUMB_WIDTH : (i + 1) * THUMB_WIDTH]
        device_raw = self.device_ids[i * DEVICE_WIDTH : (i + 1) * DEVICE_WIDTH]
        thumb: str | None = thumb_raw.hex().upper() if any(thumb_raw) else None
        device: str | None = str(uuid.UUID(bytes=device_raw)) if any(device_raw) else None
        if i in self.odd:
            odd_thumb, odd_device = self.odd[i]
            thumb = odd_thumb if thumb is None else thumb
            device = odd_device if device is None else device
        index = self.crl_index[i]
        revoked = self.revoked_at[i]
        return RevokedCertificate(
            serial=f"{serial:X}",
            thumbprint=thumb,
            device_id=device,
            revoked_at=revoked,
            end=self.ends[i],
            crl_url=self.crl_urls[index] if index < len(self.crl_urls) else None,
        )


EMPTY_REVOCATIONS = RevocationAggregate()


def _hex(value: object, width: int) -> bytes | None:
    """``width`` bytes written as ``2 * width`` hex digits; None for anything else."""
    if value.__class__ is not str or len(value) != 2 * width:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


class RevocationFold:
    """Folds leaf records of one CA into its CRL list and revoked certificates."""

    __slots__ = (
        "_ca_url",
        "_counts",
        "_crl_index",
        "_device_ids",
        "_ends",
        "_issuers",
        "_now",
        "_odd",
        "_revoked_at",
        "_serials",
        "_thumbprints",
        "_tracked_index",
        "_urls",
    )

    def __init__(self, now: float, ca_crl_url: str | None = None) -> None:
        self._now = datetime.fromtimestamp(now, tz=UTC)
        self._ca_url = ca_crl_url
        self._counts: dict[str, int] = {}
        self._issuers: dict[str, str] = {}
        self._urls: list[str] = []
        self._tracked_index: dict[str, int] = {}
        self._serials = bytearray()
        self._thumbprints = bytearray()
        self._device_ids = bytearray()
        self._revoked_at = array("d")
        self._ends = array("d")
        self._crl_index = array("H")
        """Index into ``_urls`` while folding (0xFFFF: no URL / untracked)."""
        self._odd: dict[int, tuple[str | None, str | None]] = {}

    def _track(self, url: object) -> int:
        """The fold's index of a CRL URL (0xFFFF: none, unusable or past the tracked ones)."""
        if url.__class__ is not str or not url or len(url) > URL_MAX:
            url = self._ca_url
            if url is None:
                return 0xFFFF
        assert isinstance(url, str)
        index = self._tracked_index.get(url)
        if index is None:
            if len(self._urls) >= _TRACKED:
                return 0xFFFF
            index = self._tracked_index[url] = len(self._urls)
            self._urls.append(url)
        return index

    def add(self, records: Iterable[RevocationRecordLike]) -> None:
        """Fold one page of valid records."""
        now = self._now
        counts = self._counts
        issuers = self._issuers
        for record in records:
            end_dt = record.validityEndDateTime
            if end_dt.tzinfo is None:
                end_dt = end_dt.replace(tzinfo=UTC)
            if end_dt <= now:
                continue
            url = record.crlDistributionPointUrl
            if url.__class__ is str:
                n = counts.get(url)
                if n is not None:
                    counts[url] = n + 1
                elif url and len(counts) < _TRACKED and len(url) <= URL_MAX:
                    counts[url] = 1
                    issuer = record.certificationAuthorityIssuerUri
                    if isinstance(issuer, str) and issuer and len(issuer) <= URL_MAX:
                        issuers[url] = issuer
            if record.certificateStatus != "revoked":
                continue
            self._keep(record, end_dt, url)

    def _keep(self, record: RevocationRecordLike, end: datetime, url: object) -> None:
        """One revoked, unexpired certificate into the columns (10% of a tenant: off the
        hot loop)."""
        serial = serial_bytes(record.serialNumber)
        if serial is None:
            return  # a serial that cannot be compared cannot be checked
        revoked = revocation_time(record.revocationDateTime)
        if revoked is None:
            return  # nor can a revocation without a time be held to the grace
        thumb, device = record.thumbprint, record.deviceId
        thumb_key = _hex(thumb, THUMB_WIDTH)
        device_key = _hex(device.replace("-", ""), DEVICE_WIDTH) if device else None
        odd = (thumb_key is None and thumb) or (device_key is None and device)
        if odd and len(self._odd) < ODD_KEEP:
            self._odd[len(self._ends)] = (
                None if thumb_key or not isinstance(thumb, str) else thumb[:256],
                None if device_key or not device else device[:256],
            )
        self._serials += serial
        self._thumbprints += thumb_key or bytes(THUMB_WIDTH)
        self._device_ids += device_key or bytes(DEVICE_WIDTH)
        self._revoked_at.append(revoked)
        self._ends.append(end.timestamp())
        self._crl_index.append(self._track(url))

    def result(self) -> RevocationAggregate:
        ranked = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))
        urls: list[str] = []
        if self._ca_url is not None:
            urls.append(self._ca_url)
        for url, _ in ranked:
            if len(urls) >= MAX_CRLS:
                break
            if url not in urls:
                urls.append(url)
        position = {url: i for i, url in enumerate(urls)}
        remap = [position.get(url, NO_CRL) for url in self._urls]
        index = bytes(remap[i] if i != 0xFFFF else NO_CRL for i in self._crl_index)
        return RevocationAggregate(
            crl_urls=tuple(urls),
            issuer_uris=tuple(
                None if url == self._ca_url else self._issuers.get(url) for url in urls
            ),
            serials=bytes(self._serials),
            thumbprints=bytes(self._thumbprints),
            device_ids=bytes(self._device_ids),
            revoked_at=self._revoked_at,
            ends=self._ends,
            crl_index=index,
            odd=self._odd,
            unchecked=index.count(NO_CRL),
        )


# -- on disk (``--storage.path``) ------------------------------------------------------


class StoredRevocations(msgspec.Struct, forbid_unknown_fields=True):
    """``RevocationAggregate`` in a snapshot file: the columns as they are, floats as
    little-endian float64."""

    crl_urls: list[str]
    issuer_uris: list[str | None]
    serials: bytes
    thumbprints: bytes
    device_ids: bytes
    revoked_at: bytes
    ends: bytes
    crl_index: bytes
    odd: list[tuple[int, str | None, str | None]]
    unchecked: int


def _le(values: array[float]) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array("d", values)
    swapped.byteswap()
    return swapped.tobytes()


def _floats(data: bytes) -> array[float]:
    if len(data) % 8:
        raise ValueError("revocation times are not float64")
    values = array("d")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def to_stored(r: RevocationAggregate) -> StoredRevocations | None:
    if r is EMPTY_REVOCATIONS:
        return None
    return StoredRevocations(
        crl_urls=list(r.crl_urls),
        issuer_uris=list(r.issuer_uris),
        serials=r.serials,
        thumbprints=r.thumbprints,
        device_ids=r.device_ids,
        revoked_at=_le(r.revoked_at),
        ends=_le(r.ends),
        crl_index=r.crl_index,
        odd=[(i, thumb, device) for i, (thumb, device) in r.odd.items()],
        unchecked=r.unchecked,
    )


def from_stored(r: StoredRevocations | None) -> RevocationAggregate:
    """The aggregate back; ValueError when the columns do not fit together."""
    if r is None:
        return EMPTY_REVOCATIONS
    revoked_at, ends = _floats(r.revoked_at), _floats(r.ends)
    n = len(ends)
    if (
        len(revoked_at) != n
        or len(r.crl_index) != n
        or len(r.serials) != SERIAL_WIDTH * n
        or len(r.thumbprints) != THUMB_WIDTH * n
        or len(r.device_ids) != DEVICE_WIDTH * n
        or len(r.issuer_uris) != len(r.crl_urls)
        or len(r.crl_urls) > MAX_CRLS
    ):
        raise ValueError("revocation columns of different lengths")
    return RevocationAggregate(
        crl_urls=tuple(r.crl_urls),
        issuer_uris=tuple(r.issuer_uris),
        serials=r.serials,
        thumbprints=r.thumbprints,
        device_ids=r.device_ids,
        revoked_at=revoked_at,
        ends=ends,
        crl_index=r.crl_index,
        odd={i: (thumb, device) for i, thumb, device in r.odd},
        unchecked=r.unchecked,
    )
