"""Each simulated CA's key material and where the CDN publishes it.

A CA version (a CA has one, or two once renewed) has an EC key derived from the data set's
seed and an X.509 CA certificate signed deterministically (RFC 6979), so the same seed
gives the same ``certificateDownloadUrl`` on every run and no key is ever stored. EC keeps
generation at well under a millisecond per version (the CA resource's ``certificateKeySize``
keeps the value the spec gives: ``rsa2048`` and friends are labels here, not key sizes).

URL shapes follow real tenants (docs/simulator.md, "PKI and CRLs"): the CRL at
``/{region}/crls/{32 hex}/{caId}_v{n}/current.crl`` and the CA certificate at
``/{region}/cacerts/{32 hex}/{caId}_v{n}/cert.cer``, both on the CDN listener.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki_simulator.tls import CA_KEY_USAGE

REGION = "centralus"
#: Cloud PKI republishes a CA's CRL every 3.5 days ...
PUBLICATION_INTERVAL = 302_400
#: ... and each CRL is valid for 7 days (nextUpdate = thisUpdate + 7 days).
CRL_VALIDITY = 604_800

_CURVES: dict[str, ec.EllipticCurve] = {
    "ecp384": ec.SECP384R1(),
    "ecp521": ec.SECP521R1(),
}
HashAlgorithm = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
_HASHES: dict[str, HashAlgorithm] = {
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def curve_for(key_size: str | None) -> ec.EllipticCurve:
    """P-384 / P-521 for the ``eCP384`` / ``eCP521`` key sizes, P-256 for the rest."""
    return _CURVES.get((key_size or "").lower(), ec.SECP256R1())


def hash_for(algorithm: str | None) -> HashAlgorithm:
    return _HASHES.get((algorithm or "").lower(), hashes.SHA256())


def derived_key(seed: str, curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    """An EC private key that is the same for the same seed (a scalar from the seed)."""
    size = (curve.key_size + 7) // 8
    scalar = int.from_bytes(hashlib.shake_256(seed.encode()).digest(size), "big") >> 8
    return ec.derive_private_key(max(1, scalar), curve)


def ca_name(common_name: str, organization: str) -> x509.Name:
    """``CN=<cn>,O=<org>,C=US``: the subject of a CA certificate and the CRL's issuer."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class CAVersion:
    """One version of a CA: key, certificate and the CDN paths of its CRL and certificate."""

    ca_id: str
    number: int
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    der: bytes
    #: SHA-1 of the DER, upper-case hex (Graph's ``thumbprint``)
    thumbprint: str
    #: upper-case hex (Graph's ``serialNumber``)
    serial: str
    not_before: int
    not_after: int
    hash_algorithm: HashAlgorithm
    crl_path: str
    cacert_path: str

    @property
    def subject(self) -> x509.Name:
        return self.certificate.subject

    def crl_url(self, base: str) -> str:
        return base + self.crl_path

    def cacert_url(self, base: str) -> str:
        return base + self.cacert_path


def path_hex(seed: str) -> str:
    """The 32 hex digits of a CA's CDN paths (stable per seed, tenant and CA)."""
    return hashlib.sha256((seed + "|cdn").encode()).hexdigest()[:32]


def make_version(
    *,
    seed: str,
    ca_id: str,
    number: int,
    subject: x509.Name,
    issuer: x509.Name,
    not_before: int,
    not_after: int,
    key_size: str | None,
    hashing_algorithm: str | None,
) -> CAVersion:
    """Key and certificate of version ``number`` of a CA (deterministic for the seed)."""
    key = derived_key(f"{seed}|ca-key|v{number}", curve_for(key_size))
    rng = random.Random(f"{seed}|ca-serial|v{number}")
    serial = rng.getrandbits(120) | (1 << 120)
    algorithm = hash_for(hashing_algorithm)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, algorithm, ecdsa_deterministic=True)
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    hexpart = path_hex(seed)
    folder = f"{hexpart}/{ca_id}_v{number}"
    return CAVersion(
        ca_id=ca_id,
        number=number,
        key=key,
        certificate=cert,
        der=der,
        thumbprint=hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
        serial=f"{serial:X}",
        not_before=not_before,
        not_after=not_after,
        hash_algorithm=algorithm,
        crl_path=f"/{REGION}/crls/{folder}/current.crl",
        cacert_path=f"/{REGION}/cacerts/{folder}/cert.cer",
    )
