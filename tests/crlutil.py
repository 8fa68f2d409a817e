"""Real CA certificates and signed CRLs built with ``cryptography``, and a loopback HTTP
server that serves them (or fails in a chosen way) and records every request's headers.
For unit tests of pki_exporter/crl before and beside the simulator's PKI."""

from __future__ import annotations

import base64
import io
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@dataclass
class TestCA:
    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def data_uri(self) -> str:
        return "data:application/x-x509-ca-cert;base64," + base64.b64encode(self.der).decode()


def make_ca(
    name: str = "Contoso Issuing CA", key: ec.EllipticCurvePrivateKey | None = None
) -> TestCA:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return TestCA(name, key, certificate)


def make_crl(
    ca: TestCA,
    serials: Iterable[int] = (),
    *,
    this_update: datetime = NOW - timedelta(hours=1),
    next_update: datetime | None = NOW + timedelta(days=7),
    signer: ec.EllipticCurvePrivateKey | None = None,
    issuer: str | None = None,
    pem: bool = False,
) -> bytes:
    """A CRL of ``ca`` listing ``serials`` (revoked a day before ``this_update``)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or ca.name)]))
        .last_update(this_update)
        .next_update(next_update or this_update + timedelta(days=7))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update - timedelta(days=1))
            .build()
        )
    crl = builder.sign(signer or ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


@dataclass
class Route:
    """How the server answers one path: ``body`` with ``status``, or a fault."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    """None, "hang" (never answers), "reset" (closes the connection), "drip" (headers,
    then one byte and silence)."""
    etag: str | None = None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeouts are tested) is not news


class CRLServer:
    """A plain-HTTP server on 127.0.0.1:0; ``routes`` by path; ``requests`` recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.fault == "hang":
                    server._release.wait(30)
                    return
                if route.fault == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.rfile.close()  # the makefile references keep the socket open
                    self.wfile.close()
                    self.connection.close()  # linger 0: an RST, not a FIN
                    self.wfile = io.BytesIO()  # what the server flushes after us
                    self.close_connection = True
                    return
                if route.etag is not None and self.headers.get("If-None-Match") == route.etag:
                    self.send_response(304)
                    self.send_header("ETag", route.etag)
                    self.end_headers()
                    return
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.etag is not None:
                    self.send_header("ETag", route.etag)
                if route.fault == "drip":
                    self.send_header("Content-Length", str(len(route.body) + 1))
                    self.end_headers()
                    self.wfile.write(route.body[:1])
                    self.wfile.flush()
                    server._release.wait(30)
                    return
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> CRLServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@contextmanager
def crl_server() -> Iterator[CRLServer]:
    server = CRLServer().start()
    try:
        yield server
    finally:
        server.close()
