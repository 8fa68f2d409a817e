"""Typed decoding of Graph responses.

Leaf pages are the hot path: a large tenant sends hundreds of megabytes of JSON, of which
nine fields per record matter (four for the certificate figures, five for the devices). The msgspec structs below name only those fields, so the
decoder skips the rest without building Python objects for them. A record that does not
fit (wrong type, unreadable date, missing end date) must not sink the page: the page is
then decoded again with every read field taking any JSON value, converted to records in
C a chunk at a time, and the misfits are counted, not raised (docs/performance.md). Once a
record is known to have failed, off the hot path, it is judged field by field for the log
that tells an administrator which field failed and why (`Misfit`, `MisfitTally`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from pki_exporter.runtime.ids import is_guid

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


def _lenient_twin(record: type[msgspec.Struct], extra: tuple[str, ...] = ()) -> Any:
    """A struct with the fields of ``record``, each taking any JSON value: decoding a page
    into it cannot fail on a record, and ``msgspec.convert`` then judges each one against
    ``record`` itself. Built from ``record`` so that a field added there is read here too.
    ``extra`` fields are read as well (``id``: which record failed, for the log)."""
    fields: list[tuple[str, Any, Any]] = [(name, Any, None) for name in extra]
    for info in msgspec.structs.fields(record):
        if info.default_factory is not msgspec.NODEFAULT:
            default = msgspec.field(name=info.encode_name, default_factory=info.default_factory)
        else:
            # A missing required field arrives as None, which the conversion refuses.
            value = None if info.default is msgspec.NODEFAULT else info.default
            default = msgspec.field(name=info.encode_name, default=value)
        fields.append((info.name, Any, default))
    return msgspec.defstruct("_Lenient" + record.__name__, fields, frozen=True, gc=False)


_LenientLeafRecord: Any = _lenient_twin(LeafRecord, extra=("id",))
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
class Misfit:
    """Why one leaf record was left out: the first field that failed (Graph's name, or
    ``record`` when the item is no JSON object) and how, with the record's ``id`` as Graph
    sent it (`MisfitTally` logs it only when it is a GUID). Never a field's value: a device
    name or a user is personal data, a record id is not."""

    field: str
    reason: str
    record_id: str | None = None


@dataclass(frozen=True, slots=True)
class LeafPage:
    """One decoded page: the readable records, how many were not (and why), the next link."""

    records: list[LeafRecord]
    invalid: int
    next_link: str | None
    misfits: tuple[Misfit, ...] = ()
    """One per invalid record, in page order (``len(misfits) == invalid``)."""


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
            records, misfits = _convert(lenient.value)
            return LeafPage(records, len(misfits), lenient.next_link, tuple(misfits))
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


def _convert(items: list[Any]) -> tuple[list[LeafRecord], list[Misfit]]:
    """Lenient items -> LeafRecords and the misfits, in C but for the misfits.

    ``msgspec.convert`` takes a chunk at once and stops at its first misfit, naming the
    index in its error path (``- at `$[12].validityEndDateTime```). The items before it
    passed: they are converted again as one call, the misfit is judged (`judge`), and the
    rest of the chunk goes on. Cheaper than one call per record by the per-call overhead,
    and than one call per page by the work a late misfit throws away. Only the index is
    read from the error; why the record failed is found by `judge`, not in msgspec's words.
    """
    records: list[LeafRecord] = []
    misfits: list[Misfit] = []
    for offset in range(0, len(items), _CHUNK):
        chunk = items[offset : offset + _CHUNK]
        while chunk:
            try:
                records += msgspec.convert(chunk, _RECORDS, from_attributes=True)
                break
            except msgspec.ValidationError as exc:
                found = _AT_INDEX.search(str(exc))
                if found is None:  # an error without an index: judge the items one by one
                    records += _convert_each(chunk, misfits)
                    break
                bad = int(found.group(1))
                if bad:
                    records += _convert_each(chunk[:bad], misfits)
                misfits.append(judge(chunk[bad]))
                chunk = chunk[bad + 1 :]
    return records, misfits


def _convert_each(items: list[Any], misfits: list[Misfit]) -> list[LeafRecord]:
    """Items that should all convert (they passed once): as one call, else one by one
    (a misfit among them is judged into ``misfits``)."""
    try:
        return msgspec.convert(items, _RECORDS, from_attributes=True)
    except msgspec.ValidationError:
        pass
    records = []
    for item in items:
        try:
            records.append(msgspec.convert(item, LeafRecord, from_attributes=True))
        except msgspec.ValidationError:
            misfits.append(judge(item))
    return records


def _optional_string(value: object) -> bool:
    return value is None or isinstance(value, str)


def _converts_to(kind: Any) -> Any:
    """A check that ``value`` converts to ``kind`` the way the decoder converts it: for
    ``str | None``, the same rule in one isinstance (``msgspec.convert`` to a union is
    ten times slower); for anything else, msgspec itself."""
    if kind == (str | None):
        return _optional_string

    def converts(value: object) -> bool:
        try:
            msgspec.convert(value, kind)
        except msgspec.ValidationError:
            return False
        return True

    return converts


_READ_FIELDS = tuple(
    (info.name, info.encode_name, _converts_to(info.type))
    for info in msgspec.structs.fields(LeafRecord)
    if info.type is not Any  # the display fields take anything: never the reason
)
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: a bool is an int
    (int, "number"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type (``null``, ``number``, ``object``...)."""
    if value is None:
        return "null"
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return "object"  # a lenient struct: the record itself


