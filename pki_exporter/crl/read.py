"""One CRL read: download (conditionally), find the CA certificate, check, compact.

The CA certificate of the CA's own CRL is ``certificateDownloadUrl`` (a ``data:`` URI on
real tenants, decoded here; an http(s) URL is fetched under the same allow-list and caps).
Another version's CRL is checked against the certificate at its certificates'
``certificationAuthorityIssuerUri`` first, then against the CA's own. CA certificates are
kept by URL for the life of the reader (a few per CA, ~1.5 KB each).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509

from pki_exporter.crl.fetch import Fetcher
from pki_exporter.crl.model import CRLFailure, CRLInfo, Validators
from pki_exporter.crl.parse import data_uri_bytes, load_certificate, parse_crl

CERTIFICATES_KEPT = 256


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A good read: ``info`` is None when the CRL is unchanged (304), the last one stands."""

    info: CRLInfo | None
    validators: Validators


class CACertificates:
    """CA certificates by source (``data:`` URI or URL), fetched once and kept."""

    def __init__(self, fetcher: Fetcher) -> None:
        self._fetcher = fetcher
        self._kept: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: str) -> x509.Certificate:
        with self._lock:
            known = self._kept.get(source)
        if known is not None:
            return known
        if source[:5].lower() == "data:":
            data = data_uri_bytes(source)
        else:
            body = self._fetcher.get(source).body
            data = body or b""
        try:
            certificate = load_certificate(data)
        except CRLFailure as exc:
            raise CRLFailure(exc.reason, f"CA certificate: {exc}") from None
        with self._lock:
            self._kept[source] = certificate
            while len(self._kept) > CERTIFICATES_KEPT:
                self._kept.popitem(last=False)
        return certificate


def read_crl(
    fetcher: Fetcher,
    certificates: CACertificates,
    url: str,
    *,
    ca_certificate: str | None,
    issuer_uri: str | None,
    validators: Validators | None,
) -> ReadResult:
    """Read the CRL at ``url`` and check it; raise ``CRLFailure`` when it does not count."""
    download = fetcher.get(url, validators)
    if download.body is None:
        return ReadResult(None, download.validators)
    sources = [s for s in (issuer_uri, ca_certificate) if s]
    if not sources:
        raise CRLFailure("signature", "no CA certificate to check it against")
    first: CRLFailure | None = None
    for source in sources:
        try:
            return ReadResult(
                parse_crl(download.body, certificates.get(source)), download.validators
            )
        except CRLFailure as exc:
            if exc.reason == "invalid" and not str(exc).startswith("CA certificate"):
                raise  # not a CRL whatever the certificate
            first = first or exc
    assert first is not None
    raise first
