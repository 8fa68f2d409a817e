"""A real Squid (Debian's squid-openssl) on loopback, for the proxy tests.

Squid resolves names from its own ``hosts_file``, so a tenant can be given a name that
only the proxy knows (``*.proxied.test`` -> 127.0.0.1): whatever reaches the simulator
under that name went through Squid. Optional: Basic proxy authentication
(``basic_ncsa_auth``), and TLS inspection (``ssl_bump``: Squid re-signs every site with
its own CA, as corporate egress proxies do). Every request Squid handles is in
``requests()``, read from its access log: a tunnel as ``CONNECT host:port``, a bumped
request and a plain-HTTP one (a CRL) as its method and absolute URL, each with the proxy
user (``-`` without authentication).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pki_simulator.tls import CA_KEY_USAGE

from tests.exporter_proc import on_a_free_port

SQUID = shutil.which("squid") or "/usr/sbin/squid"
LIBEXEC = Path("/usr/lib/squid")
PROXIED_DOMAIN = "proxied.test"
"""Names under it resolve only inside Squid (its hosts_file), never for the exporter."""


def require_squid() -> None:
    if not Path(SQUID).exists() or not (LIBEXEC / "security_file_certgen").exists():
        pytest.skip("squid-openssl is not installed (scripts/install-system-deps.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("squid drops to the 'proxy' user: the proxy tests run as root")


@dataclass(frozen=True)
class Entry:
    """One line of Squid's access log."""

    user: str
    method: str
    url: str
    status: int
    result: str