def judge(item: object) -> Misfit:
    """Why ``item`` (a lenient record, a dict from the JSON fallback, or any JSON value the
    page held instead of a record) does not convert to a LeafRecord: the first field, in
    LeafRecord's order, that does not convert on its own, judged by the decoder's own rules
    so that the two agree. Only for records already known to have failed: off the hot path."""
    if isinstance(item, dict):  # the JSON fallback: Graph's names
        raw_id, lenient = item.get("id"), False
    elif isinstance(item, _LenientLeafRecord):
        raw_id, lenient = item.id, True
    else:
        return Misfit("record", f"not an object ({_json_type(item)})")
    record_id = raw_id if isinstance(raw_id, str) else None
    for name, key, fits in _READ_FIELDS:
        if lenient:
            value = getattr(item, name)
        else:  # only the JSON fallback reads lone surrogates into a string
            value = item.get(key)
            if isinstance(value, str) and not _encodable(value):
                return Misfit(key, "a lone UTF-16 surrogate", record_id)
        if not fits(value):
            if value is None:
                reason = "missing or null"
            elif isinstance(value, str):
                reason = "not an RFC 3339 date-time"
            else:
                reason = f"not a string ({_json_type(value)})"
            return Misfit(key, reason, record_id)
    return Misfit("record", "unreadable", record_id)  # no single field: never seen


class MisfitTally:
    """The invalid records of one refresh of a CA, for one log line: how many failed on
    which field and why, and the ids of the first few (bounded whatever the count)."""

    SAMPLE = 5
    """Record ids kept: enough to look a few up in Graph, few enough for one line."""

    __slots__ = ("counts", "record_ids", "total")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.record_ids: list[str] = []
        self.total = 0

    def add(self, misfits: Iterable[Misfit]) -> None:
        for misfit in misfits:
            key = (misfit.field, misfit.reason)
            self.counts[key] = self.counts.get(key, 0) + 1
            self.total += 1
            if (
                len(self.record_ids) < self.SAMPLE
                and misfit.record_id is not None
                and is_guid(misfit.record_id)  # anything else could be anything: not logged
            ):
                self.record_ids.append(misfit.record_id)

    def reasons(self) -> str:
        """``validityEndDateTime missing or null: 2, deviceId not a string (number): 1``,
        the most frequent first (then by field and reason: the same data, the same line)."""
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{field} {reason}: {n}" for (field, reason), n in ranked)


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
    misfits: list[Misfit] = []
    for item in value:
        if not isinstance(item, dict):
            misfits.append(judge(item))
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
            misfits.append(judge(item))
    return LeafPage(records, len(misfits), next_link, tuple(misfits))


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
