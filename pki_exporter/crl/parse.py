"""A CRL's bytes -> ``CRLInfo``, checked against the CA certificate; CA certificates.

A CRL counts only if its issuer is the CA's subject and its signature verifies against
the CA's public key: a CRL anyone could have written proves nothing about revocation.
Everything that goes wrong becomes a ``CRLFailure`` with the spec's reason (``invalid``:
not a CRL; ``signature``: another issuer, or a signature that does not verify), never
another exception: the bytes come from the network.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_to_bytes

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from pki_exporter.crl.model import SERIAL_WIDTH, CRLFailure, CRLInfo

SERIAL_LIMIT = 1 << (8 * SERIAL_WIDTH)

PEM_CRL = b"-----BEGIN X509 CRL-----"
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def _strip(data: bytes) -> bytes:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n")


def load_certificate(data: bytes) -> x509.Certificate:
    """A CA certificate in DER or PEM; ``CRLFailure("invalid")`` when it is neither."""
    try:
        if _strip(data).startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(_strip(data))
        return x509.load_der_x509_certificate(data)
    except Exception as exc:  # cryptography raises ValueError, or a Rust panic's type
        raise CRLFailure("invalid", f"not a certificate: {_first(exc)}") from None


def data_uri_bytes(uri: str) -> bytes:
    """The content of a ``data:`` URI (``certificateDownloadUrl`` on real tenants is
    ``data:application/x-x509-ca-cert;base64,<DER>``): decoded locally, never fetched."""
    head, sep, payload = uri.partition(",")
    if not sep or not head.lower().startswith("data:"):
        raise CRLFailure("invalid", "not a data: URI")
    try:
        if head.lower().endswith(";base64"):
            text = "".join(unquote_to_bytes(payload).decode("ascii").split())
            return base64.b64decode(text, validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise CRLFailure("invalid", f"data: URI: {_first(exc)}") from None


def parse_crl(data: bytes, ca: x509.Certificate) -> CRLInfo:
    """Read a DER or PEM CRL issued and signed by ``ca``; raise ``CRLFailure`` otherwise."""
    try:
        if _strip(data[:64]).startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(_strip(data))
        else:
            crl = x509.load_der_x509_crl(data)
    except Exception as exc:
        raise CRLFailure("invalid", f"not a CRL: {_first(exc)}") from None
    try:
        issuer_matches = crl.issuer == ca.subject
    except Exception as exc:
        raise CRLFailure("invalid", f"unreadable issuer: {_first(exc)}") from None
    if not issuer_matches:
        raise CRLFailure("signature", "issued by another name than the CA's subject")
    try:
        valid = crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except InvalidSignature:
        valid = False
    except Exception as exc:  # a key type or algorithm cryptography cannot verify
        raise CRLFailure("signature", f"signature not verifiable: {_first(exc)}") from None
    if not valid:
        raise CRLFailure("signature", "signature does not verify against the CA certificate")
    try:
        this_update = crl.last_update_utc.timestamp()
        next_update = crl.next_update_utc
        keys: list[bytes] = []
        keep = keys.append
        entries = 0
        for entry in crl:
            entries += 1
            serial = entry.serial_number
            if 0 <= serial < SERIAL_LIMIT:  # longer ones match no conforming certificate
                keep(serial.to_bytes(SERIAL_WIDTH, "big"))
    except Exception as exc:  # entries are parsed lazily: a malformed one shows up here
        raise CRLFailure("invalid", f"unreadable CRL: {_first(exc)}") from None
    serials = b"".join(keys)
    return CRLInfo(
        this_update=this_update,
        next_update=next_update.timestamp() if next_update is not None else None,
        entries=entries,
        size=len(data),
        serials=serials,
    )


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
