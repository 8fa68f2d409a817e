"""Plain MSAL and httpx clients, and a client-side count of the metrics from the served JSON
written from docs/design.md alone (never from the simulator's own ground truth)."""

from __future__ import annotations

import functools
import json
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import msal
import requests
from pki_simulator import SimTenant, Simulator

ANCHOR = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
PREFIX = "/beta/deviceManagement/cloudCertificationAuthority"
ACTION = "getAllCloudCertificationAuthorityLeafCertificates"


# --------------------------------------------------------------------------------------
# clients


def tls(sim: Simulator) -> ssl.SSLContext:
    """Trust exactly the simulator's CA, as the exporter's ``ca_bundle`` does."""
    return ssl.create_default_context(cafile=str(sim.ca_bundle_path))


def requests_session(sim: Simulator) -> requests.Session:
    session = requests.Session()
    session.verify = str(sim.ca_bundle_path)
    session.trust_env = False
    return session


def msal_app(
    sim: Simulator, tenant: SimTenant, credential: Any
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        tenant.client_id,
        client_credential=credential,
        authority=f"{sim.url}/{tenant.tenant_id}",
        instance_discovery=False,
        http_client=requests_session(sim),
    )


def scope(sim: Simulator) -> list[str]:
    return [f"{sim.url}/.default"]


def fetch_token(sim: Simulator, tenant: SimTenant) -> str:
    """A token through the plain form POST (no MSAL cache in the way)."""
    with httpx.Client(verify=tls(sim), trust_env=False) as client:
        response = client.post(
            f"{sim.url}/{tenant.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": tenant.client_id,
                "client_secret": tenant.client_secret,
                "scope": f"{sim.url}/.default",
            },
        )
    response.raise_for_status()
    return str(response.json()["access_token"])


@dataclass
class Page:
    status: int
    body: Any
    headers: httpx.Headers


class GraphClient:
    """A deliberately plain Graph client: httpx, a bearer, follow nextLink."""

    def __init__(self, sim: Simulator, tenant: SimTenant, *, gzip: bool = True) -> None:
        self.sim = sim
        self.tenant = tenant
        headers = {"Authorization": f"Bearer {fetch_token(sim, tenant)}"}
        if not gzip:
            headers["Accept-Encoding"] = "identity"
        self.http = httpx.Client(verify=tls(sim), trust_env=False, headers=headers, timeout=10)

    def close(self) -> None:
        self.http.close()

    def url(self, path: str = "") -> str:
        return f"{self.sim.url}{PREFIX}{path}"

    def list_cas(self, prefer: bool = True) -> list[dict[str, Any]]:
        headers = {"Prefer": "include-unknown-enum-members"} if prefer else {}
        cas: list[dict[str, Any]] = []
        response = self.http.get(self.url(), headers=headers)
        while True:
            assert response.status_code == 200, response.text
            body = json.loads(response.content)
            cas.extend(body["value"])
            if "@odata.nextLink" not in body:
                return cas
            response = self.http.get(body["@odata.nextLink"], headers=headers)

    def leaf_pages(self, ca_id: str, *, follow_with: str = "GET") -> list[Page]:
        pages = []
        response = self.http.post(self.url(f"/{ca_id}/{ACTION}"))
        while True:
            assert response.status_code == 200, response.text
            body = json.loads(response.content)
            pages.append(Page(response.status_code, body, response.headers))
            link = body.get("@odata.nextLink")
            if link is None:
                return pages
            response = self.http.request(follow_with, link)

    def leaves(self, ca_id: str) -> list[Any]:
        return [r for page in self.leaf_pages(ca_id) for r in page.body["value"]]


