"""Typed decoding of Graph responses.

Leaf pages are the hot path: a large tenant sends hundreds of megabytes of JSON, of which
four fields per record matter. The msgspec structs below name only those fields, so the
decoder skips the rest without building Python objects for them. A record that does not
fit (wrong type, unreadable date, missing end date) must not sink the page: the page is
then decoded again record by record, and the misfits are counted, not raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

LABEL_MAX = 64
"""Longest label value taken from Graph; longer strings are cut (unbounded input, bounded series)."""


class InvalidResponse(Exception):
    """A Graph response body that is not the document we asked for."""


class LeafRecord(msgspec.Struct, frozen=True, gc=False):
    """The four fields of a leaf certificate the exporter reads; every other field is skipped."""

    validityStartDateTime: datetime
    validityEndDateTime: datetime
    certificateStatus: str | None = None
    devicePlatform: str | None = None


class _LeafPage(msgspec.Struct, frozen=True, gc=False):
    value: list[LeafRecord]
    next_link: str | None = msgspec.field(name="@odata.nextLink", default=None)


class _RawLeafPage(msgspec.Struct, frozen=True, gc=False):
    value: list[msgspec.Raw]
    next_link: str | None = msgspec.field(name="@odata.nextLink", default=None)


_page_decoder = msgspec.json.Decoder(_LeafPage)
_raw_page_decoder = msgspec.json.Decoder(_RawLeafPage)
_record_decoder = msgspec.json.Decoder(LeafRecord)


@dataclass(frozen=True, slots=True)
class LeafPage:
    """One decoded page: the readable records, how many were not, and the next link."""

    records: list[LeafRecord]
    invalid: int
    next_link: str | None


def decode_leaf_page(body: bytes) -> LeafPage:
    """Decode one page of ``getAllCloudCertificationAuthorityLeafCertificates``.

    Raises InvalidResponse when the body is not JSON or has no ``value`` array; a bad
    record only counts as invalid.
    """
    try:
        page = _page_decoder.decode(body)
    except msgspec.ValidationError:
        return _decode_leaf_page_slowly(body)
    except msgspec.DecodeError as exc:
        raise InvalidResponse(f"leaf page is not valid JSON: {_short(exc)}") from None
    return LeafPage(page.value, 0, page.next_link)


def _decode_leaf_page_slowly(body: bytes) -> LeafPage:
    try:
        raw = _raw_page_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidResponse(f"leaf page is not a collection: {_short(exc)}") from None
    records: list[LeafRecord] = []
    invalid = 0
    for item in raw.value:
        try:
            records.append(_record_decoder.decode(item))
        except (msgspec.ValidationError, msgspec.DecodeError):
            invalid += 1
    return LeafPage(records, invalid, raw.next_link)


class _CAPage(msgspec.Struct, frozen=True):
    value: list[dict[str, Any]]
    next_link: str | None = msgspec.field(name="@odata.nextLink", default=None)


_ca_page_decoder = msgspec.json.Decoder(_CAPage)
_ca_decoder = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class CARecord:
    """The CA resource, reduced to what the metrics show."""

    id: str
    display_name: str | None
    status: str
    type: str
    key_size: str
    hashing_algorithm: str
    key_platform: str
    expiry: float | None


def decode_ca_page(body: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """Decode one page of the CA list: raw CA objects and the next link."""
    try:
        page = _ca_page_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidResponse(f"CA list is not a collection: {_short(exc)}") from None
    return page.value, page.next_link


def decode_ca(body: bytes) -> Mapping[str, Any]:
    """Decode one CA object (GET .../cloudCertificationAuthority/{id})."""
    try:
        return _ca_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidResponse(f"CA is not a JSON object: {_short(exc)}") from None


def ca_record(obj: Mapping[str, Any]) -> CARecord:
    """Read a CA object; the id must already have been checked by the caller."""
    name = obj.get("displayName")
    return CARecord(
        id=str(obj.get("id", "")).lower(),
        display_name=name[:LABEL_MAX] if isinstance(name, str) and name else None,
        status=enum_label(obj.get("certificationAuthorityStatus")),
        type=enum_label(obj.get("cloudCertificationAuthorityType")),
        key_size=enum_label(obj.get("certificateKeySize")),
        hashing_algorithm=enum_label(obj.get("cloudCertificationAuthorityHashingAlgorithm")),
        key_platform=enum_label(obj.get("keyPlatform")),
        expiry=parse_timestamp(obj.get("validityEndDateTime")),
    )


def enum_label(value: object, default: str = "unknown") -> str:
    """A Graph enum (or free string) as a bounded label value."""
    if isinstance(value, str) and value:
        return value[:LABEL_MAX]
    return default


_datetime_decoder = msgspec.json.Decoder(datetime)


def parse_timestamp(value: object) -> float | None:
    """An RFC 3339 string as epoch seconds (UTC when it has no offset); None when unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = _datetime_decoder.decode(msgspec.json.encode(value))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]
