"""Property tests over record decoding and folding (pki_exporter.graph.records + pki_exporter.aggregate.certificates).

Whatever Graph sends inside a collection page (any JSON value in any field, records that
are not objects, unknown fields), decoding never raises and the counts add up to the
records read; anything that is not a collection is an InvalidResponse and nothing else.
The figures are checked against `reference()`, a small count written from docs/design.md
"Metric semantics" alone (not from the exporter's code).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pki_exporter.aggregate.certificates import Fold, LeafAggregate
from pki_exporter.graph.records import (
    InvalidResponse,
    LeafRecord,
    ca_record,
    decode_ca,
    decode_ca_page,
    decode_leaf_page,
    parse_timestamp,
)
from tests.fuzzing import fuzz_settings

SETTINGS = fuzz_settings(250)
LABEL_MAX = 64
KNOWN = ("active", "revoked", "expired")
EPOCH = datetime(1970, 1, 1)

# Fields that, when present, must be null or a string (docs/design.md); deviceId joins them
# where the exporter reads it for its device metrics.
NULL_OR_STRING = ("certificateStatus", "devicePlatform") + (
    ("deviceId",) if "deviceId" in LeafRecord.__struct_fields__ else ()
)


# --------------------------------------------------------------------------- the reference

# docs/design.md: YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM), a missing offset is UTC.
# What the parser accepts beyond that grammar, deliberately and harmlessly: a lower-case
# "t"/"z" (RFC 3339 section 5.6 allows them), a space for the "T", and "+HHMM" offsets.
_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:?[0-9]{2})?"
)


def ref_micros(value: object) -> int | None:
    """An RFC 3339 date-time as integer microseconds since the epoch; None when invalid."""
    if not isinstance(value, str):
        return None
    match = _DATE.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return None
    digits = fraction or ""
    micro = int(digits[:6].ljust(6, "0"))
    if len(digits) > 6 and digits[6] >= "5":  # the seventh digit rounds, 5 and above up
        micro += 1
    try:
        naive += timedelta(microseconds=micro)
    except OverflowError:  # 9999-12-31T23:59:59.9999995 carries out of the calendar
        return None
    shift = 0
    if offset and offset not in "Zz":
        hours, minutes = int(offset[1:3]), int(offset[-2:])
        if hours > 23 or minutes > 59:
            return None
        shift = (-1 if offset[0] == "-" else 1) * (hours * 3600 + minutes * 60) * 10**6
    delta = naive - EPOCH
    return (delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds - shift


def seconds(micros: int) -> float:
    return micros / 10**6


def label(value: object, default: str) -> str:
    return value[:LABEL_MAX] if isinstance(value, str) and value else default


def reference(records: list[Any], now: float, windows: list[int]) -> dict[str, Any]:
    """docs/design.md "Metric semantics", for one CA and one complete refresh."""
    now_dt = datetime.fromtimestamp(now, tz=UTC).replace(tzinfo=None)
    now_us = ((now_dt - EPOCH).days * 86400 + (now_dt - EPOCH).seconds) * 10**6 + (
        now_dt - EPOCH
    ).microseconds
    invalid = 0
    counts: dict[tuple[str, str], int] = {}
    active_ends: list[int] = []
    latest: int | None = None
    for record in records:
        if not isinstance(record, dict):
            invalid += 1
            continue
        if any(
            record.get(name) is not None and not isinstance(record[name], str)
            for name in NULL_OR_STRING
        ):
            invalid += 1
            continue
        start = ref_micros(record.get("validityStartDateTime"))
        end = ref_micros(record.get("validityEndDateTime"))
        if start is None or end is None:
            invalid += 1
            continue
        key = (
            label(record.get("certificateStatus"), "unknown"),
            label(record.get("devicePlatform"), "Unknown"),
        )
        counts[key] = counts.get(key, 0) + 1
        if record.get("certificateStatus") == "active" and end > now_us:
            active_ends.append(end)
        latest = start if latest is None else max(latest, start)
    for platform in {p for _, p in counts}:
        for status in KNOWN:
            counts.setdefault((status, platform), 0)
    return {
        "counts": counts,
        "earliest_expiry": seconds(min(active_ends)) if active_ends else None,
        "expiring": tuple(
            (days, sum(1 for end in active_ends if end <= now_us + days * 86400 * 10**6))
            for days in sorted(set(windows))
        ),
        "latest_issuance": seconds(latest) if latest is not None else None,
        "invalid": invalid,
        "total": sum(counts.values()),
    }


def as_dict(result: LeafAggregate) -> dict[str, Any]:
    return {
        "counts": dict(result.counts),
        "earliest_expiry": result.earliest_expiry,
        "expiring": tuple(result.expiring),
        "latest_issuance": result.latest_issuance,
        "invalid": result.invalid,
        "total": result.total,
    }


# --------------------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)

instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), allow_imaginary=False
)
near_now = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2029, 12, 31))


@st.composite
def date_strings(draw: st.DrawFn) -> str:
    """Well-formed and almost well-formed RFC 3339 strings, as Graph and its quirks send them."""
    moment = draw(st.one_of(near_now, instants))
    sep = draw(st.sampled_from("TTTT t"))
    digits = draw(st.integers(min_value=0, max_value=12))
    fraction = "".join(
        draw(st.lists(st.sampled_from("0123456789"), min_size=digits, max_size=digits))
    )
    if digits == 0 and draw(st.booleans()):
        fraction = None  # no dot at all
    offset = draw(
        st.one_of(
            st.sampled_from(["Z", "Z", "z", "", "+00:00", "-00:00", "+05:30", "-08:00", "+0100"]),
            st.builds(
                lambda sign, h, m, colon: f"{sign}{h:02d}{colon}{m:02d}",
                st.sampled_from("+-"),
                st.integers(0, 25),
                st.integers(0, 61),
                st.sampled_from([":", ":", ""]),
            ),
        )
    )
    fields = [
        f"{moment.year:04d}",
        f"{moment.month:02d}",
        f"{moment.day:02d}",
        f"{moment.hour:02d}",
        f"{moment.minute:02d}",
        f"{moment.second:02d}",
    ]
    if draw(st.integers(0, 5)) == 0:  # a component out of range: month 13, hour 24, ...
        index = draw(st.integers(0, 5))
        fields[index] = f"{draw(st.integers(0, 99)):0{len(fields[index])}d}"
    text = f"{fields[0]}-{fields[1]}-{fields[2]}{sep}{fields[3]}:{fields[4]}:{fields[5]}"
    if fraction is not None:
        text += "." + fraction
    text += offset
    mangle = draw(st.integers(0, 9))
    if mangle == 0:  # a stray character somewhere
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + draw(st.sampled_from([" ", "\n", "x", "-", ":", ".", "Z", "\u0663"]))
            + text[at:]
        )
    elif mangle == 1:  # cut short
        text = text[: draw(st.integers(0, len(text)))]
    return text


def carry_dates(days: int) -> st.SearchStrategy[str]:
    """Dates within ``days`` of a fixed now, so that the expiry windows are really exercised."""
    base = datetime(2026, 11, 26, 12, 0)
    return st.builds(
        lambda d, us, z: (base + timedelta(days=d, microseconds=us)).isoformat() + z,
        st.integers(-days, days),
        st.integers(0, 86400 * 10**6),
        st.sampled_from(["Z", "+00:00", "-08:00", ""]),
    )


dates = st.one_of(date_strings(), carry_dates(120), json_values)
statuses = st.one_of(
    st.sampled_from(
        ["active", "active", "revoked", "expired", "", "unknown", "suspended", "Active"]
    ),
    st.text(min_size=60, max_size=70),
    json_values,
)
platforms = st.one_of(
    st.sampled_from(["iOS", "Android", "windows10AndLater", "", "macOS", "x" * 69]),
    json_values,
)
FIELD_NAMES = ["id", "deviceName", "deviceId", "thumbprint", "keyUsages", "@odata.type", "value"]


@st.composite
def records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values.filter(lambda v: not isinstance(v, dict)))
    record: dict[str, Any] = draw(
        st.dictionaries(
            st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8)), json_values, max_size=3
        )
    )
    fixed = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "certificateStatus": statuses,
                "devicePlatform": platforms,
                "validityStartDateTime": dates,
                "validityEndDateTime": dates,
            },
        )
    )
    record.update(fixed)
    return record


windows_lists = st.lists(st.integers(min_value=0, max_value=400), max_size=4)
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
nows = st.one_of(
    st.just(NOW),
    st.integers(min_value=946684800 * 10**6, max_value=4102444800 * 10**6).map(seconds),
)


def body(items: list[Any], next_link: str | None = None) -> bytes:
    doc: dict[str, Any] = {"value": items}
    if next_link is not None:
        doc["@odata.nextLink"] = next_link
    return json.dumps(doc).encode()


def fold_pages(pages: list[bytes], now: float, windows: list[int]) -> LeafAggregate:
    fold = Fold(now, windows)
    for raw in pages:
        page = decode_leaf_page(raw)
        fold.add(page.records)
        fold.add_invalid(page.invalid)
    return fold.result()


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(items=st.lists(records(), max_size=25), now=nows, windows=windows_lists)
def test_any_records_fold_exactly_like_the_reference(
    items: list[Any], now: float, windows: list[int]
) -> None:
    page = decode_leaf_page(body(items))
    assert len(page.records) + page.invalid == len(items)
    fold = Fold(now, windows)
    fold.add(page.records)
    fold.add_invalid(page.invalid)
    result = fold.result()
    assert sum(result.counts.values()) == result.total
    assert result.total + result.invalid == len(items)
    assert all(len(s) <= LABEL_MAX and len(p) <= LABEL_MAX for s, p in result.counts)
    assert as_dict(result) == reference(items, now, windows)


@SETTINGS
@given(
    items=st.lists(records(), max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=5),
    now=nows,
    windows=windows_lists,
)
def test_pages_fold_like_one_page(
    items: list[Any], cuts: list[int], now: float, windows: list[int]
) -> None:
    bounds = sorted({min(c, len(items)) for c in cuts} | {0, len(items)})
    pages = [body(items[a:b], "https://graph/next") for a, b in itertools.pairwise(bounds)]
    pages.append(body([]))  # an empty last page counts nothing
    assert fold_pages(pages, now, windows) == fold_pages([body(items)], now, windows)


@SETTINGS
@given(value=st.one_of(date_strings(), carry_dates(3650), json_values))
def test_dates_parse_exactly_like_the_reference(value: object) -> None:
    want = ref_micros(value)
    got = parse_timestamp(value)
    assert got == (None if want is None else seconds(want)), value
    # The leaf decoder reads a date field the same way.
    record = {"validityStartDateTime": value, "validityEndDateTime": value}
    page = decode_leaf_page(body([record]))
    assert page.invalid == (1 if want is None else 0)
    if want is not None:
        fold = Fold(NOW, ())
        fold.add(page.records)
        assert fold.result().latest_issuance == seconds(want)


@SETTINGS
@given(doc=json_values, next_link=st.one_of(st.none(), json_values))
def test_a_page_is_a_collection_or_an_invalid_response(doc: Any, next_link: Any) -> None:
    """Only an object with a ``value`` array (and a string or null nextLink) is a page."""
    if isinstance(doc, dict) and next_link is not None:
        doc["@odata.nextLink"] = next_link
    raw = json.dumps(doc).encode()
    collection = (
        isinstance(doc, dict)
        and isinstance(doc.get("value"), list)
        and isinstance(doc.get("@odata.nextLink"), str | None)
    )
    if not collection:
        with pytest.raises(InvalidResponse):
            decode_leaf_page(raw)
        return
    page = decode_leaf_page(raw)
    assert len(page.records) + page.invalid == len(doc["value"])
    assert page.next_link == doc.get("@odata.nextLink")


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_bytes_decode_or_raise_invalid_response(raw: bytes) -> None:
    for decode in (decode_leaf_page, decode_ca_page, decode_ca):
        with contextlib.suppress(InvalidResponse):
            decode(raw)


@SETTINGS
@given(
    obj=st.dictionaries(
        st.one_of(
            st.sampled_from(
                [
                    "id",
                    "displayName",
                    "certificationAuthorityStatus",
                    "cloudCertificationAuthorityType",
                    "certificateKeySize",
                    "cloudCertificationAuthorityHashingAlgorithm",
                    "keyPlatform",
                    "validityEndDateTime",
                ]
            ),
            st.text(max_size=5),
        ),
        st.one_of(json_values, date_strings(), st.text(min_size=60, max_size=80)),
        max_size=10,
    )
)
def test_any_ca_object_gives_bounded_labels(obj: dict[str, Any]) -> None:
    record = ca_record(decode_ca(json.dumps(obj).encode()))
    for name, key in (
        ("certificationAuthorityStatus", record.status),
        ("cloudCertificationAuthorityType", record.type),
        ("certificateKeySize", record.key_size),
        ("cloudCertificationAuthorityHashingAlgorithm", record.hashing_algorithm),
        ("keyPlatform", record.key_platform),
    ):
        assert key == label(obj.get(name), "unknown")
    name = obj.get("displayName")
    assert record.display_name == (name[:LABEL_MAX] if isinstance(name, str) and name else None)
    end = ref_micros(obj.get("validityEndDateTime"))
    assert record.expiry == (None if end is None else seconds(end))


# --------------------------------------------------------------------------- found by fuzzing

VALID = {
    "certificateStatus": "active",
    "devicePlatform": "iOS",
    "validityStartDateTime": "2026-01-01T00:00:00Z",
    "validityEndDateTime": "2027-01-01T00:00:00Z",
}


def test_a_lone_surrogate_costs_its_record_not_the_page() -> None:
    """``"\\ud800"`` is JSON by the grammar (a device name cut inside an emoji); msgspec
    refuses the whole body. Where the exporter does not read the field the record counts;
    where it does, that record alone is invalid."""
    unread = json.dumps({**VALID, "deviceName": "\ud83d"})  # json escapes it as \ud83d
    read = json.dumps({**VALID, "devicePlatform": "Pixel \ud83d"})
    raw = ('{"value": [' + ", ".join([unread, read, json.dumps(VALID)]) + "]}").encode()
    assert b"\\ud83d" in raw
    page = decode_leaf_page(raw)
    assert (len(page.records), page.invalid) == (2, 1)
    assert [r.devicePlatform for r in page.records] == ["iOS", "iOS"]


@pytest.mark.parametrize("depth", [10, 2000, 200_000])
def test_deep_nesting_is_an_invalid_response_not_a_recursion_error(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    raw = ('{"value": [' + json.dumps(VALID)[:-1] + ', "x": ' + nested + "}]}").encode()
    ca = ('{"value": [{"id": "x", "x": ' + nested + "}]}").encode()
    if depth < 100:
        assert decode_leaf_page(raw).records
        assert decode_ca_page(ca)[0]
        return
    with pytest.raises(InvalidResponse, match="nested too deeply"):
        decode_leaf_page(raw)
    with pytest.raises(InvalidResponse, match="nested too deeply"):
        decode_ca_page(ca)
    with pytest.raises(InvalidResponse, match="nested too deeply"):
        decode_ca(('{"x": ' + nested + "}").encode())


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T12:00:00Z\n",  # a regex "$" would take this one
        "\u0662\u0660\u0662\u0666-11-26T12:00:00Z",  # Arabic-Indic digits are not digits here
        "9999-12-31T23:59:59.9999995Z",  # the rounding carries out of the calendar
        "2026-11-26T12:00:00+24:00",
        "2026-11-26T12:00:00+01:60",
    ],
)
def test_date_corners(text: str) -> None:
    assert parse_timestamp(text) is None
    assert ref_micros(text) is None
