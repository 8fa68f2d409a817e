"""Typed decoding of Graph responses.

Leaf pages are the hot path: a large tenant sends hundreds of megabytes of JSON, of which
nine fields per record matter (four for the certificate figures, five for the devices). The msgspec structs below name only those fields, so the
decoder skips the rest without building Python objects for them. A record that does not
fit (wrong type, unreadable date, missing end date) must not sink the page: the page is
then decoded again with every read field taking any JSON value, converted to records in
C a chunk at a time, and the misfits are counted, not raised (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import re
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
    """The fields of a leaf certificate the exporter reads; every other field is skipped.

    ``deviceId`` is judged like the status and the platform (a non-string makes the record
    invalid); the four display fields of the drill-down take any JSON value and never do
    (a non-string is shown empty: docs/design.md, "Metric semantics").
    """

    validityStartDateTime: datetime
    validityEndDateTime: datetime
    certificateStatus: str | None = None
    devicePlatform: str | None = None
    deviceId: str | None = None
    deviceName: Any = None
    userPrincipalName: Any = None
    serialNumber: Any = None
    thumbprint: Any = None
    # Revocation checks (spec, "Revocation (CRL)"): read as any JSON value, judged by the
    # revocation fold, so that they never make a record invalid.
    crlDistributionPointUrl: Any = None
    certificationAuthorityIssuerUri: Any = None
    revocationDateTime: Any = None


_DISPLAY_FIELDS = (
    "deviceName",
    "userPrincipalName",
    "serialNumber",
    "thumbprint",
    "crlDistributionPointUrl",
    "certificationAuthorityIssuerUri",
    "revocationDateTime",
)
LEAF_FIELDS = tuple(info.encode_name for info in msgspec.structs.fields(LeafRecord))
"""Graph's names of the fields read from a leaf record (the navigation source's ``$select``)."""


class _LeafPage(msgspec.Struct, frozen=True, gc=False):
    value: list[LeafRecord]
    next_link: str | None = msgspec.field(name="@odata.nextLink", default=None)


def _lenient_twin(record: type[msgspec.Struct]) -> Any:
    """A struct with the fields of ``record``, each taking any JSON value: decoding a page
    into it cannot fail on a record, and ``msgspec.convert`` then judges each one against
    ``record`` itself. Built from ``record`` so that a field added there is read here too."""
    fields: list[tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(record):
        if info.default_factory is not msgspec.NODEFAULT:
            default = msgspec.field(name=info.encode_name, default_factory=info.default_factory)
        else:
            # A missing required field arrives as None, which the conversion refuses.
            value = None if info.default is msgspec.NODEFAULT else info.default
            default = msgspec.field(name=info.encode_name, default=value)
        fields.append((info.name, Any, default))
    return msgspec.defstruct("_Lenient" + record.__name__, fields, frozen=True, gc=False)


_LenientLeafRecord: Any = _lenient_twin(LeafRecord)
_LenientLeafPage: Any = msgspec.defstruct(
    "_LenientLeafPage",
    [
        # Any JSON value is an item: a record that is not an object converts to nothing.
        ("value", list[_LenientLeafRecord | list[Any] | str | int | float | bool | None]),
        ("next_link", str | None, msgspec.field(name="@odata.nextLink", default=None)),
    ],
    frozen=True,
    gc=False,
)

_page_decoder = msgspec.json.Decoder(_LeafPage)
_lenient_page_decoder = msgspec.json.Decoder(_LenientLeafPage)
_record_decoder = msgspec.json.Decoder(LeafRecord)
_RECORDS = list[LeafRecord]
_CHUNK = 64
"""Items converted per call: a misfit costs at most this many conversions again."""
_AT_INDEX = re.compile(r" - at `\$\[(\d+)\]")


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
        try:
            page = _page_decoder.decode(body)
        except msgspec.ValidationError:
            # A record does not fit (or the page is no collection: then this raises too).
            lenient = _lenient_page_decoder.decode(body)
            records, invalid = _convert(lenient.value)
            return LeafPage(records, invalid, lenient.next_link)
    except msgspec.ValidationError as exc:
        raise InvalidResponse(f"leaf page is not a collection: {_short(exc)}") from None
    except msgspec.DecodeError as exc:
        fallback = _decode_leaf_page_leniently(body)
        if fallback is None:
            raise InvalidResponse(f"leaf page is not valid JSON: {_short(exc)}") from None
        return fallback
    except RecursionError:
        raise InvalidResponse("leaf page is nested too deeply") from None
    return LeafPage(page.value, 0, page.next_link)


def _convert(items: list[Any]) -> tuple[list[LeafRecord], int]:
    """Lenient items -> LeafRecords and the count of misfits, in C but for the misfits.

    ``msgspec.convert`` takes a chunk at once and stops at its first misfit, naming the
    index in its error path (``- at `$[12].validityEndDateTime```). The items before it
    passed: they are converted again as one call, the misfit is counted, and the rest of
    the chunk goes on. Cheaper than one call per record by the per-call overhead, and than
    one call per page by the work a late misfit throws away.
    """
    records: list[LeafRecord] = []
    invalid = 0
    for offset in range(0, len(items), _CHUNK):
        chunk = items[offset : offset + _CHUNK]
        while chunk:
            try:
                records += msgspec.convert(chunk, _RECORDS, from_attributes=True)
                break
            except msgspec.ValidationError as exc:
                found = _AT_INDEX.search(str(exc))
                if found is None:  # an error without an index: judge the items one by one
                    converted = _convert_each(chunk)
                    records += converted
                    invalid += len(chunk) - len(converted)
                    break
                bad = int(found.group(1))
                if bad:
                    converted = _convert_each(chunk[:bad])
                    records += converted
                    invalid += bad - len(converted)
                invalid += 1
                chunk = chunk[bad + 1 :]
    return records, invalid


def _convert_each(items: list[Any]) -> list[LeafRecord]:
    """Items that should all convert (they passed once): as one call, else one by one."""
    try:
        return msgspec.convert(items, _RECORDS, from_attributes=True)
    except msgspec.ValidationError:
        pass
    records = []
    for item in items:
        with contextlib.suppress(msgspec.ValidationError):
            records.append(msgspec.convert(item, LeafRecord, from_attributes=True))
    return records


def _encodable(text: str) -> bool:
    """False for a string holding a lone UTF-16 surrogate (no UTF-8 for it)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_leaf_page_leniently(body: bytes) -> LeafPage | None:
    """JSON that msgspec refuses although the grammar allows it: a lone UTF-16 surrogate
    escaped in a string (``"\\ud800"``, a device name cut inside an emoji). One such string
    must cost its record, not the page, so the page is read with the json module and each
    record's fields are judged on their own. None when the body is not JSON at all. Never on
    the hot path: only after msgspec has refused the body."""
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return None
    value = doc.get("value") if isinstance(doc, dict) else None
    next_link = doc.get("@odata.nextLink") if isinstance(doc, dict) else None
    if not isinstance(value, list) or not isinstance(next_link, str | None):
        raise InvalidResponse("leaf page is not a collection")
    try:
        (next_link or "").encode()
    except UnicodeEncodeError:
        raise InvalidResponse("leaf page has an @odata.nextLink that is not a URL") from None
    records: list[LeafRecord] = []
    invalid = 0
    for item in value:
        if not isinstance(item, dict):
            invalid += 1
            continue
        fields = {name: item[name] for name in LeafRecord.__struct_fields__ if name in item}
        for name in _DISPLAY_FIELDS:  # a display field never costs its record: shown empty
            value = fields.get(name)
            if isinstance(value, str) and not _encodable(value):
                fields[name] = None
        try:
            # Re-encoded with ASCII escapes: a lone surrogate in a field we read stays one
            # and makes that record invalid.
            records.append(_record_decoder.decode(json.dumps(fields).encode()))
        except (msgspec.ValidationError, msgspec.DecodeError):
            invalid += 1
    return LeafPage(records, invalid, next_link)


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
    crl_url: str | None = None
    """``certificateRevocationListUrl``: the CA's current CRL (spec, "Revocation (CRL)")."""
    certificate_url: str | None = None
    """``certificateDownloadUrl``: the CA certificate, a ``data:`` URI on real tenants."""