def _make_ca(directory: Path) -> tuple[Path, Path]:
    """A CA of the "corporate" inspecting proxy: (certificate+key PEM for Squid, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corp TLS Inspection CA")])
    now = time.time()
    import datetime as dt

    start = dt.datetime.fromtimestamp(now - 3600, tz=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _key_pem(key)
    both = directory / "inspect-ca.pem"
    both.write_bytes(cert_pem + key_pem)
    public = directory / "inspect-ca.crt"
    public.write_bytes(cert_pem)
    # The proxy's own certificate, for an https:// proxy: 127.0.0.1, signed by the same CA.
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "proxy-server.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + _key_pem(leaf_key)
    )
    return both, public


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Squid:
    """``start()`` it, point the exporter at ``url``; ``stop()`` reaps it."""

    names: tuple[str, ...] = ()
    """Host names under PROXIED_DOMAIN that Squid resolves to 127.0.0.1, whatever the port:
    one name covers the simulator's TLS listener (token endpoint, Graph) and its plain-HTTP
    CDN (CRLs, CA certificates) on another port."""
    users: dict[str, str] = field(default_factory=dict)
    """Basic proxy authentication: user -> password (none: no authentication)."""
    inspect_tls: bool = False
    tls_listener: bool = False
    """An https:// proxy: clients speak TLS to Squid itself (its certificate is signed by
    ``inspection_ca``)."""
    upstream_ca: Path | None = None
    """What Squid trusts on the way out when it inspects TLS (the simulator's CA)."""
    port: int = 0
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pki-squid-")))
    inspection_ca: Path | None = None
    """The CA that signs the certificates Squid shows while inspecting (for ca_bundle)."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_listener else 'http'}://127.0.0.1:{self.port}"

    def _config(self) -> str:
        d = self.directory
        lines = [
            f"pid_filename {d}/squid.pid",
            f"cache_log {d}/cache.log",
            "logformat pki %un %rm %ru %>Hs %Ss",
            f"access_log stdio:{d}/access.log pki",
            "logfile_rotate 0",
            "cache deny all",
            f"coredump_dir {d}",
            f"hosts_file {d}/hosts",
            "dns_nameservers 127.0.0.1",
            "shutdown_lifetime 0 seconds",
            "pinger_enable off",
            "visible_hostname pki-test-proxy",
            "forwarded_for delete",
            "via off",
            "buffered_logs off",
        ]
        if self.inspect_tls or self.tls_listener:
            _, self.inspection_ca = _make_ca(d)
        if self.tls_listener:
            lines.append(f"https_port 127.0.0.1:{self.port} tls-cert={d}/proxy-server.pem")
        elif self.inspect_tls:
            assert self.upstream_ca is not None
            both = d / "inspect-ca.pem"
            lines += [
                f"http_port 127.0.0.1:{self.port} ssl-bump tls-cert={both} "
                "generate-host-certificates=on dynamic_cert_mem_cache_size=4MB",
                f"sslcrtd_program {LIBEXEC}/security_file_certgen -s {d}/ssl_db -M 4MB",
                "sslcrtd_children 2 startup=1 idle=1",
                f"tls_outgoing_options cafile={d}/upstream-ca.pem",
                "acl step1 at_step SslBump1",
                "ssl_bump peek step1",
                "ssl_bump bump all",
            ]
        else:
            lines.append(f"http_port 127.0.0.1:{self.port}")
        if self.users:
            lines += [
                f"auth_param basic program {LIBEXEC}/basic_ncsa_auth {d}/passwd",
                "auth_param basic realm pki-test-proxy",
                "acl authenticated proxy_auth REQUIRED",
                "http_access allow authenticated",
                "http_access deny all",
            ]
        else:
            lines.append("http_access allow all")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> Squid:
        """Start Squid and wait until it listens; on a port of our choosing unless one was
        given (again on another if that one was taken before Squid bound it)."""
        if self.port:
            return self._start(timeout)

        def on(port: int) -> Squid:
            self.port = port
            (self.directory / "cache.log").unlink(missing_ok=True)  # a failed try's
            return self._start(timeout)

        return on_a_free_port(on)

    def _start(self, timeout: float) -> Squid:
        require_squid()
        d = self.directory
        (d / "hosts").write_text(
            "".join(f"127.0.0.1 {name}\n" for name in self.names) + "127.0.0.1 localhost\n"
        )
        if self.users:
            lines = []
            for user, password in self.users.items():
                hashed = (
                    subprocess.run(
                        ["openssl", "passwd", "-apr1", "-stdin"],
                        input=password.encode(),
                        capture_output=True,
                        check=True,
                        timeout=10,
                    )
                    .stdout.decode()
                    .strip()
                )
                lines.append(f"{user}:{hashed}\n")
            (d / "passwd").write_text("".join(lines))
        (d / "squid.conf").write_text(self._config())
        if self.inspect_tls:
            assert self.upstream_ca is not None  # copied: Squid runs as 'proxy'
            shutil.copyfile(self.upstream_ca, d / "upstream-ca.pem")
            subprocess.run(
                [
                    str(LIBEXEC / "security_file_certgen"),
                    "-c",
                    "-s",
                    str(d / "ssl_db"),
                    "-M",
                    "4MB",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
        proxy_user = pwd.getpwnam("proxy")
        for path in [d, *d.rglob("*")]:
            os.chown(path, proxy_user.pw_uid, proxy_user.pw_gid)
        self.proc = subprocess.Popen(
            [SQUID, "-N", "-f", str(d / "squid.conf")],
            stdout=open(d / "stdout.log", "wb"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"squid exited with {self.proc.returncode}:\n{self.log()}")
            if "Accepting " in self.cache_log():  # logged once listening (no probe to log)
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"squid did not listen within {timeout}s:\n{self.log()}")

    def cache_log(self) -> str:
        path = self.directory / "cache.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log(self) -> str:
        out = self.directory / "stdout.log"
        text = out.read_text(errors="replace") if out.exists() else ""
        return text + self.cache_log()

    def requests(self) -> list[Entry]:
        path = self.directory / "access.log"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text(errors="replace").splitlines():
            user, method, url, status, result = line.split(" ")
            entries.append(Entry(user, method, url, int(status), result))
        return entries

    def stop(self, keep: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)
