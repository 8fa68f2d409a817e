"""TLS for the web port: certificate material, the server context, SAN checks, plain HTTP.

Certificates and keys are handed to OpenSSL through in-memory files; a certificate
rotation is picked up by the provider, which swaps contexts from the SNI callback.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from pki_exporter.web.toolkit.model import (
    CIPHER_SUITES,
    CURVES,
    TLS_VERSIONS,
    VERIFYING,
    TLSServerConfig,
)
from pki_exporter.web.toolkit.parse import Doc
from pki_exporter.web.toolkit.watch import Reader

_VERIFY_MODES: Final = {
    "NoClientCert": ssl.CERT_NONE,
    # Go asks for a certificate and ignores it; nothing here reads it, so not asking is the
    # same to the exporter (and Python cannot ask without verifying).
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: Without client_ca/client_ca_file these verify a given client certificate against the
#: system's roots, as Go does when `ClientCAs` is nil.


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds `data` (ssl loads certificate chains by path)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pki-exporter-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            path = f"/proc/self/fd/{fd}"
            if os.path.exists(path):
                yield path
                return
        finally:
            os.close(fd)
    fd, path = tempfile.mkstemp(prefix="pki-exporter-tls-")  # mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        yield path
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------- TLS material


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    client_ca_pem: bytes | None


def _no_password() -> bytes:
    raise ssl.SSLError("encrypted private key")


def read_tls_material(tls: TLSServerConfig, doc: Doc, reader: Reader) -> TLSMaterial:
    section = "tls_server_config"

    def source(inline: str, file: str) -> tuple[bytes, str, str]:
        """(bytes, key path, " in <file>" for messages)."""
        value: str | None = getattr(tls, inline)
        if value is not None:
            return value.encode(), f"{section}.{inline}", ""
        file_path: str = getattr(tls, file)
        try:
            return reader.read(file_path), f"{section}.{file}", f" in {file_path}"
        except OSError as e:
            raise doc.error(
                f"{section}.{file}", f"cannot read {file_path}: {e.strerror or e}"
            ) from None

    cert_pem, cert_where, cert_in = source("cert", "cert_file")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise doc.error(cert_where, f"no valid PEM certificate{cert_in}") from None

    key_pem, key_where, key_in = source("key", "key_file")
    try:
        # Read only to compare its public half with the certificate's (OpenSSL checks the
        # key itself when the context loads it): OpenSSL's RSA key check costs 75 ms.
        private_key = serialization.load_pem_private_key(
            key_pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    except TypeError:
        raise doc.error(
            key_where, f"the private key{key_in} is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise doc.error(key_where, f"no valid PEM private key{key_in}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        what = "cert_file" if tls.cert_file is not None else "cert"
        raise doc.error(key_where, f"private key does not match the certificate in {what}")

    ca_pem: bytes | None = None
    if tls.client_ca is not None or tls.client_ca_file is not None:
        ca_pem, ca_where, ca_in = source("client_ca", "client_ca_file")
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise doc.error(ca_where, f"no valid PEM certificate{ca_in}") from None
    return TLSMaterial(cert_pem, key_pem, ca_pem)


class ClientCertificateRejected(ssl.SSLError):
    """The client certificate verified, but has none of `client_allowed_sans`."""


class _ServerSSLSocket(ssl.SSLSocket):
    """Checks `client_allowed_sans` as the last step of the handshake.

    Go checks the SANs inside the handshake (VerifyPeerCertificate); Python's ssl has no
    hook there, but every handshake of a socket wrapped by our contexts runs through this
    `do_handshake` (at `wrap_socket`, `accept()` on a wrapped listener, or explicitly), so
    the check cannot be forgotten by the server. The SANs come from the socket's context,
    which the SNI callback may have swapped for a newer one.
    """

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        context = self.context
        allowed = context.client_allowed_sans if isinstance(context, _ServerContext) else ()
        if allowed and not _has_allowed_san(self.getpeercert(binary_form=True), allowed):
            raise ClientCertificateRejected("client certificate has none of client_allowed_sans")


class _ServerContext(ssl.SSLContext):
    sslsocket_class = _ServerSSLSocket
    client_allowed_sans: tuple[str, ...] = ()


def build_context(tls: TLSServerConfig, material: TLSMaterial, doc: Doc) -> ssl.SSLContext:
    section = "tls_server_config"
    ctx = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.client_allowed_sans = tls.client_allowed_sans
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    # No resumption: a session must never outlive the config that authenticated it.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    openssl_names = [n for n in (CIPHER_SUITES[c] for c in tls.cipher_suites) if n is not None]
    if openssl_names:
        try:
            ctx.set_ciphers(":".join(openssl_names))
        except ssl.SSLError:
            raise doc.error(
                f"{section}.cipher_suites", "this OpenSSL supports none of these cipher suites"
            ) from None
    if tls.curve_preferences:
        try:
            ctx.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
        except (ValueError, ssl.SSLError):
            raise doc.error(
                f"{section}.curve_preferences", "this OpenSSL does not support that curve"
            ) from None
    try:
        with (
            _memory_file(material.cert_pem) as cert_path,
            _memory_file(material.key_pem) as key_path,
        ):
            ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as e:
        raise doc.error(
            section, f"OpenSSL cannot use the certificate and key: {e.reason}"
        ) from None
    ctx.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    if material.client_ca_pem is None and tls.client_auth_type in VERIFYING:
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # the system's roots, as Go
    if material.client_ca_pem is not None:
        try:
            ctx.load_verify_locations(cadata=material.client_ca_pem.decode("ascii", "replace"))
        except ssl.SSLError as e:
            where = "client_ca" if tls.client_ca is not None else "client_ca_file"
            raise doc.error(f"{section}.{where}", f"OpenSSL cannot use it: {e.reason}") from None
    return ctx


def _has_allowed_san(der: bytes | None, allowed: Sequence[str]) -> bool:
    """Whether a certificate has one of `allowed` among its SANs, as Go prints them."""
    if not der:
        return False
    try:
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    values: set[str] = set(sans.get_values_for_type(x509.DNSName))
    values.update(sans.get_values_for_type(x509.RFC822Name))
    values.update(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    values.update(sans.get_values_for_type(x509.UniformResourceIdentifier))
    return not values.isdisjoint(allowed)


def looks_like_plain_http(first: bytes) -> bool:
    """Whether the first byte of a connection to a TLS port starts an HTTP request.

    A TLS record starts with 0x16 (or 0x80 for SSLv2); an HTTP method with a capital.
    """
    return len(first) == 1 and b"A" <= first <= b"Z"
