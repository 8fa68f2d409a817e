"""Key material: the ephemeral TLS CA, the server certificate, app certificates.

Everything here is made fresh at start-up with `cryptography` and lives only in a
temporary directory: a client trusts the simulator through the CA file alone, the way the
exporter's ``ca_bundle`` is meant to work. The one exception is the RSA keys: they are
shared by the simulators of one process (`new_rsa_key`), and the test suite makes its 16
once per checkout, keeps them in pytest's cache and hands them to each of its processes
(`share_rsa_keys`, tests/rsakeys.py). The demo makes its own at each start.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The key usage of every CA certificate the simulator and the tests make: it signs certificates
#: and CRLs.
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


RSA_POOL = 16
"""RSA keys a process makes at most, then hands out again in turn (`new_rsa_key`)."""
_rsa_keys: list[rsa.RSAPrivateKey] = []
_rsa_turn = itertools.count()
_rsa_lock = threading.Lock()


def new_rsa_key() -> rsa.RSAPrivateKey:
    """An RSA-2048 key (token signing, the workload-identity issuer, app certificates).

    Making one costs about 70 ms of CPU and a test process starts hundreds of simulators,
    so a process makes at most 16 and then hands them out again in turn: any 16 keys
    asked for in a row differ, more than one simulator needs. Nothing in the simulator
    tells two certificates apart by their key alone: an assertion names its certificate
    by thumbprint (``x5t``), and each certificate is new.
    """
    with _rsa_lock:
        turn = next(_rsa_turn) % RSA_POOL
        while turn >= len(_rsa_keys):  # fewer shared than the pool holds: make the rest
            _rsa_keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _rsa_keys[turn]


def share_rsa_keys(keys: Sequence[rsa.RSAPrivateKey]) -> None:
    """Hand out ``keys`` (at most 16, each different) before making any of this process's
    own: a test session makes its keys once and hands them to each of its processes."""
    if len({key.public_key().public_numbers().n for key in keys}) != len(keys):
        raise ValueError("the shared RSA keys must differ")
    with _rsa_lock:
        _rsa_keys[:] = list(keys)[:RSA_POOL]


class EphemeralCA:
    """A throwaway CA (EC P-256: fast to make and to handshake with)."""

    def __init__(self, common_name: str = "pki-exporter simulator CA", days: int = 30) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    @classmethod
    def kept_in(cls, directory: Path) -> EphemeralCA:
        """The CA of a state directory (``simulate --state-dir``): read back from
        ``ca.pem`` and ``ca.key.pem`` when both are there and it is good for another day,
        else made for ten years and written there, so that a ``ca_bundle`` naming that
        file keeps working across restarts."""
        cert_file, key_file = directory / "ca.pem", directory / "ca.key.pem"
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError):
            pass
        else:
            fresh = cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=1)
            if fresh and isinstance(key, ec.EllipticCurvePrivateKey):
                ca = cls.__new__(cls)
                ca.key, ca.cert = key, cert
                return ca
        ca = cls(days=3650)
        write_private(key_file, _pem_key(ca.key))
        cert_file.write_bytes(ca.cert_pem)
        return ca

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue_server_certificate(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) valid for every host (IP or DNS name) given."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


_PFX_ENCRYPTION = (
    serialization.PrivateFormat.PKCS12.encryption_builder()
    .kdf_rounds(2048)
    .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
    .hmac_hash(hashes.SHA256())
)
"""A PFX as ``openssl pkcs12 -export`` makes one (OpenSSL 3's defaults: AES-256-CBC,
PBKDF2-HMAC-SHA256, 2,048 rounds; cryptography's best available takes ten times the rounds,
11 ms of CPU for each tenant the simulator makes)."""


@dataclass(frozen=True)
class AppCertificate:
    """An app registration's certificate credential, in every form MSAL accepts."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    cert_pem: str
    key_pem: str
    #: SHA-1 thumbprint, upper-case hex (what the Entra portal shows)
    thumbprint: str
    sha1: bytes
    sha256: bytes
    pfx: bytes
    pfx_passphrase: str

    @classmethod
    def create(cls, common_name: str, passphrase: str) -> AppCertificate:
        key = new_rsa_key()
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=365))
            .sign(key, hashes.SHA256())
        )
        return cls._of(common_name, key, cert, passphrase)

    @classmethod
    def read(
        cls, common_name: str, cert_file: Path, key_file: Path, passphrase_file: Path
    ) -> AppCertificate | None:
        """The certificate a state directory kept (``simulate --state-dir``), or None when
        a file is missing, unreadable or the certificate ends within a day."""
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            passphrase = passphrase_file.read_text().strip()
        except (OSError, ValueError):
            return None
        if not isinstance(key, rsa.RSAPrivateKey) or not passphrase:
            return None
        if cert.not_valid_after_utc <= datetime.now(UTC) + timedelta(days=1):
            return None
        return cls._of(common_name, key, cert, passphrase)

    @classmethod
    def _of(
        cls, common_name: str, key: rsa.RSAPrivateKey, cert: x509.Certificate, passphrase: str
    ) -> AppCertificate:
        der = cert.public_bytes(serialization.Encoding.DER)
        pfx = pkcs12.serialize_key_and_certificates(
            common_name.encode(),
            key,
            cert,
            None,
            _PFX_ENCRYPTION.build(passphrase.encode()),
        )
        return cls(
            key=key,
            cert=cert,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            key_pem=_pem_key(key).decode("ascii"),
            thumbprint=hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
            sha1=hashlib.sha1(der, usedforsecurity=False).digest(),
            sha256=hashlib.sha256(der).digest(),
            pfx=pfx,
            pfx_passphrase=passphrase,
        )


def write_private(path: Path, data: bytes) -> Path:
    """Write a file readable by its owner only (keys, PFX, secrets)."""
    path.touch(mode=0o600)
    path.write_bytes(data)
    return path
