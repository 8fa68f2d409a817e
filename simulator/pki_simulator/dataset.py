"""Deterministic generation of CA and leaf-certificate records from a `DatasetSpec`.

Pages are generated on demand, each from its own ``random.Random`` seeded by (seed, tenant,
CA, page): a page can be produced alone, in any order, in any thread, and always comes out
byte for byte the same. Records are written straight to JSON text through a template
because building a dict and encoding it costs twice as much, and a million certificates
must be generated in seconds; the rare quirky record goes through a dict instead.

Alongside the JSON, the generator keeps what it *meant* (status and platform labels, start
and end instants, whether the record is readable) as `PageFacts`. The ground truth is
computed from those facts, never by parsing the JSON back, so that a test comparing it with
a client's own count compares two independent derivations.
"""

from __future__ import annotations

import base64
import bisect
import functools
import json
import random
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

from pki_simulator.pki import CAVersion, ca_name, make_version, path_hex
from pki_simulator.spec import CASpec, DatasetSpec, TenantSpec

DAY = 86400
LABEL_MAX = 64
KNOWN_STATUSES = ("active", "revoked", "expired")
LEAF_ODATA_TYPE = "#microsoft.graph.cloudCertificationAuthorityLeafCertificate"
CA_ODATA_TYPE = "#microsoft.graph.cloudCertificationAuthority"


def status_label(value: str | None) -> str:
    """The ``status`` label the metric semantics give a valid record's status."""
    return value[:LABEL_MAX] if value else "unknown"


def platform_label(value: str | None) -> str:
    """The ``platform`` label the metric semantics give a valid record's platform."""
    return value[:LABEL_MAX] if value else "Unknown"


DISPLAY_MAX = 256
"""Longest device name, user, serial number or thumbprint the drill-down shows."""


def display_value(value: object) -> str | None:
    """A display field of the drill-down as docs/design.md defines it: strings cut to
    DISPLAY_MAX characters, anything else (null, missing, a number) None."""
    return value[:DISPLAY_MAX] if isinstance(value, str) else None


def device_key(value: object) -> str | None:
    """The device a valid record belongs to: its ``deviceId`` when that is a non-empty
    string, else None (the record is "without device")."""
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------------------------
# Date formatting: whole-second UTC dates are by far the most common, so they come from
# two lookup tables instead of strftime.

_TIME_OF_DAY: list[str] = []
_DAYS: dict[int, str] = {}
_tables_lock = threading.Lock()


def _time_of_day_table() -> list[str]:
    if not _TIME_OF_DAY:
        with _tables_lock:
            if not _TIME_OF_DAY:
                # Build the whole table first: extending from a generator would let a
                # reader that skips the lock see a half-filled table (IndexError).
                table = [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(DAY)]
                _TIME_OF_DAY.extend(table)
    return _TIME_OF_DAY


def _day_text(day: int) -> str:
    text = _DAYS[day] = time.strftime("%Y-%m-%d", time.gmtime(day * DAY))
    return text