class ManualClock:
    """A simulator clock that the test moves by hand (``clock.now = ...``), never slept on."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------------------
# the client-side count, written from docs/design.md "Metric semantics" alone

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$"
)


def parse_date(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    return _parse_date(value)


@functools.lru_cache(maxsize=1 << 16)
def _parse_date(value: str) -> float | None:
    """`parse_date` of a string, remembered: the count is taken at many instants of one
    data set, which would parse the same dates again each time."""
    match = _RFC3339.match(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    round_up = fraction is not None and len(fraction) > 6 and fraction[6] >= "5"
    if offset in (None, "Z"):
        tz: timezone = UTC
    else:
        sign = -1 if offset[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    try:
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz
        )
    except ValueError:
        return None
    # docs/design.md: the seventh fractional digit rounds (5 and above up).
    return (parsed + timedelta(microseconds=round_up)).timestamp()


def _label(value: Any, default: str) -> str:
    return value[:64] if isinstance(value, str) and value else default


def _display(value: Any) -> str | None:
    return value[:256] if isinstance(value, str) else None


def device_row(record: dict[str, Any], device: str, platform: str, end: float) -> dict[str, Any]:
    return {
        "device_id": device,
        "device_name": _display(record.get("deviceName")),
        "user": _display(record.get("userPrincipalName")),
        "platform": platform,
        "serial_number": _display(record.get("serialNumber")),
        "thumbprint": _display(record.get("thumbprint")),
        "end": end,
    }


def row_rank(row: dict[str, Any]) -> tuple[Any, ...]:
    """The latest end first; ties: platform, serial, thumbprint, name, user (docs/design.md)."""
    return (
        -row["end"],
        row["platform"],
        row["serial_number"] or "",
        row["thumbprint"] or "",
        row["device_name"] or "",
        row["user"] or "",
    )


def client_devices_at_risk(
    records: list[Any], now: float, within_days: int
) -> list[dict[str, Any]]:
    """The drill-down rows, counted from the served JSON of one CA."""
    devices: dict[str, dict[str, Any]] = {}
    for record in records:
        if not isinstance(record, dict):
            continue
        status, platform = record.get("certificateStatus"), record.get("devicePlatform")
        device = record.get("deviceId")
        start = parse_date(record.get("validityStartDateTime"))
        end = parse_date(record.get("validityEndDateTime"))
        if (
            (status is not None and not isinstance(status, str))
            or (platform is not None and not isinstance(platform, str))
            or (device is not None and not isinstance(device, str))
            or start is None
            or end is None
        ):
            continue
        if status != "active" or not device or end <= now:
            continue
        row = device_row(record, device, _label(platform, "Unknown"), end)
        known = devices.get(device)
        if known is None or row_rank(row) < row_rank(known):
            devices[device] = row
    rows = sorted(
        (r for r in devices.values() if r["end"] <= now + within_days * 86400),
        key=lambda r: (r["end"], r["device_id"]),
    )
    for row in rows:
        row["end_timestamp"] = row["end"]
        row["end"] = datetime.fromtimestamp(row["end"], UTC).isoformat().replace("+00:00", "Z")
    return rows


def client_samples(
    tenant_name: str,
    cas: list[dict[str, Any]],
    leaves: dict[str, list[Any]],
    now: float,
    windows: tuple[int, ...] = (7, 30, 90),
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def put(name: str, value: float, **labels: str) -> None:
        out[(name, tuple(sorted(labels.items())))] = value

    for ca in cas:
        base = {"tenant": tenant_name, "ca_id": ca["id"], "ca": ca.get("displayName") or ca["id"]}
        put(
            "intune_cloudpki_ca_info",
            1.0,
            **base,
            status=_label(ca.get("certificationAuthorityStatus"), "unknown"),
            type=_label(ca.get("cloudCertificationAuthorityType"), "unknown"),
            key_size=_label(ca.get("certificateKeySize"), "unknown"),
            hashing_algorithm=_label(
                ca.get("cloudCertificationAuthorityHashingAlgorithm"), "unknown"
            ),
            key_platform=_label(ca.get("keyPlatform"), "unknown"),
        )
        ca_end = parse_date(ca.get("validityEndDateTime"))
        if ca_end is not None:
            put("intune_cloudpki_ca_certificate_expiry_timestamp_seconds", ca_end, **base)
        invalid = without_device = 0
        devices: dict[str, dict[str, Any]] = {}
        firsts: dict[str, float] = {}
        counts: dict[tuple[str, str], int] = {}
        active_ends: list[float] = []
        latest: float | None = None
        for record in leaves[ca["id"]]:
            if not isinstance(record, dict):
                invalid += 1
                continue
            status, platform = record.get("certificateStatus"), record.get("devicePlatform")
            device = record.get("deviceId")
            start = parse_date(record.get("validityStartDateTime"))
            end = parse_date(record.get("validityEndDateTime"))
            if (
                (status is not None and not isinstance(status, str))
                or (platform is not None and not isinstance(platform, str))
                or (device is not None and not isinstance(device, str))
                or start is None
                or end is None
            ):
                invalid += 1
                continue
            key = (_label(status, "unknown"), _label(platform, "Unknown"))
            counts[key] = counts.get(key, 0) + 1
            if not device:
                without_device += 1
            if key[0] == "active":
                active_ends.append(end)
                if device and end > now:
                    firsts[device] = min(end, firsts.get(device, end))
                    row = device_row(record, device, key[1], end)
                    known = devices.get(device)
                    if known is None or row_rank(row) < row_rank(known):
                        devices[device] = row
            latest = start if latest is None else max(latest, start)
        put("intune_cloudpki_leaf_certificates_invalid", float(invalid), **base)
        put("intune_cloudpki_leaf_certificates_without_device", float(without_device), **base)
        per_platform: dict[str, list[tuple[float, float]]] = {}
        for device, row in devices.items():
            per_platform.setdefault(str(row["platform"]), []).append(
                (firsts[device], float(row["end"]))
            )
        for platform, device_ends in per_platform.items():
            put("intune_cloudpki_devices", float(len(device_ends)), **base, platform=platform)
            for days in windows:
                bound = now + days * 86400
                put(
                    "intune_cloudpki_devices_expiring",
                    float(sum(1 for _, e in device_ends if e <= bound)),
                    **base,
                    platform=platform,
                    within_days=str(days),
                )
                put(
                    "intune_cloudpki_devices_renewal_due",
                    float(sum(1 for f, _ in device_ends if f <= bound)),
                    **base,
                    platform=platform,
                    within_days=str(days),
                )
        for platform in {p for _, p in counts}:
            for status in ("active", "revoked", "expired"):
                put(
                    "intune_cloudpki_leaf_certificates",
                    0.0,
                    **base,
                    status=status,
                    platform=platform,
                )
        for (status, platform), n in counts.items():
            put(
                "intune_cloudpki_leaf_certificates",
                float(n),
                **base,
                status=status,
                platform=platform,
            )
        unexpired = [e for e in active_ends if e > now]
        if unexpired:
            put(
                "intune_cloudpki_leaf_certificate_earliest_expiry_timestamp_seconds",
                min(unexpired),
                **base,
            )
        for days in windows:
            n = sum(1 for e in active_ends if now < e <= now + days * 86400)
            put(
                "intune_cloudpki_leaf_certificates_expiring",
                float(n),
                **base,
                within_days=str(days),
            )
        if latest is not None:
            put(
                "intune_cloudpki_leaf_certificate_latest_issuance_timestamp_seconds", latest, **base
            )
    return out
