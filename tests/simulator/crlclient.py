"""A plain CRL reader and a client-side revocation count, written from the spec alone
("Revocation (CRL)" and the metric table), never from the simulator's ground truth."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography import x509

from .helpers import parse_date

DATA_PREFIX = "data:application/x-x509-ca-cert;base64,"


def data_uri_certificate(uri: str) -> x509.Certificate:
    assert uri.startswith(DATA_PREFIX), uri[:60]
    return x509.load_der_x509_certificate(base64.b64decode(uri[len(DATA_PREFIX) :]))


def load_crl(body: bytes) -> x509.CertificateRevocationList | None:
    """DER or PEM (both are valid per the spec), else None."""
    for load in (x509.load_der_x509_crl, x509.load_pem_x509_crl):
        try:
            return load(body)
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class CRLRead:
    ok: bool
    reason: str | None
    this_update: float = 0.0
    next_update: float = 0.0
    entries: int = 0
    size: int = 0
    serials: frozenset[int] = frozenset()


def read_crl(client: httpx.Client, url: str, issuer: x509.Certificate) -> CRLRead:
    try:
        response = client.get(url)
    except httpx.TimeoutException:
        return CRLRead(False, "timeout")
    except httpx.TransportError:
        return CRLRead(False, "network")
    if response.status_code >= 500:
        return CRLRead(False, "http_5xx")
    if response.status_code >= 400:
        return CRLRead(False, "http_4xx")
    crl = load_crl(response.content)
    if crl is None:
        return CRLRead(False, "invalid")
    public = issuer.public_key()
    if crl.issuer != issuer.subject or not crl.is_signature_valid(public):  # type: ignore[arg-type]
        return CRLRead(False, "signature")
    next_update = crl.next_update_utc
    assert next_update is not None
    serials = frozenset(entry.serial_number for entry in crl)
    return CRLRead(
        True,
        None,
        crl.last_update_utc.timestamp(),
        next_update.timestamp(),
        len(serials),
        len(response.content),
        serials,
    )


def valid_record(record: Any) -> bool:
    """docs/design.md: an object with string-or-null status, platform and deviceId and
    readable start and end dates."""
    if not isinstance(record, dict):
        return False
    for key in ("certificateStatus", "devicePlatform", "deviceId"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            return False
    return (
        parse_date(record.get("validityStartDateTime")) is not None
        and parse_date(record.get("validityEndDateTime")) is not None
    )


def hex_int(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def named_urls(ca: dict[str, Any], records: list[Any], now: float) -> list[str]:
    """The CA's URL, then the distinct CRL URLs of its unexpired certificates."""
    urls = [ca["certificateRevocationListUrl"]]
    for record in records:
        if not valid_record(record):
            continue
        end = parse_date(record["validityEndDateTime"])
        url = record.get("crlDistributionPointUrl")
        if end is not None and end > now and isinstance(url, str) and url not in urls:
            urls.append(url)
    return urls


def issuer_of(client: httpx.Client, ca: dict[str, Any], records: list[Any], url: str) -> Any:
    """The CA's certificate for its own URL; for another version's CRL, the certificate at
    its certificates' certificationAuthorityIssuerUri."""
    if url == ca["certificateRevocationListUrl"]:
        return data_uri_certificate(ca["certificateDownloadUrl"])
    aia = next(
        r["certificationAuthorityIssuerUri"]
        for r in records
        if isinstance(r, dict) and r.get("crlDistributionPointUrl") == url
    )
    response = client.get(aia)
    assert response.status_code == 200
    return x509.load_der_x509_certificate(response.content)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def client_crl_samples(
    client: httpx.Client,
    tenant_name: str,
    cas: list[dict[str, Any]],
    leaves: dict[str, list[Any]],
    now: float,
    *,
    grace: float = 4 * 3600.0,
    last_good: dict[str, CRLRead] | None = None,
) -> tuple[Samples, dict[str, list[str]]]:
    """The CRL samples and, per CA, the serial numbers (as Graph writes them) of the
    unpublished revocations; ``last_good`` (url -> read) stands in for a failed read."""
    last_good = {} if last_good is None else last_good
    out: Samples = {}
    unpublished: dict[str, list[str]] = {}
    for ca in cas:
        base = {"tenant": tenant_name, "ca_id": ca["id"], "ca": ca.get("displayName") or ca["id"]}
        records = leaves[ca["id"]]
        kept: dict[str, CRLRead] = {}
        for url in named_urls(ca, records, now):
            read = read_crl(client, url, issuer_of(client, ca, records, url))
            labels = tuple(sorted({**base, "url": url}.items()))
            out[("intune_cloudpki_crl_fetch_success", labels)] = 1.0 if read.ok else 0.0
            if read.ok:
                last_good[url] = read
            good = last_good.get(url)
            if good is None:
                continue
            kept[url] = good
            out[("intune_cloudpki_crl_last_update_timestamp_seconds", labels)] = good.this_update
            out[("intune_cloudpki_crl_next_update_timestamp_seconds", labels)] = good.next_update
            out[("intune_cloudpki_crl_revoked_certificates", labels)] = float(good.entries)
            out[("intune_cloudpki_crl_size_bytes", labels)] = float(good.size)
        missing: list[tuple[float, int, str]] = []
        for record in records:
            if not valid_record(record) or record.get("certificateStatus") != "revoked":
                continue
            revoked = parse_date(record.get("revocationDateTime"))
            serial = hex_int(record.get("serialNumber"))
            end = parse_date(record["validityEndDateTime"])
            assert end is not None
            crl = kept.get(record.get("crlDistributionPointUrl"))  # type: ignore[arg-type]
            if revoked is None or serial is None or crl is None:
                continue
            if now - revoked > grace and end > now and serial not in crl.serials:
                missing.append((revoked, serial, record["serialNumber"]))
        out[
            ("intune_cloudpki_leaf_certificates_revoked_unpublished", tuple(sorted(base.items())))
        ] = float(len(missing))
        unpublished[ca["id"]] = [text for _, _, text in sorted(missing)]
    return out, unpublished