URL_MAX = 2048
"""Longest CRL, CA-certificate or data: URL read from Graph (a CA certificate as a data:
URI is ~2-3 KB; longer ones are taken only for data: URIs up to ``DATA_URL_MAX``)."""
DATA_URL_MAX = 64 * 1024


def url_field(value: object) -> str | None:
    """A URL field of Graph as a bounded string; None when absent, empty or too long."""
    if not isinstance(value, str) or not value:
        return None
    limit = DATA_URL_MAX if value[:5].lower() == "data:" else URL_MAX
    return value if len(value) <= limit else None


def decode_ca_page(body: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """Decode one page of the CA list: raw CA objects and the next link."""
    try:
        page = _ca_page_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidResponse(f"CA list is not a collection: {_short(exc)}") from None
    except RecursionError:
        raise InvalidResponse("CA list is nested too deeply") from None
    return page.value, page.next_link


def decode_ca(body: bytes) -> Mapping[str, Any]:
    """Decode one CA object (GET .../cloudCertificationAuthority/{id})."""
    try:
        return _ca_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidResponse(f"CA is not a JSON object: {_short(exc)}") from None
    except RecursionError:
        raise InvalidResponse("CA is nested too deeply") from None


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
        crl_url=url_field(obj.get("certificateRevocationListUrl")),
        certificate_url=url_field(obj.get("certificateDownloadUrl")),
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
