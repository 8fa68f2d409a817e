"""--web.config.file: real TLS and basic auth over 127.0.0.1 against pki_exporter.web.toolkit.

The exporter's own server (pki_exporter.web.server) serves each provider: it wraps each
accepted connection with the provider's context, answers 401 when `authorize` says no,
and adds `response_headers()`. Clients are httpx and stdlib ssl.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from pki_exporter.runtime import logs
from pki_exporter.web.server import Endpoints, ExporterServer
from pki_exporter.web.server import serve as start_server
from pki_exporter.web.toolkit import (
    HTTP_ON_HTTPS_RESPONSE,
    TLSServerConfig,
    WebConfigError,
    WebConfigProvider,
    auth,
    load_web_config,
    parse,
    watch,
)
from tests import tlsutil
from tests.tlsutil import Issued

# --------------------------------------------------------------------------- helpers

LOGFMT = logs.LogfmtFormatter()


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(message, error field) of each record the toolkit logged."""
    return [(r.getMessage(), getattr(r, "fields", {}).get("error", "")) for r in caplog.records]


def bcrypt_hash(password: str, cost: int = 4, prefix: str = "$2y$") -> str:
    """A hash as `htpasswd -nBC <cost>` writes it ($2y$ unless told otherwise)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    return prefix + hashed[4:]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextlib.contextmanager
def serve(provider: WebConfigProvider) -> Iterator[int]:
    """The exporter's server with this provider; "/" answers "ok". Its own check of the
    web config's files never comes during a test (an hour apart): a test that changes a
    file calls `provider.reload_if_changed()` itself, as that check would
    (tests/test_server.py proves the server's check runs, off the event loop)."""
    endpoints = Endpoints(
        registry=CollectorRegistry(auto_describe=False),
        ready=lambda: True,
        status_page=lambda: "ok\n",
    )
    server = ExporterServer(("127.0.0.1", 0), endpoints, provider, web_config_interval=3600)
    thread = start_server(server)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def client_context(
    ca: Path | None,
    client: tuple[Path, Path] | None = None,
    *,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def get(url: str, ctx: ssl.SSLContext | None = None, auth: str | None = None) -> httpx.Response:
    """One request on a fresh connection."""
    headers = {"Authorization": auth} if auth else {}
    with httpx.Client(verify=ctx if ctx is not None else True, timeout=5.0) as client:
        return client.get(url, headers=headers)


def handshake(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection whose handshake is complete; the caller closes it."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def served_serial(port: int, ctx: ssl.SSLContext) -> int:
    with handshake(port, ctx) as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return tlsutil.serial_of_der(der)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    tlsutil.atomic_write(path, yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class PKI:
    dir: Path
    ca: Issued
    ca_path: Path
    server: Issued
    cert: Path
    key: Path
    client: tuple[Path, Path]
    rogue_client: tuple[Path, Path]

    def tls(self, **extra: Any) -> dict[str, Any]:
        return {"cert_file": str(self.cert), "key_file": str(self.key), **extra}

    def new_server_cert(self) -> Issued:
        return tlsutil.issue_cert(self.ca, "pki-exporter", ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def pki_material() -> dict[str, Issued]:
    ca = tlsutil.make_ca()
    rogue_ca = tlsutil.make_ca("rogue CA")
    return {
        "ca": ca,
        "server": tlsutil.issue_cert(ca, "pki-exporter", ["127.0.0.1", "localhost"]),
        "client": tlsutil.issue_cert(ca, "prometheus", ["prometheus.example"], client=True),
        "rogue": tlsutil.issue_cert(rogue_ca, "prometheus", ["prometheus.example"], client=True),
    }


@pytest.fixture
def pki(tmp_path: Path, pki_material: dict[str, Issued]) -> PKI:
    ca = pki_material["ca"]
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(ca.cert_pem())
    cert, key = pki_material["server"].write(tmp_path, "server")
    return PKI(
        dir=tmp_path,
        ca=ca,
        ca_path=ca_path,
        server=pki_material["server"],
        cert=cert,
        key=key,
        client=pki_material["client"].write(tmp_path, "client"),
        rogue_client=pki_material["rogue"].write(tmp_path, "rogue"),
    )


# --------------------------------------------------------------------------- no web config


def test_without_web_config_everything_is_open_and_plain() -> None:
    provider = WebConfigProvider(None)
    assert not provider.tls_enabled
    assert provider.authorize(None)
    assert dict(provider.response_headers()) == {}
    provider.reload_if_changed()
    with pytest.raises(RuntimeError):
        provider.ssl_context()
    with serve(provider) as port:
        assert get(f"http://127.0.0.1:{port}/").status_code == 200


def test_empty_file_means_no_tls_and_no_auth(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("")
    config = load_web_config(str(path))
    assert config.tls is None
    assert dict(config.basic_auth_users) == {}
    assert dict(config.headers) == {}


# --------------------------------------------------------------------------- TLS


def test_tls_serves_with_the_test_ca_and_is_really_verified(pki: PKI) -> None:
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": pki.tls()})
    provider = WebConfigProvider(str(path))
    assert provider.tls_enabled
    with serve(provider) as port:
        response = get(f"https://127.0.0.1:{port}/", client_context(pki.ca_path))
        assert response.status_code == 200
        assert response.text == "ok\n"
        assert served_serial(port, client_context(pki.ca_path)) == pki.server.serial
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            get(f"https://127.0.0.1:{port}/", client_context(None))
        # Default versions: TLS 1.2 and 1.3 both work.
        tls12 = client_context(pki.ca_path, max_version=ssl.TLSVersion.TLSv1_2)
        with handshake(port, tls12) as conn:
            assert conn.version() == "TLSv1.2"
        with handshake(port, client_context(pki.ca_path)) as conn:
            assert conn.version() == "TLSv1.3"


def test_relative_paths_are_read_from_the_config_directory(
    pki: PKI, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = write_yaml(
        pki.dir / "web.yml",
        {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}},
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = load_web_config(str(path))
    assert config.tls is not None
    assert config.tls.cert_file == str(pki.cert)
    assert config.tls.key_file == str(pki.key)


def test_inline_cert_and_key(pki: PKI) -> None:
    tls = {"cert": pki.server.cert_pem().decode(), "key": pki.server.key_pem().decode()}
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": tls})
    config = load_web_config(str(path))
    assert config.tls is not None
    assert "PRIVATE KEY" not in repr(config)
    with serve(WebConfigProvider(str(path))) as port:
        assert served_serial(port, client_context(pki.ca_path)) == pki.server.serial


def test_require_and_verify_client_cert(pki: PKI) -> None:
    tls = pki.tls(client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca_path))
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": tls})
    with serve(WebConfigProvider(str(path))) as port:
        url = f"https://127.0.0.1:{port}/"
        with pytest.raises(httpx.TransportError):
            get(url, client_context(pki.ca_path))  # no client certificate
        with pytest.raises(httpx.TransportError):
            get(url, client_context(pki.ca_path, pki.rogue_client))  # another CA
        assert get(url, client_context(pki.ca_path, pki.client)).status_code == 200


def test_verify_client_cert_if_given(pki: PKI) -> None:
    tls = pki.tls(client_auth_type="VerifyClientCertIfGiven", client_ca_file=str(pki.ca_path))
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": tls})
    with serve(WebConfigProvider(str(path))) as port:
        url = f"https://127.0.0.1:{port}/"
        assert get(url, client_context(pki.ca_path)).status_code == 200
        assert get(url, client_context(pki.ca_path, pki.client)).status_code == 200
        with pytest.raises(httpx.TransportError):
            get(url, client_context(pki.ca_path, pki.rogue_client))


@pytest.mark.parametrize("auth", ["NoClientCert", "RequestClientCert"])
def test_unverified_client_auth_types_ignore_client_certificates(pki: PKI, auth: str) -> None:
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": pki.tls(client_auth_type=auth)})
    with serve(WebConfigProvider(str(path))) as port:
        url = f"https://127.0.0.1:{port}/"
        assert get(url, client_context(pki.ca_path)).status_code == 200
        assert get(url, client_context(pki.ca_path, pki.rogue_client)).status_code == 200


def test_client_allowed_sans(pki: PKI, pki_material: dict[str, Issued]) -> None:
    other = tlsutil.issue_cert(pki_material["ca"], "grafana", ["grafana.example"], client=True)
    other_files = other.write(pki.dir, "other")
    tls = pki.tls(
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(pki.ca_path),
        client_allowed_sans=["prometheus.example"],
    )
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": tls})
    provider = WebConfigProvider(str(path))
    with serve(provider) as port:
        url = f"https://127.0.0.1:{port}/"
        assert get(url, client_context(pki.ca_path, pki.client)).status_code == 200
        with pytest.raises(httpx.TransportError):
            get(url, client_context(pki.ca_path, other_files))
        # The allowed SANs follow the file too.
        write_yaml(
            pki.dir / "web.yml",
            {"tls_server_config": {**tls, "client_allowed_sans": ["grafana.example"]}},
        )
        provider.reload_if_changed()
        assert get(url, client_context(pki.ca_path, other_files)).status_code == 200
        with pytest.raises(httpx.TransportError):
            get(url, client_context(pki.ca_path, pki.client))


def test_min_version_tls13_refuses_a_tls12_only_client(pki: PKI) -> None:
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": pki.tls(min_version="TLS13")})
    with serve(WebConfigProvider(str(path))) as port:
        tls12_only = client_context(pki.ca_path, max_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
            handshake(port, tls12_only).close()
        with pytest.raises(httpx.ConnectError):
            get(f"https://127.0.0.1:{port}/", tls12_only)
        with handshake(port, client_context(pki.ca_path)) as conn:
            assert conn.version() == "TLSv1.3"


def test_max_version_and_cipher_suites(pki: PKI) -> None:
    tls = pki.tls(
        max_version="TLS12",
        cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
        curve_preferences=["CurveP384"],
    )
    # without an AES-128-GCM suite, http2 must be off (the toolkit refuses it otherwise)
    web = {"tls_server_config": tls, "http_server_config": {"http2": False}}
    path = write_yaml(pki.dir / "web.yml", web)
    with serve(WebConfigProvider(str(path))) as port:
        with handshake(port, client_context(pki.ca_path)) as conn:
            assert conn.version() == "TLSv1.2"
            cipher = conn.cipher()
            assert cipher is not None
            assert cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
        only_aes128 = client_context(pki.ca_path)
        only_aes128.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        with pytest.raises(ssl.SSLError):
            handshake(port, only_aes128).close()
        only_p256 = client_context(pki.ca_path)
        only_p256.set_ecdh_curve("prime256v1")
        with pytest.raises(ssl.SSLError):
            handshake(port, only_p256).close()


def test_plain_http_on_the_tls_port_gets_go_s_400(pki: PKI) -> None:
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": pki.tls()})
    with serve(WebConfigProvider(str(path))) as port:
        response = get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 400
        assert response.text == "Client sent an HTTP request to an HTTPS server.\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            assert raw.makefile("rb").read() == HTTP_ON_HTTPS_RESPONSE
        # The server still speaks TLS afterwards.
        assert get(f"https://127.0.0.1:{port}/", client_context(pki.ca_path)).status_code == 200


def test_certificate_rotation_needs_no_restart(pki: PKI) -> None:
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": pki.tls()})
    ctx = client_context(pki.ca_path)
    provider = WebConfigProvider(str(path))
    with serve(provider) as port, handshake(port, ctx) as before:
        assert tlsutil.serial_of_der(before.getpeercert(True) or b"") == pki.server.serial
        rotated = pki.new_server_cert()
        rotated.write(pki.dir, "server")
        provider.reload_if_changed()
        # A new connection sees the new certificate; the open one keeps working.
        assert served_serial(port, ctx) == rotated.serial
        before.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert before.recv(100).startswith(b"HTTP/1.1 200")


def test_half_written_rotation_keeps_the_old_certificate(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": pki.tls()})
    ctx = client_context(pki.ca_path)
    provider = WebConfigProvider(str(path))
    with serve(provider) as port:
        rotated = pki.new_server_cert()
        tlsutil.atomic_write(pki.cert, rotated.cert_pem())  # the key is not there yet
        with caplog.at_level(logging.WARNING, logger="pki_exporter.web.toolkit"):
            provider.reload_if_changed()
            provider.reload_if_changed()  # reported once
            assert served_serial(port, ctx) == pki.server.serial
            assert served_serial(port, ctx) == pki.server.serial
        assert logged(caplog) == [
            (
                "web config not reloaded, the previous one stays in force",
                f"{path}: tls_server_config.key_file: private key does not match the "
                "certificate in cert_file",
            )
        ]
        tlsutil.atomic_write(pki.key, rotated.key_pem())
        provider.reload_if_changed()
        assert served_serial(port, ctx) == rotated.serial


def test_listener_wrapped_once_still_follows_rotation(pki: PKI) -> None:
    """The sni_callback path: one context wraps the listening socket for good."""
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": pki.tls()})
    provider = WebConfigProvider(str(path))
    listener = provider.ssl_context().wrap_socket(
        socket.create_server(("127.0.0.1", 0)), server_side=True
    )
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                conn.close()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        ctx = client_context(pki.ca_path)
        assert served_serial(port, ctx) == pki.server.serial
        rotated = pki.new_server_cert()
        rotated.write(pki.dir, "server")
        provider.reload_if_changed()  # the handshake swaps in what a reload produced
        assert served_serial(port, ctx) == rotated.serial
    finally:
        stop.set()
        listener.close()
        thread.join(5)


# --------------------------------------------------------------------------- basic auth


def test_basic_auth_over_tls(pki: PKI) -> None:
    users = {"prometheus": bcrypt_hash("s3cret"), "alice": bcrypt_hash("wonder", prefix="$2a$")}
    path = write_yaml(
        pki.dir / "web.yml", {"tls_server_config": pki.tls(), "basic_auth_users": users}
    )
    with serve(WebConfigProvider(str(path))) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        ctx = client_context(pki.ca_path)
        response = get(url, ctx)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="pki-exporter"'
        assert get(url, ctx, basic("prometheus", "wrong")).status_code == 401
        assert get(url, ctx, basic("nobody", "s3cret")).status_code == 401
        assert get(url, ctx, basic("alice", "s3cret")).status_code == 401
        assert get(url, ctx, "Bearer abc").status_code == 401
        assert get(url, ctx, "Basic !!!").status_code == 401
        assert get(url, ctx, basic("prometheus", "s3cret")).status_code == 200
        assert get(url, ctx, basic("alice", "wonder")).status_code == 200
        # httpx's own basic auth (scheme spelled "Basic"), one keep-alive connection.
        with httpx.Client(verify=ctx, auth=("prometheus", "s3cret")) as client:
            assert [client.get(url).status_code for _ in range(3)] == [200, 200, 200]


def test_htpasswd_default_cost_10_2y_hash(tmp_path: Path) -> None:
    hashed = bcrypt_hash("correct horse", cost=10, prefix="$2y$")
    assert hashed.startswith("$2y$10$")
    path = write_yaml(tmp_path / "web.yml", {"basic_auth_users": {"prom": hashed}})
    with serve(WebConfigProvider(str(path))) as port:
        url = f"http://127.0.0.1:{port}/"
        assert get(url, auth=basic("prom", "correct horse")).status_code == 200
        assert get(url, auth=basic("prom", "correct horse ")).status_code == 401


def test_bcrypt_results_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path / "web.yml", {"basic_auth_users": {"prom": bcrypt_hash("pw")}})
    provider = WebConfigProvider(str(path))
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    assert [provider.authorize(basic("prom", "pw")) for _ in range(50)] == [True] * 50
    assert [provider.authorize(basic("prom", "no")) for _ in range(50)] == [False] * 50
    assert [provider.authorize(basic("ghost", "pw")) for _ in range(5)] == [False] * 5
    assert len(calls) == 3
    # An unknown user still pays one bcrypt (no timing oracle for user names).
    assert calls[2] == auth._DUMMY_HASH


def test_password_longer_than_72_bytes_is_truncated_like_go(tmp_path: Path) -> None:
    long_password = "x" * 72
    path = write_yaml(tmp_path / "web.yml", {"basic_auth_users": {"u": bcrypt_hash(long_password)}})
    provider = WebConfigProvider(str(path))
    assert provider.authorize(basic("u", long_password + "ignored"))
    assert not provider.authorize(basic("u", "x" * 71))


def test_changed_password_takes_effect_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    # Written in place (no rename), twice within the same instant: the content check of
    # recently modified files must still notice the change.
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prom": bcrypt_hash("old")}}))
    with serve(WebConfigProvider(str(path))) as port:
        url = f"http://127.0.0.1:{port}/"
        assert get(url, auth=basic("prom", "old")).status_code == 200
        path.write_text(yaml.safe_dump({"basic_auth_users": {"prom": bcrypt_hash("new")}}))
        assert get(url, auth=basic("prom", "new")).status_code == 200
        assert get(url, auth=basic("prom", "old")).status_code == 401


def test_in_place_rewrite_with_identical_stat_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coarse file-system clock: two writes in one tick leave mtime and ctime as they were."""
    real_stat_key = watch._stat_key
    first_seen: dict[str, tuple[int, ...] | None] = {}

    def coarse_stat_key(path: str) -> tuple[int, ...] | None:
        return first_seen.setdefault(path, real_stat_key(path))  # timestamps never move

    monkeypatch.setattr(watch, "_stat_key", coarse_stat_key)
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prom": bcrypt_hash("one")}}))
    provider = WebConfigProvider(str(path))
    assert provider.authorize(basic("prom", "one"))
    size = path.stat().st_size
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prom": bcrypt_hash("two")}}))
    assert path.stat().st_size == size  # same size, same inode, same (frozen) times
    assert provider.authorize(basic("prom", "two"))
    assert not provider.authorize(basic("prom", "one"))


def test_invalid_new_file_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_hash = bcrypt_hash("old")
    path = write_yaml(
        tmp_path / "web.yml",
        {
            "basic_auth_users": {"prom": old_hash},
            "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
        },
    )
    provider = WebConfigProvider(str(path))
    new_hash = bcrypt_hash("new")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pki_exporter.web.toolkit"):
        write_yaml(path, {"basic_auth_users": {"prom": new_hash[:-1]}})  # truncated hash
        for _ in range(3):
            assert provider.authorize(basic("prom", "old"))
            assert not provider.authorize(basic("prom", "new"))
        assert dict(provider.response_headers()) == {"X-Frame-Options": "deny"}
    assert logged(caplog) == [
        (
            "web config not reloaded, the previous one stays in force",
            f"{path}: basic_auth_users.prom: {parse._BCRYPT_HINT}",
        )
    ]
    text = "\n".join(LOGFMT.format(r) for r in caplog.records)
    assert old_hash not in text
    assert new_hash[:-1] not in text
    # Fixed: the new file applies.
    write_yaml(path, {"basic_auth_users": {"prom": new_hash}})
    assert provider.authorize(basic("prom", "new"))
    assert not provider.authorize(basic("prom", "old"))
    assert dict(provider.response_headers()) == {}


def test_deleted_file_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "web.yml", {"basic_auth_users": {"prom": bcrypt_hash("pw")}})
    provider = WebConfigProvider(str(path))
    path.unlink()
    assert provider.authorize(basic("prom", "pw"))
    assert not provider.authorize(None)


def test_tls_cannot_be_switched_off_by_a_reload(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    path = write_yaml(pki.dir / "web.yml", {"tls_server_config": pki.tls()})
    provider = WebConfigProvider(str(path))
    with caplog.at_level(logging.WARNING, logger="pki_exporter.web.toolkit"):
        write_yaml(path, {"basic_auth_users": {"prom": bcrypt_hash("pw")}})
        assert provider.authorize(None)  # the old config (no users) is still in force
    assert provider.tls_enabled
    assert logged(caplog) == [
        (
            "web config not reloaded, the previous one stays in force",
            f"{path}: tls_server_config: TLS cannot be turned on or off while running; "
            "restart pki-exporter",
        )
    ]
    assert provider.ssl_context() is not None


# --------------------------------------------------------------------------- headers


def test_configured_headers_are_sent_on_every_response(tmp_path: Path) -> None:
    headers = {
        "X-Frame-Options": "sameorigin",
        "X-Content-Type-Options": "nosniff",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "Content-Security-Policy": "default-src 'self'",
        "X-XSS-Protection": "",  # blank: unset
    }
    path = write_yaml(
        tmp_path / "web.yml",
        {"http_server_config": {"headers": headers}, "basic_auth_users": {"p": bcrypt_hash("pw")}},
    )
    with serve(WebConfigProvider(str(path))) as port:
        url = f"http://127.0.0.1:{port}/"
        for response in (get(url), get(url, auth=basic("p", "pw"))):
            assert response.headers["X-Frame-Options"] == "sameorigin"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert (
                response.headers["Strict-Transport-Security"]
                == "max-age=31536000; includeSubDomains"
            )
            assert response.headers["Content-Security-Policy"] == "default-src 'self'"
            assert "X-XSS-Protection" not in response.headers
        assert [get(url).status_code, get(url, auth=basic("p", "pw")).status_code] == [401, 200]


def test_numbers_in_header_values_stay_as_written(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("http_server_config:\n  headers:\n    X-XSS-Protection: 0\n")
    assert dict(load_web_config(str(path)).headers) == {"X-XSS-Protection": "0"}


# --------------------------------------------------------------------------- start-up errors


def _errors_cases(pki: PKI, rogue_key: Path, good_hash: str) -> list[tuple[str, str, str]]:
    """(id, file content, expected message after "<file>: ")."""
    cert, key, ca = pki.cert, pki.key, pki.ca_path
    missing = pki.dir / "missing.crt"
    return [
        (
            "unknown key",
            f"tls_server_config:\n  cert_fil: {cert}\n  key_file: {key}\n",
            "tls_server_config.cert_fil: unknown key (did you mean cert_file?)",
        ),
        (
            "unknown top-level key",
            "basic_auth:\n  u: x\n",
            "basic_auth: unknown key (did you mean basic_auth_users?)",
        ),
        (
            "bad client_auth_type",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  client_auth_type: RequireCert\n",
            'tls_server_config.client_auth_type: unknown value "RequireCert" (expected one of '
            "NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, "
            "RequireAndVerifyClientCert)",
        ),
        (
            "RequireAnyClientCert",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            f"  client_auth_type: RequireAnyClientCert\n  client_ca_file: {ca}\n",
            "tls_server_config.client_auth_type: RequireAnyClientCert is not supported: "
            "Python's ssl module cannot require a client certificate without verifying it; "
            "use RequireAndVerifyClientCert with client_ca_file",
        ),
        (
            "missing cert_file",
            f"tls_server_config:\n  key_file: {key}\n",
            "tls_server_config: missing one of cert or cert_file",
        ),
        (
            "missing key_file",
            f"tls_server_config:\n  cert_file: {cert}\n",
            "tls_server_config: missing one of key or key_file",
        ),
        (
            "TLS settings without certificate",
            "tls_server_config:\n  min_version: TLS13\n",
            "tls_server_config: missing one of cert or cert_file",
        ),
        (
            "unreadable cert_file",
            f"tls_server_config:\n  cert_file: {missing}\n  key_file: {key}\n",
            f"tls_server_config.cert_file: cannot read {missing}: No such file or directory",
        ),
        (
            "cert_file not PEM",
            f"tls_server_config:\n  cert_file: {key}\n  key_file: {key}\n",
            f"tls_server_config.cert_file: no valid PEM certificate in {key}",
        ),
        (
            "key does not match cert",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {rogue_key}\n",
            "tls_server_config.key_file: private key does not match the certificate in cert_file",
        ),
        (
            "key_file not a key",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {cert}\n",
            f"tls_server_config.key_file: no valid PEM private key in {cert}",
        ),
        (
            "cert and cert_file",
            f"tls_server_config:\n  cert: x\n  cert_file: {cert}\n  key_file: {key}\n",
            "tls_server_config.cert: cannot be combined with cert_file",
        ),
        (
            "client_ca_file without client_auth_type",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_ca_file: {ca}\n",
            "tls_server_config.client_ca_file: set, but client_auth_type is NoClientCert (no "
            "client certificate would be asked for; set client_auth_type: "
            "RequireAndVerifyClientCert)",
        ),
        (
            "client_ca_file not PEM",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {key}\n",
            f"tls_server_config.client_ca_file: no valid PEM certificate in {key}",
        ),
        (
            "client_allowed_sans without verification",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  client_allowed_sans: [a.example]\n",
            "tls_server_config.client_allowed_sans: requires client_auth_type "
            "RequireAndVerifyClientCert",
        ),
        (
            "bad min_version",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS1.2\n",
            'tls_server_config.min_version: unknown TLS version "TLS1.2" (expected one of '
            "TLS10, TLS11, TLS12, TLS13)",
        ),
        (
            "min above max",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  min_version: TLS13\n  max_version: TLS12\n",
            "tls_server_config.min_version: TLS13 is above max_version TLS12",
        ),
        (
            "unknown cipher suite",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, ECDHE-RSA-AES128-SHA]\n",
            'tls_server_config.cipher_suites[1]: unknown cipher suite "ECDHE-RSA-AES128-SHA" '
            "(expected a Go crypto/tls name such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)",
        ),
        (
            "unknown curve",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  curve_preferences: [P256]\n",
            'tls_server_config.curve_preferences[0]: unknown curve "P256" (expected one of '
            "CurveP256, CurveP384, CurveP521, X25519)",
        ),
        (
            "prefer_server_cipher_suites not a bool",
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  prefer_server_cipher_suites: sometimes\n",
            "tls_server_config.prefer_server_cipher_suites: expected true or false",
        ),
        (
            "bad bcrypt hash",
            "basic_auth_users:\n  prom: secret-in-clear\n",
            f"basic_auth_users.prom: {parse._BCRYPT_HINT}",
        ),
        (
            "bcrypt cost out of range",
            f"basic_auth_users:\n  prom: '$2y$03${good_hash[7:]}'\n",
            "basic_auth_users.prom: bcrypt cost 3 is outside 4..31",
        ),
        (
            "user name with a colon",
            f"basic_auth_users:\n  'a:b': '{good_hash}'\n",
            'basic_auth_users.a:b: user name must not contain ":"',
        ),
        (
            "hash not a string",
            "basic_auth_users:\n  prom: [1, 2]\n",
            "basic_auth_users.prom: expected a string (the bcrypt hash)",
        ),
        (
            "repeated user",
            f"basic_auth_users:\n  prom: '{good_hash}'\n  prom: '{good_hash}'\n",
            "basic_auth_users.prom: repeated key",
        ),
        (
            "forbidden header",
            "http_server_config:\n  headers:\n    Server: pki-exporter\n",
            "http_server_config.headers.Server: header cannot be configured (allowed: "
            "Content-Security-Policy, Strict-Transport-Security, X-Content-Type-Options, "
            "X-Frame-Options, X-XSS-Protection)",
        ),
        (
            "bad header value",
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
            'http_server_config.headers.X-Frame-Options: invalid value "allow" (expected one '
            "of deny, sameorigin)",
        ),
        (
            "header injection",
            'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\r\\nSet-Cookie: x"\n',
            "http_server_config.headers.Content-Security-Policy: value contains a control "
            "character",
        ),
        (
            "http2 not a bool",
            "http_server_config:\n  http2: 2\n",
            "http_server_config.http2: expected true or false",
        ),
        (
            "rate_limit burst not a number",
            "rate_limit:\n  interval: 1s\n  burst: many\n",
            'rate_limit.burst: expected a whole number >= 0, got "many"',
        ),
        (
            "section not a mapping",
            "tls_server_config: [a, b]\n",
            "tls_server_config: expected a mapping, got a list",
        ),
        (
            "top level not a mapping",
            "- a\n- b\n",
            "expected a mapping at the top level, got a list",
        ),
        (
            "invalid YAML",
            f"basic_auth_users:\n  prom: '{good_hash}'\n bad: indentation\n",
            "invalid YAML (line 3, column 2): expected <block end>, but found '<block mapping start>'",
        ),
    ]


def _write_encrypted_key(pki: PKI) -> Path:
    path = pki.dir / "encrypted.key"
    path.write_bytes(
        pki.server.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return path


def test_startup_errors_have_exact_one_line_messages(pki: PKI) -> None:
    rogue_key = tlsutil.issue_cert(tlsutil.make_ca(), "x").write(pki.dir, "rogue-server")[1]
    good_hash = bcrypt_hash("pw")
    cases = _errors_cases(pki, rogue_key, good_hash)
    encrypted = _write_encrypted_key(pki)
    cases.append(
        (
            "encrypted key",
            f"tls_server_config:\n  cert_file: {pki.cert}\n  key_file: {encrypted}\n",
            f"tls_server_config.key_file: the private key in {encrypted} is encrypted; give "
            "an unencrypted key",
        )
    )
    assert len(cases) >= 30
    failures = []
    for i, (name, content, expected) in enumerate(cases):
        path = pki.dir / f"web-{i}.yml"
        path.write_text(content)
        for load in (load_web_config, WebConfigProvider):
            try:
                load(str(path))
            except WebConfigError as e:
                message = str(e)
                if message != f"{path}: {expected}":
                    failures.append(f"{name}: got {message!r}")
                secrets = ("secret-in-clear", good_hash[7:], "PRIVATE KEY")
                if "\n" in message or any(secret in message for secret in secrets):
                    failures.append(f"{name}: message is not one safe line: {message!r}")
            else:
                failures.append(f"{name}: accepted by {load.__name__}")
    assert failures == []


def test_unreadable_web_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(WebConfigError) as info:
        WebConfigProvider(str(path))
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_loaded_config_uses_toolkit_names_and_defaults(pki: PKI) -> None:
    hashed = bcrypt_hash("pw")
    path = write_yaml(
        pki.dir / "web.yml",
        {
            "tls_server_config": pki.tls(
                client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca_path)
            ),
            "http_server_config": {
                "http2": False,
                "headers": {"X-Content-Type-Options": "nosniff"},
            },
            "basic_auth_users": {"prom": hashed},
        },
    )
    config = load_web_config(str(path))
    assert config.tls == TLSServerConfig(
        cert_file=str(pki.cert),
        key_file=str(pki.key),
        client_ca_file=str(pki.ca_path),
        client_auth_type="RequireAndVerifyClientCert",
        min_version="TLS12",
        max_version="TLS13",
        prefer_server_cipher_suites=True,
    )
    assert dict(config.basic_auth_users) == {"prom": hashed}
    assert dict(config.headers) == {"X-Content-Type-Options": "nosniff"}
    assert hashed not in repr(config)
    with pytest.raises(TypeError):
        config.headers["X-Frame-Options"] = "deny"  # type: ignore[index]