def format_utc(ts: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` for whole epoch seconds."""
    day, second = divmod(ts, DAY)
    return (_DAYS.get(day) or _day_text(day)) + _time_of_day_table()[second]


def format_offset(dt: datetime, extra_digit: int | None) -> str:
    """RFC 3339 with microseconds (plus a 7th digit, as .NET writes) and ``±HH:MM``."""
    offset = dt.strftime("%z")
    fraction = f".{dt.microsecond:06d}" + ("" if extra_digit is None else str(extra_digit))
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset[:3] + ":" + offset[3:]


# ---------------------------------------------------------------------------------------
# Facts: what the generator meant, for the ground truth.


@dataclass
class PageFacts:
    """Aggregates of one page, independent of "now"."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    invalid: int = 0
    latest_start: float | None = None
    #: end instants of every valid record whose status label is exactly ``active``
    active_ends: array[float] = field(default_factory=lambda: array("d"))
    records: int = 0
    #: valid records whose deviceId is null, missing or empty
    no_device: int = 0


@dataclass(frozen=True)
class CAFacts:
    """Aggregates of a whole CA (all pages), with the active ends sorted for bisection."""

    counts: dict[tuple[str, str], int]
    invalid: int
    latest_start: float | None
    active_ends: array[float]
    records: int
    no_device: int


class DeviceRecord(NamedTuple):
    """A valid record whose status label is exactly ``active`` and that names a device:
    what the per-device ground truth and the drill-down rows are computed from."""

    device_id: str
    platform: str
    end: float
    device_name: str | None
    user: str | None
    serial_number: str | None
    thumbprint: str | None


class RevokedRecord(NamedTuple):
    """A certificate the CA revoked (its original status was ``revoked``): what its CRL
    lists and what the revocation ground truth compares with the CRL."""

    #: the serial number as an integer (the CRL entry)
    serial: int
    #: revocation instant, whole epoch seconds (the CRL entry's revocationDate)
    revoked_at: int
    #: the CA version that issued it (the CRL it names)
    version: int
    #: Graph shows it revoked and comparable: a valid record whose status is exactly
    #: ``revoked``, with a hex ``serialNumber`` and a ``revocationDateTime``
    in_graph: bool
    #: ``validityEndDateTime`` as served (epoch seconds)
    end: float
    #: display fields as served (None when not a string)
    serial_number: str | None
    thumbprint: str | None
    device_id: str | None
    #: no real-tenant quirk on the record (``crl_missing`` picks only these)
    clean: bool


@dataclass(frozen=True)
class RevocationFacts:
    """Every revoked certificate of a CA, and the latest end of the valid records of each
    CA version (a version's CRL is named while one of its certificates is unexpired)."""

    revoked: tuple[RevokedRecord, ...]
    latest_end: dict[int, float]


@dataclass
class _Fact:
    valid: bool
    status: str
    platform: str
    start: float
    end: float
    device: str | None = None


@dataclass(frozen=True)
class GeneratedPage:
    """The JSON text of a page's records (comma-joined, no brackets) and its facts."""

    text: str
    facts: PageFacts
    count: int
    #: with ``generate_page(page, devices=True)``: the page's `DeviceRecord`s
    devices: list[DeviceRecord] | None = None
    #: with ``generate_page(page, revocations=True)``: the page's `RevokedRecord`s
    revoked: list[RevokedRecord] | None = None
    #: with ``revocations=True``: version -> latest end of the page's valid records
    latest_end: dict[int, float] | None = None


def _hex_serial(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        int(value, 16)
    except ValueError:
        return False
    return True


def _quirk_revocation(
    value: object, fact: _Fact, serial: str, revoked_ts: int, version: int
) -> RevokedRecord:
    """A revoked certificate whose record carries a quirk: on the CRL all the same (the
    CA revoked it), counted by the ground truth only if Graph still shows it revoked and
    comparable."""
    record = value if isinstance(value, dict) else {}
    in_graph = (
        fact.valid
        and fact.status == "revoked"
        and _hex_serial(record.get("serialNumber"))
        and isinstance(record.get("revocationDateTime"), str)
        and bool(record.get("revocationDateTime"))
    )
    return RevokedRecord(
        int(serial, 16),
        revoked_ts,
        version,
        in_graph,
        fact.end,
        display_value(record.get("serialNumber")),
        display_value(record.get("thumbprint")),
        fact.device,
        False,
    )


# ---------------------------------------------------------------------------------------
# Quirks seen on real tenants. Each takes the record as a dict (decoded from the normal
# template output) and the facts, changes both consistently, and returns the JSON value
# to serve in place of the record.

_Quirk = Callable[[dict[str, Any], _Fact, random.Random, "CAData"], object]

_OFFSETS = (
    timezone(timedelta(hours=-8)),
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=1)),
    timezone(timedelta(hours=-3, minutes=-30)),
)
_UNLISTED_PLATFORMS = ("ChromeOS", "Linux", "visionOS", "HoloLens", "windows10andlater")
_UNLISTED_STATUSES = ("suspended", "pendingRevocation", "onHold")


def _q_platform_null(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["devicePlatform"] = None
    f.platform = platform_label(None)
    return rec


def _q_platform_empty(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["devicePlatform"] = ""
    f.platform = platform_label("")
    return rec


def _q_platform_missing(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    del rec["devicePlatform"]
    f.platform = platform_label(None)
    return rec


def _q_platform_unlisted(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    value = rng.choice(_UNLISTED_PLATFORMS)
    rec["devicePlatform"] = value
    f.platform = platform_label(value)
    return rec


def _q_platform_long(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    value = "Windows10AndLaterHolographicForBusinessEnterpriseMultiSessionEdition" + str(
        rng.randrange(10)
    )
    rec["devicePlatform"] = value
    f.platform = platform_label(value)
    return rec


def _q_status_null(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["certificateStatus"] = None
    f.status = status_label(None)
    return rec


def _q_status_missing(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    del rec["certificateStatus"]
    f.status = status_label(None)
    return rec


def _q_status_empty(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["certificateStatus"] = ""
    f.status = status_label("")
    return rec


def _q_status_unlisted(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    value = rng.choice(_UNLISTED_STATUSES)
    rec["certificateStatus"] = value
    f.status = status_label(value)
    return rec


def _q_active_past_end(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    end = ca.anchor_ts - 3600 - rng.randrange(30 * DAY)
    start = end - ca.validity
    rec["certificateStatus"] = "active"
    rec["revocationDateTime"] = None
    rec["validityStartDateTime"] = format_utc(start)
    rec["validityEndDateTime"] = format_utc(end)
    f.status, f.start, f.end = "active", float(start), float(end)
    return rec


def _q_fraction7_offset(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    tz = rng.choice(_OFFSETS)
    start = datetime.fromtimestamp(int(f.start), UTC).replace(microsecond=rng.randrange(10**6))
    end = datetime.fromtimestamp(int(f.end), UTC).replace(microsecond=rng.randrange(10**6))
    start_digit, end_digit = rng.randrange(10), rng.randrange(10)
    rec["validityStartDateTime"] = format_offset(start.astimezone(tz), start_digit)
    rec["validityEndDateTime"] = format_offset(end.astimezone(tz), end_digit)
    # The 7th digit rounds to the microsecond (5 and above round up), as docs/design.md says.
    f.start = (start + timedelta(microseconds=start_digit >= 5)).timestamp()
    f.end = (end + timedelta(microseconds=end_digit >= 5)).timestamp()
    return rec


def _q_fraction_utc(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    millis = rng.randrange(1000)
    start = int(f.start)
    rec["validityStartDateTime"] = format_utc(start)[:-1] + f".{millis:03d}Z"
    f.start = datetime.fromtimestamp(start, UTC).replace(microsecond=millis * 1000).timestamp()
    return rec


def _q_no_offset(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    # RFC 3339 requires an offset; Graph has been seen without one. Read as UTC.
    rec["validityEndDateTime"] = format_utc(int(f.end))[:-1]
    return rec


def _q_usages_double_encoded(
    rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData
) -> object:
    rec["keyUsages"] = [json.dumps(rec["keyUsages"], separators=(",", ":"))]
    rec["extendedKeyUsages"] = [json.dumps(rec["extendedKeyUsages"], separators=(",", ":"))]
    return rec


def _q_empty_strings(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["ocspResponderUri"] = ""
    rec["revocationDateTime"] = rec["revocationDateTime"] or ""
    rec["deviceName"] = ""
    return rec


def _q_date_out_of_range(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["validityEndDateTime"] = "2025-13-45T99:00:00Z"
    f.valid = False
    return rec


def _q_date_garbage(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["validityStartDateTime"] = "not a date"
    f.valid = False
    return rec


def _q_date_number(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["validityStartDateTime"] = int(f.start)
    f.valid = False
    return rec


def _q_end_null(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["validityEndDateTime"] = None
    f.valid = False
    return rec


def _q_end_missing(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    del rec["validityEndDateTime"]
    f.valid = False
    return rec


def _q_platform_number(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["devicePlatform"] = 7
    f.valid = False
    return rec


def _q_status_number(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["certificateStatus"] = 1
    f.valid = False
    return rec


def _q_not_an_object(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    f.valid = False
    return rng.choice((None, "cloudCertificationAuthorityLeafCertificate", 0))


def _q_device_null(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["deviceId"] = None
    f.device = None
    return rec


def _q_device_empty(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    rec["deviceId"] = ""
    f.device = None
    return rec


def _q_device_missing(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    del rec["deviceId"]
    f.device = None
    return rec


def _q_device_number(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    # A deviceId that is neither null nor a string: the record is invalid (docs/design.md).
    rec["deviceId"] = rng.randrange(1, 10**6)
    f.valid = False
    return rec


def _q_device_name_number(rec: dict[str, Any], f: _Fact, rng: random.Random, ca: CAData) -> object:
    # Display fields never make a record invalid: the drill-down shows them empty.
    rec["deviceName"] = rng.randrange(10**6)
    rec["serialNumber"] = None
    return rec


#: Every quirk, in the order they are dealt out (valid and invalid ones interleaved so that
#: a small data set still gets both kinds).
QUIRKS: dict[str, _Quirk] = {
    "platform_null": _q_platform_null,
    "date_out_of_range": _q_date_out_of_range,
    "fraction7_offset": _q_fraction7_offset,
    "platform_empty": _q_platform_empty,
    "date_garbage": _q_date_garbage,
    "usages_double_encoded": _q_usages_double_encoded,
    "platform_missing": _q_platform_missing,
    "date_number": _q_date_number,
    "active_past_end": _q_active_past_end,
    "status_unlisted": _q_status_unlisted,
    "end_null": _q_end_null,
    "platform_unlisted": _q_platform_unlisted,
    "empty_strings": _q_empty_strings,
    "platform_number": _q_platform_number,
    "status_null": _q_status_null,
    "fraction_utc": _q_fraction_utc,
    "end_missing": _q_end_missing,
    "platform_long": _q_platform_long,
    "status_missing": _q_status_missing,
    "no_offset": _q_no_offset,
    "status_number": _q_status_number,
    "status_empty": _q_status_empty,
    "not_an_object": _q_not_an_object,
    "device_null": _q_device_null,
    "device_number": _q_device_number,
    "device_empty": _q_device_empty,
    "device_name_number": _q_device_name_number,
    "device_missing": _q_device_missing,
}
QUIRK_NAMES: tuple[str, ...] = tuple(QUIRKS)

# ---------------------------------------------------------------------------------------

_DEVICE_PREFIX = {
    "Windows10AndLater": "DESKTOP-",
    "Windows81AndLater": "PC-",
    "WindowsPhone81": "WP-",
    "iOS": "iPhone-",
    "MacOS": "MacBook-",
    "Android": "Android-",
    "AndroidForWork": "Pixel-",
    "AndroidWorkProfile": "Galaxy-",
    "AndroidAOSP": "Quest-",
}
_FIRST = (
    "alex", "maria", "li", "sam", "fatima", "jonas", "aiko", "omar", "ines", "noah",
    "emma", "raj", "chloe", "diego", "hana", "ivan", "lea", "kofi", "mia", "tom",
)  # fmt: skip
_LAST = (
    "smith", "garcia", "chen", "muller", "kowalski", "tanaka", "haddad", "silva", "dubois",
    "okafor", "novak", "jensen", "rossi", "kim", "patel", "larsen", "moreau", "cohen",
)  # fmt: skip
_USERS_PER_TENANT = 1500
RENEWAL_THRESHOLD = 0.2
"""Intune's default renewal threshold: a device renews its certificate in the last 20 % of
its validity, so a device that renewed holds two active certificates for a while."""


def _hex_guid(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _guid4(rng: random.Random) -> str:
    """A random (version 4) GUID, as Entra ID hands out for tenants, apps and CAs."""
    value = rng.getrandbits(128) & ~(0xF << 76) | (0x4 << 76)
    value = value & ~(0x3 << 62) | (0x2 << 62)
    return _hex_guid(value)


def _js(value: str | None) -> str:
    return json.dumps(value, ensure_ascii=False)


def _cumulative(shares: tuple[tuple[str | None, float], ...]) -> list[float]:
    total = sum(w for _, w in shares)
    acc, out = 0.0, []
    for _, weight in shares:
        acc += weight / total
        out.append(acc)
    out[-1] = 1.0
    return out


@functools.lru_cache(maxsize=16)
def _people(dataset_seed: int, tenant_id: str, domain: str) -> tuple[tuple[str, str, str], ...]:
    """A tenant's users: (userId, userPrincipalName as JSON text, userPrincipalName).
    Made once per process for the same seed and tenant (a test session builds the same
    few tenants again and again; 1,500 users take 10 ms of CPU and 0.5 MB, so 16 kept)."""
    rng = random.Random(f"{dataset_seed}|{tenant_id}|people")
    users = []
    for n in range(_USERS_PER_TENANT):
        upn = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{n}@{domain}"
        users.append((_hex_guid(rng.getrandbits(128)), _js(upn), upn))
    return tuple(users)


class TenantData:
    """A tenant of the data set: its CAs and the users and devices certificates belong to."""

    def __init__(self, dataset_seed: int, index: int, spec: TenantSpec, anchor_ts: int) -> None:
        self.spec = spec
        self.index = index
        #: (userId, userPrincipalName as JSON text, userPrincipalName)
        self.users = _people(dataset_seed, spec.tenant_id, spec.user_domain)
        self.cas: tuple[CAData, ...] = ()
        self.anchor_ts = anchor_ts

    def ca(self, ca_id: str) -> CAData | None:
        wanted = ca_id.lower()
        for ca in self.cas:
            if ca.spec.id.lower() == wanted:
                return ca
        return None


class CAData:
    """One CA of the data set: generates its CA record and any page of its leaves."""

    def __init__(
        self,
        dataset_seed: int,
        tenant: TenantData,
        index: int,
        spec: CASpec,
        quirk_offset: int,
        cdn_base: str = "http://127.0.0.1",
    ) -> None:
        self.spec = spec
        self.cdn_base = cdn_base
        self.tenant = tenant
        self.index = index
        self.anchor_ts = tenant.anchor_ts
        self.validity = spec.certificate_validity_days * DAY
        self._seed = f"{dataset_seed}|{tenant.spec.tenant_id}|{spec.id}"
        self.page_sizes: tuple[int, ...] = spec.pages
        starts, acc = [], 0
        for size in self.page_sizes:
            starts.append(acc)
            acc += size
        self.page_starts: tuple[int, ...] = tuple(starts)
        self.quirk_count = round(spec.certificates * spec.quirk_share)
        picked = sorted(
            random.Random(self._seed + "|quirks").sample(range(spec.certificates), self.quirk_count)
        )
        self.quirks: dict[int, str] = {
            position: QUIRK_NAMES[(quirk_offset + n) % len(QUIRK_NAMES)]
            for n, position in enumerate(picked)
        }
        self.common_name = spec.common_name or spec.display_name
        org = tenant.spec.name.capitalize()
        self.issuer_common_name = spec.issuer_common_name or (
            self.common_name if spec.type == "rootCertificationAuthority" else f"{org} Root CA"
        )
        self.organization = org
        #: the version numbers of the CA, oldest first: one, or two once renewed (the
        #: current version began at the CA's ``validityStartDateTime``)
        current = max(2, spec.version_number) if spec.renewed else spec.version_number
        self.version_numbers: tuple[int, ...] = (
            (current - 1, current) if spec.renewed else (current,)
        )
        self.current_version = current
        #: leaves issued before this instant belong to the previous version (renewed CAs)
        self.renewal_ts: int | None = self.valid_from_ts if spec.renewed else None
        folder = path_hex(self._seed)
        self.crl_urls: dict[int, str] = {
            n: f"{cdn_base}/centralus/crls/{folder}/{spec.id}_v{n}/current.crl"
            for n in self.version_numbers
        }
        self.cacert_urls: dict[int, str] = {
            n: f"{cdn_base}/centralus/cacerts/{folder}/{spec.id}_v{n}/cert.cer"
            for n in self.version_numbers
        }
        self.crl_url = self.crl_urls[current]
        self.aia_url = self.cacert_urls[current]
        self.issuer_name = f"CN={self.common_name}, O={org}, C=US"
        self._versions: dict[int, CAVersion] | None = None
        self._revocations: RevocationFacts | None = None
        self._status = [
            (_js(value), status_label(value), value == "active") for value, _ in spec.status_shares
        ]
        self._status_cum = _cumulative(spec.status_shares)
        self._active_status = next((s for s in self._status if s[2]), None)
        self._platforms = [
            (_js(value), platform_label(value), _DEVICE_PREFIX.get(value or "", "DEVICE-"))
            for value, _ in spec.platform_shares
        ]
        self.renewal_window = int(self.validity * RENEWAL_THRESHOLD)
        self._platform_cum = _cumulative(spec.platform_shares)
        self._templates = {n: self._make_template(n) for n in self.version_numbers}
        self._page_facts: list[PageFacts | None] = [None] * len(self.page_sizes)
        self._facts: CAFacts | None = None
        self._device_records: list[DeviceRecord] | None = None
        self._facts_lock = threading.Lock()
        self._record: dict[str, Any] | None = None

    def _make_template(self, version: int) -> str:
        def lit(value: str) -> str:
            return _js(value).replace("%", "%%")

        return (
            '{"@odata.type":"' + LEAF_ODATA_TYPE + '","id":"%s-%s-%s-%s-%s","subjectName":"CN=%s,'
            '"issuerId":' + lit(self.spec.id) + ',"issuerName":' + lit(self.issuer_name) + ","
            '"certificateStatus":%s,"validityStartDateTime":"%s","validityEndDateTime":"%s",'
            '"crlDistributionPointUrl":' + lit(self.crl_urls[version]) + ","
            '"certificationAuthorityIssuerUri":' + lit(self.cacert_urls[version]) + ","
            '"ocspResponderUri":null,"thumbprint":"%s","serialNumber":"%s",'
            '"revocationDateTime":%s,"deviceName":%s,"userPrincipalName":%s,'
            '"deviceId":%s,"userId":"%s","devicePlatform":%s,'
            '"keyUsages":["KeyEncipherment","DigitalSignature"],'
            '"extendedKeyUsages":["1.3.6.1.5.5.7.3.2"],'
            f'"certificationAuthorityVersionNumber":{version}}}'
        )

    @property
    def pages(self) -> int:
        return len(self.page_sizes)

    def generate_page(
        self, page: int, *, devices: bool = False, revocations: bool = False
    ) -> GeneratedPage:
        """Records of one page (0-based), the same every time for the same spec.

        With ``devices``, the page's `DeviceRecord`s come along (for the per-device ground
        truth; they are not kept, so that serving a million records stays cheap); with
        ``revocations``, its `RevokedRecord`s and each version's latest end (for the CRLs).
        """
        count = self.page_sizes[page]
        first = self.page_starts[page]
        rng = random.Random(f"{self._seed}|page|{page}")
        rnd, bits = rng.random, rng.getrandbits
        pick = bisect.bisect
        tod, days = _time_of_day_table(), _DAYS
        current_version = self.current_version
        template = self._templates[current_version]
        renewal = self.renewal_ts
        if renewal is not None:
            old_version = self.version_numbers[0]
            old_template = self._templates[old_version]
        revoked: list[RevokedRecord] | None = [] if revocations else None
        latest_end: dict[int, float] | None = {} if revocations else None
        statuses, status_cum = self._status, self._status_cum
        active_status = self._active_status
        platforms = self._platforms
        platform_cum = self._platform_cum
        users = self.tenant.users
        n_users = len(users)
        quirks = self.quirks
        anchor, validity = self.anchor_ts, self.validity
        broken = self.spec.broken_renewal_share
        renewed = self.spec.renewed_share if active_status is not None else 0.0
        no_device = self.spec.no_device_share
        renewal_window = self.renewal_window
        past_span = 2 * 365 * DAY
        facts = PageFacts(records=count)
        counts = facts.counts
        ends = facts.active_ends
        device_records: list[DeviceRecord] | None = [] if devices else None
        latest = float("-inf")
        out: list[str] = []
        append = out.append
        #: the device, user and platform of an active certificate to renew in the next record
        renewing: tuple[Any, ...] | None = None
        for position in range(first, first + count):
            h = f"{bits(544):0136x}"
            revocation = "null"
            revoked_ts = 0
            if renewing is not None:
                # A device that renewed: its new certificate, issued inside the old one's
                # renewal window (and before the anchor), ends about a year later.
                (
                    old_end,
                    platform_json,
                    p_label,
                    device_json,
                    device_id,
                    name_json,
                    device_name,
                    user,
                ) = renewing
                renewing = None
                assert active_status is not None
                status_json, s_label, is_active = active_status
                earliest = old_end - renewal_window
                start = earliest + int(rnd() * (anchor - earliest))
                end = start + validity
            else:
                status_json, s_label, is_active = statuses[pick(status_cum, rnd())]
                platform_json, p_label, prefix = platforms[pick(platform_cum, rnd())]
                broken_one = False
                if is_active or (s_label not in {"revoked", "expired"}):
                    if is_active and broken and rnd() < broken:
                        end = anchor + 1 + int(rnd() * (7 * DAY - 1))
                        start = end - validity
                        broken_one = True
                    else:
                        start = anchor - int(rnd() * validity)
                        end = start + validity
                elif s_label == "expired":
                    end = anchor - 1 - int(rnd() * past_span)
                    start = end - validity
                else:  # revoked
                    start = anchor - int(rnd() * (validity + 365 * DAY))
                    end = start + validity
                    revoked_ts = start + int(rnd() * (min(end, anchor) - start))
                    revocation = '"' + format_utc(revoked_ts) + '"'
                user = users[int(rnd() * n_users)]
                if no_device and rnd() < no_device:
                    device_json = name_json = "null"
                    device_id = device_name = None
                else:
                    device_id = f"{h[104:112]}-{h[112:116]}-{h[116:120]}-{h[120:124]}-{h[124:136]}"
                    device_json = '"' + device_id + '"'
                    device_name = prefix + h[104:111].upper()
                    name_json = '"' + device_name + '"'
                if (
                    renewed
                    and is_active
                    and not broken_one
                    and device_id is not None
                    and anchor < end <= anchor + renewal_window
                    and rnd() < renewed
                ):
                    renewing = (
                        end,
                        platform_json,
                        p_label,
                        device_json,
                        device_id,
                        name_json,
                        device_name,
                        user,
                    )
            user_id, upn_json, upn = user
            subject = upn_json if device_name is None or rnd() < 0.7 else name_json
            d, sec = divmod(start, DAY)
            start_text = (days.get(d) or _day_text(d)) + tod[sec]
            d, sec = divmod(end, DAY)
            end_text = (days.get(d) or _day_text(d)) + tod[sec]
            upper = h[32:104].upper()
            # Graph writes serial numbers as hex text: mostly upper case, some lower case,
            # some with leading zeros, so that only an integer comparison is right.
            serial = upper[40:]
            variant = h[103]
            if variant == "0":
                serial = h[72:104]
            elif variant == "1":
                serial = "00" + serial[2:]
            version, text_template = current_version, template
            if renewal is not None and start < renewal:
                version, text_template = old_version, old_template
            text = text_template % (
                h[:8],
                h[8:12],
                h[12:16],
                h[16:20],
                h[20:32],
                subject[1:],
                status_json,
                start_text,
                end_text,
                upper[:40],
                serial,
                revocation,
                name_json,
                upn_json,
                device_json,
                user_id,
                platform_json,
            )
            quirk = quirks.get(position)
            if quirk is None:
                key = (s_label, p_label)
                counts[key] = counts.get(key, 0) + 1
                latest = max(latest, start)
                if device_id is None:
                    facts.no_device += 1
                if is_active:
                    ends.append(end)
                    if device_records is not None and device_id is not None:
                        device_records.append(
                            DeviceRecord(
                                device_id,
                                p_label,
                                float(end),
                                device_name,
                                upn,
                                serial,
                                upper[:40],
                            )
                        )
                if latest_end is not None:
                    if end > latest_end.get(version, float("-inf")):
                        latest_end[version] = float(end)
                    if revoked is not None and s_label == "revoked":
                        revoked.append(
                            RevokedRecord(
                                int(serial, 16),
                                revoked_ts,
                                version,
                                True,
                                float(end),
                                serial,
                                upper[:40],
                                device_id,
                                True,
                            )
                        )
            else:
                fact = _Fact(True, s_label, p_label, float(start), float(end), device_id)
                value = QUIRKS[quirk](json.loads(text), fact, rng, self)
                text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
                if not fact.valid:
                    facts.invalid += 1
                else:
                    key = (fact.status, fact.platform)
                    counts[key] = counts.get(key, 0) + 1
                    latest = max(latest, fact.start)
                    if fact.device is None:
                        facts.no_device += 1
                    if fact.status == "active":
                        ends.append(fact.end)
                        if device_records is not None and fact.device is not None:
                            assert isinstance(value, dict)
                            device_records.append(
                                DeviceRecord(
                                    fact.device,
                                    fact.platform,
                                    fact.end,
                                    display_value(value.get("deviceName")),
                                    display_value(value.get("userPrincipalName")),
                                    display_value(value.get("serialNumber")),
                                    display_value(value.get("thumbprint")),
                                )
                            )
                if (
                    latest_end is not None
                    and fact.valid
                    and fact.end > latest_end.get(version, float("-inf"))
                ):
                    latest_end[version] = fact.end
                if revoked is not None and s_label == "revoked":
                    revoked.append(_quirk_revocation(value, fact, serial, revoked_ts, version))
            append(text)
        facts.latest_start = None if latest == float("-inf") else float(latest)
        self._page_facts[page] = facts
        return GeneratedPage(",".join(out), facts, count, device_records, revoked, latest_end)

    def page_facts(self, page: int) -> PageFacts:
        known = self._page_facts[page]
        return known if known is not None else self.generate_page(page).facts

    def facts(self) -> CAFacts:
        """Aggregates over every page (generating those not yet generated), cached."""
        if self._facts is None:
            with self._facts_lock:
                if self._facts is None:
                    counts: dict[tuple[str, str], int] = {}
                    invalid = records = no_device = 0
                    latest: float | None = None
                    ends: list[float] = []
                    for page in range(self.pages):
                        pf = self.page_facts(page)
                        for key, n in pf.counts.items():
                            counts[key] = counts.get(key, 0) + n
                        invalid += pf.invalid
                        records += pf.records
                        no_device += pf.no_device
                        if pf.latest_start is not None and (
                            latest is None or pf.latest_start > latest
                        ):
                            latest = pf.latest_start
                        ends.extend(pf.active_ends)
                    ends.sort()
                    self._facts = CAFacts(
                        counts, invalid, latest, array("d", ends), records, no_device
                    )
        return self._facts

    def device_records(self) -> list[DeviceRecord]:
        """Every `DeviceRecord` of the CA (pages generated again; cached): the per-device
        ground truth and the drill-down rows come from these."""
        if self._device_records is None:
            with self._facts_lock:
                if self._device_records is None:
                    found: list[DeviceRecord] = []
                    for page in range(self.pages):
                        generated = self.generate_page(page, devices=True)
                        assert generated.devices is not None
                        found.extend(generated.devices)
                    self._device_records = found
        return self._device_records

    def revocations(self) -> RevocationFacts:
        """Every certificate the CA revoked, in page order, and each version's latest end
        (pages generated again; cached): the CRLs and their ground truth come from these."""
        if self._revocations is None:
            with self._facts_lock:
                if self._revocations is None:
                    found: list[RevokedRecord] = []
                    latest: dict[int, float] = {}
                    for page in range(self.pages):
                        generated = self.generate_page(page, revocations=True)
                        assert generated.revoked is not None and generated.latest_end is not None
                        found.extend(generated.revoked)
                        for version, end in generated.latest_end.items():
                            latest[version] = max(end, latest.get(version, end))
                    self._revocations = RevocationFacts(tuple(found), latest)
        return self._revocations

    # --- key material -------------------------------------------------------------------

    def versions(self) -> dict[int, CAVersion]:
        """Key and certificate of each version (made on first use, then kept)."""
        if self._versions is None:
            spec = self.spec
            subject = ca_name(self.common_name, self.organization)
            issuer = ca_name(self.issuer_common_name, self.organization)
            made: dict[int, CAVersion] = {}
            for number in self.version_numbers:
                not_before, not_after = self.valid_from_ts, self.valid_until_ts
                if number != self.current_version:
                    # renewed at half its life: valid as long again after the renewal
                    half = (self.valid_until_ts - self.valid_from_ts) // 2
                    not_before, not_after = self.valid_from_ts - half, self.valid_from_ts + half
                made[number] = make_version(
                    seed=self._seed,
                    ca_id=spec.id,
                    number=number,
                    subject=subject,
                    issuer=issuer,
                    not_before=not_before,
                    not_after=not_after,
                    key_size=spec.key_size,
                    hashing_algorithm=spec.hashing_algorithm,
                )
            self._versions = made
        return self._versions

    # --- the CA resource ----------------------------------------------------------------

    @property
    def valid_from_ts(self) -> int:
        return self.anchor_ts + int(self.spec.valid_from_days * DAY)

    @property
    def valid_until_ts(self) -> int:
        return self.anchor_ts + int(self.spec.valid_until_days * DAY)

    def record(self) -> dict[str, Any]:
        """The CA resource as Graph returns it with ``include-unknown-enum-members``."""
        if self._record is None:
            spec = self.spec
            current = self.versions()[self.current_version]
            der, thumbprint, serial = current.der, current.thumbprint, current.serial
            tid = self.tenant.spec.tenant_id
            created = format_utc(self.valid_from_ts - 3600)
            self._record = {
                "@odata.type": CA_ODATA_TYPE,
                "id": spec.id,
                "displayName": spec.display_name,
                "description": f"Simulated Cloud PKI CA of {self.tenant.spec.name}",
                "scepServerUrl": (
                    "https://simulated.manage.microsoft.com/TrafficGateway/"
                    f"PassThroughRoutingService/CloudPki/CloudPkiService/Scep/{tid}/{spec.id}"
                    if spec.type != "rootCertificationAuthority"
                    else None
                ),
                "certificateRevocationListUrl": self.crl_url,
                "certificationAuthorityIssuerUri": self.aia_url,
                "ocspResponderUri": "",
                "subjectName": f"CN={self.common_name}, O={self.organization}, C=US",
                "issuerCommonName": self.issuer_common_name,
                "commonName": self.common_name,
                "organizationName": self.tenant.spec.name.capitalize(),
                "organizationUnit": None,
                "countryName": "US",
                "stateName": None,
                "localityName": None,
                "cloudCertificationAuthorityType": spec.type,
                "certificationAuthorityStatus": spec.status,
                "validityPeriodInYears": max(
                    1, round((spec.valid_until_days - spec.valid_from_days) / 365)
                ),
                "validityStartDateTime": format_utc(self.valid_from_ts),
                "validityEndDateTime": format_utc(self.valid_until_ts),
                "certificateKeySize": spec.key_size,
                "cloudCertificationAuthorityHashingAlgorithm": spec.hashing_algorithm,
                "keyPlatform": spec.key_platform,
                "thumbprint": thumbprint,
                "serialNumber": serial,
                "certificateDownloadUrl": "data:application/x-x509-ca-cert;base64,"
                + base64.b64encode(der).decode("ascii"),
                "rootCertificateCommonName": self.issuer_common_name,
                "certificationAuthorityIssuerId": None,
                "extendedKeyUsages": [
                    {"name": "Client Authentication", "objectIdentifier": "1.3.6.1.5.5.7.3.2"}
                ],
                "createdDateTime": created,
                "lastModifiedDateTime": created,
                "roleScopeTagIds": ["0"],
                "versionNumber": self.current_version,
                "eTag": f'"{self.current_version}"',
            }
        return self._record


class Dataset:
    """A `DatasetSpec` made servable: tenants and CAs by id, pages on demand."""

    def __init__(self, spec: DatasetSpec, cdn_base: str = "http://127.0.0.1") -> None:
        self.spec = spec
        #: ``http://host:port`` of the CDN listener, the root of every CRL and CA URL
        self.cdn_base = cdn_base
        self.anchor_ts = int(spec.anchor.timestamp())
        tenants: list[TenantData] = []
        quirk_offset = 0
        for t_index, t_spec in enumerate(spec.tenants):
            tenant = TenantData(spec.seed, t_index, t_spec, self.anchor_ts)
            cas = []
            for c_index, c_spec in enumerate(t_spec.cas):
                ca = CAData(spec.seed, tenant, c_index, c_spec, quirk_offset, cdn_base)
                quirk_offset += ca.quirk_count
                cas.append(ca)
            tenant.cas = tuple(cas)
            tenants.append(tenant)
        self.tenants: tuple[TenantData, ...] = tuple(tenants)

    def tenant(self, tenant_id: str) -> TenantData | None:
        wanted = tenant_id.lower()
        for tenant in self.tenants:
            if tenant.spec.tenant_id.lower() == wanted:
                return tenant
        return None

    def all_cas(self) -> list[CAData]:
        return [ca for tenant in self.tenants for ca in tenant.cas]

    @property
    def certificates(self) -> int:
        return sum(ca.spec.certificates for ca in self.all_cas())


# ---------------------------------------------------------------------------------------
# Convenience specs.

_TENANT_NAMES = (
    "contoso", "fabrikam", "northwind", "adatum", "litware", "tailspin", "woodgrove", "wingtip",
)  # fmt: skip

_CA_PROFILES: tuple[dict[str, Any], ...] = (
    # a healthy issuing CA
    {"type": "issuingCertificationAuthority", "key_size": "rsa2048", "hashing_algorithm":
     "sha256", "key_platform": "software", "status": "active", "valid_from_days": -400.0,
     "valid_until_days": 1425.0},
    # an HSM-backed CA nearing its own end of life
    {"type": "issuingCertificationAuthority", "key_size": "rsa4096", "hashing_algorithm":
     "sha384", "key_platform": "hardwareSecurityModule", "status": "active",
     "valid_from_days": -1765.0, "valid_until_days": 60.0},
    # an expired CA under an external root, with a null key platform
    {"type": "issuingCertificationAuthorityWithExternalRoot", "key_size": "eCP384",
     "hashing_algorithm": "sha512", "key_platform": None, "status": "expired",
     "valid_from_days": -1830.0, "valid_until_days": -5.0},
    # a paused CA renewed 90 days ago: two versions, two CRLs
    {"type": "issuingCertificationAuthority", "key_size": "rsa3072", "hashing_algorithm":
     "sha256", "key_platform": "software", "status": "paused", "valid_from_days": -90.0,
     "valid_until_days": 3560.0, "renewed": True},
)  # fmt: skip


def generate_spec(
    seed: int = 1,
    tenants: int = 1,
    cas: int = 3,
    certificates: int = 1000,
    anchor: datetime | None = None,
    *,
    page_size: int = 1000,
    ca_page_size: int = 100,
    token_lifetime: int = 3600,
    quirk_share: float = 0.02,
    broken_renewal_share: float = 0.0,
    renewed_share: float = 0.8,
    no_device_share: float = 0.01,
) -> DatasetSpec:
    """A realistic data set: ``tenants`` x ``cas`` CAs of ``certificates`` leaves each."""
    if anchor is None:
        anchor = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(f"{seed}|spec")
    tenant_specs = []
    for t in range(tenants):
        name = _TENANT_NAMES[t % len(_TENANT_NAMES)] + (
            str(t // len(_TENANT_NAMES) + 1) if t >= len(_TENANT_NAMES) else ""
        )
        tenant_id = _guid4(rng)
        client_id = _guid4(rng)
        ca_specs = []
        for c in range(cas):
            profile = _CA_PROFILES[c % len(_CA_PROFILES)]
            ca_specs.append(
                CASpec(
                    id=_guid4(rng),
                    display_name=f"{name.capitalize()} Issuing CA {c + 1}",
                    certificates=certificates,
                    page_size=page_size,
                    quirk_share=quirk_share,
                    broken_renewal_share=broken_renewal_share,
                    renewed_share=renewed_share,
                    no_device_share=no_device_share,
                    **profile,
                )
            )
        tenant_specs.append(
            TenantSpec(tenant_id=tenant_id, client_id=client_id, name=name, cas=tuple(ca_specs))
        )
    return DatasetSpec(
        seed=seed,
        anchor=anchor,
        tenants=tuple(tenant_specs),
        token_lifetime=token_lifetime,
        ca_page_size=ca_page_size,
    )
