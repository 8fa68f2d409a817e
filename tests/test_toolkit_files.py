"""The exporter-toolkit's own web config test files, run through pki-exporter's loader
and its real HTTP(S) server on loopback (tests/data/exporter-toolkit, see its README).

Every file the toolkit accepts must start and serve here, except the two that Python's
ssl cannot do (RequireAnyClientCert, listed in docs/web-config.md); every file it refuses
must be refused with one line that names the key.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pki_exporter.web.server import Endpoints, ExporterServer, serve
from pki_exporter.web.toolkit import (
    RateLimit,
    RateLimiter,
    WebConfigError,
    WebConfigProvider,
)

DATA = Path(__file__).parent / "data" / "exporter-toolkit"
# The server certificate itself is the client's trust anchor: OpenSSL refuses the toolkit's
# CA chain for a server ("unsuitable certificate purpose": its CAs carry anyExtendedKeyUsage).
SERVER_CERT = DATA / "server.crt"

#: The files the toolkit accepts (its tls_config_test.go, and its code for the two files
#: its tests do not load: *_clientCAs_missing.bad.yml has the very content of
#: *.good.blocking.yml, which the toolkit loads and serves). Value: TLS on?
ACCEPTED = {
    "tls_config_noAuth.requireandverifyclientcert.good.yml": True,
    "web_config_auth_clientCAs_missing.bad.yml": True,
    "web_config_auth_client_san.bad.yaml": True,
    "web_config_auth_client_san.good.yaml": True,
    "web_config_empty.yml": False,
    "web_config_headers.good.yml": False,
    "web_config_noAuth.good.blocking.yml": True,
    "web_config_noAuth.good.yml": True,
    "web_config_noAuth_allCiphers.good.yml": True,
    "web_config_noAuth_allCurves.good.yml": True,
    "web_config_noAuth_noHTTP2.good.yml": True,
    "web_config_noAuth_someCiphers.good.yml": True,
    "web_config_noAuth_someCiphers_noOrder.good.yml": True,
    "web_config_noAuth_someCurves.good.yml": True,
    "web_config_noAuth_tlsInline.good.yml": True,
    "web_config_rate_limiter_nonblocking.yaml": False,
    "web_config_rate_limiter_one_second.yaml": False,
    "web_config_users.good.yml": True,
    "web_config_users_noTLS.good.yml": False,
}

_ANY = (
    "tls_server_config.client_auth_type: RequireAnyClientCert is not supported: Python's ssl "
    "module cannot require a client certificate without verifying it; use "
    "RequireAndVerifyClientCert with client_ca_file"
)
#: Accepted by the toolkit, refused here: what Python's ssl cannot do.
PYTHON_CANNOT = {
    "tls_config_noAuth.requireanyclientcert.good.yml": _ANY,
    "tls_config_noAuth.requireanyclientcertkeyinline.good.yml": _ANY,
}

_CA_WITHOUT_AUTH = (
    "tls_server_config.client_ca_file: set, but client_auth_type is NoClientCert (no client "
    "certificate would be asked for; set client_auth_type: RequireAndVerifyClientCert)"
)
#: Refused by the toolkit, and here: file -> the one line (after "<file>: ").
REFUSED = {
    "web_config_auth_clientCAs_invalid.bad.yml": _CA_WITHOUT_AUTH,
    "web_config_auth_user_list_invalid.bad.yml": 'basic_auth_users.john: not a bcrypt hash (expected "$2y$", "$2b$" or "$2a$", a two-digit cost and 53 characters, as "htpasswd -nBC 10" writes it)',
    "web_config_headers_content_type_options.bad.yml": 'http_server_config.headers.X-Content-Type-Options: invalid value "sniff" (expected one of nosniff)',
    "web_config_headers_extra_header.bad.yml": "http_server_config.headers.Content-Type: header cannot be configured (allowed: Content-Security-Policy, Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection)",
    "web_config_headers_frame_options.bad.yml": 'http_server_config.headers.X-Frame-Options: invalid value "foo" (expected one of deny, sameorigin)',
    "web_config_junk.yml": "expected a mapping at the top level, got a scalar",
    "web_config_junk_key.yml": "tls_server_config.cert_filse: unknown key (did you mean cert_file?)",
    "web_config_noAuth.bad.yml": _CA_WITHOUT_AUTH,
    "web_config_noAuth_certPath_empty.bad.yml": "tls_server_config: missing one of cert or cert_file",
    "web_config_noAuth_certPath_invalid.bad.yml": f"tls_server_config.cert_file: cannot read {DATA}/somefile: No such file or directory",
    "web_config_noAuth_certPath_keyPath_empty.bad.yml": 'tls_server_config.client_auth_type: unknown value "x" (expected one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)',
    "web_config_noAuth_certPath_keyPath_invalid.bad.yml": f"tls_server_config.cert_file: cannot read {DATA}/somefile: No such file or directory",
    "web_config_noAuth_cert_empty.bad.yml": "tls_server_config: missing one of cert or cert_file",
    "web_config_noAuth_inventedCiphers.bad.yml": 'tls_server_config.cipher_suites[0]: unknown cipher suite "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048" (expected a Go crypto/tls name such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)',
    "web_config_noAuth_inventedCurves.bad.yml": 'tls_server_config.curve_preferences[0]: unknown curve "CurveP257" (expected one of CurveP256, CurveP384, CurveP521, X25519)',
    "web_config_noAuth_keyPath_empty.bad.yml": "tls_server_config: missing one of key or key_file",
    "web_config_noAuth_keyPath_invalid.bad.yml": f"tls_server_config.cert_file: cannot read {DATA}/server.cert: No such file or directory",
    "web_config_noAuth_key_empty.bad.yml": "tls_server_config: missing one of key or key_file",
    "web_config_noAuth_noHTTP2Cipher.bad.yml": "tls_server_config.cipher_suites: lacks the cipher HTTP/2 requires (one of TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 or TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); add one, or set http_server_config.http2: false (the toolkit refuses it too)",
    "web_config_noAuth_wrongTLSVersion.bad.yml": 'tls_server_config.min_version: unknown TLS version "TLS111" (expected one of TLS10, TLS11, TLS12, TLS13)',
}


def test_every_toolkit_file_is_classified() -> None:
    files = {p.name for p in DATA.iterdir() if p.suffix in (".yml", ".yaml")}
    assert len(files) == 41
    assert files == set(ACCEPTED) | set(PYTHON_CANNOT) | set(REFUSED)


@contextmanager
def exporter_server(name: str) -> Iterator[tuple[int, WebConfigProvider]]:
    web = WebConfigProvider(str(DATA / name))
    endpoints = Endpoints(
        registry=CollectorRegistry(auto_describe=False),
        ready=lambda: True,
        status_page=lambda: "<p>status</p>",
    )
    server = ExporterServer(("127.0.0.1", 0), endpoints, web)
    serve(server)
    try:
        yield server.server_address[1], web
    finally:
        server.shutdown()
        server.server_close()


def client_context(
    cert: str | None = None,
    *,
    ciphers: str | None = None,
    curve: str | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(SERVER_CERT))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert is not None:
        ctx.load_cert_chain(str(DATA / f"{cert}.pem"), str(DATA / f"{cert}.key"))
    if ciphers is not None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(ciphers)
    if max_version is not None:
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.maximum_version = max_version
    if curve is not None:
        ctx.set_ecdh_curve(curve)
    return ctx


def get(
    port: int, tls: ssl.SSLContext | None, path: str = "/metrics", auth: str | None = None
) -> int:
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def refused_handshake(port: int, tls: ssl.SSLContext) -> bool:
    """True when the TLS connection or the first request over it fails."""
    try:
        get(port, tls)
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return True
    return False


#: The client certificate the toolkit's tests present with a file.
CLIENT_CERT = {
    "tls_config_noAuth.requireandverifyclientcert.good.yml": "client_selfsigned",
    "web_config_auth_client_san.good.yaml": "client2_selfsigned",
    "web_config_auth_client_san.bad.yaml": "client2_selfsigned",
}
#: Files that start but let no test client in, in the toolkit too: a client certificate
#: verified against the system's roots is required; the SAN is not among the allowed.
SERVES_NO_TEST_CLIENT = {
    "web_config_auth_clientCAs_missing.bad.yml",
    "web_config_noAuth.good.blocking.yml",
    "web_config_auth_client_san.bad.yaml",
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_files_start_and_serve(name: str) -> None:
    with exporter_server(name) as (port, web):
        assert web.tls_enabled is ACCEPTED[name]
        tls = client_context(CLIENT_CERT.get(name)) if web.tls_enabled else None
        if name in SERVES_NO_TEST_CLIENT:
            assert tls is not None
            assert refused_handshake(port, tls)
            return
        auth = "dave:dave123" if "users" in name else None
        expected = 429 if name == "web_config_rate_limiter_one_second.yaml" else 200
        assert get(port, tls, auth=auth) == expected
        if auth is not None:
            assert get(port, tls, auth="dave:bad") == 401
        # liveness stays open (and is not rate limited) in every case
        assert get(port, tls, "/healthz") == 200


@pytest.mark.parametrize("name", sorted(PYTHON_CANNOT))
def test_what_python_cannot_do_is_refused_in_one_line(name: str) -> None:
    with pytest.raises(WebConfigError) as caught:
        WebConfigProvider(str(DATA / name))
    assert str(caught.value) == f"{DATA / name}: {PYTHON_CANNOT[name]}"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_files_are_refused_in_one_line_naming_the_key(name: str) -> None:
    with pytest.raises(WebConfigError) as caught:
        WebConfigProvider(str(DATA / name))
    assert str(caught.value) == f"{DATA / name}: {REFUSED[name]}"
    assert "\n" not in str(caught.value)


def test_verify_client_cert_if_given_without_ca_uses_the_system_roots() -> None:
    with exporter_server("web_config_noAuth.good.yml") as (port, _web):
        assert get(port, client_context()) == 200
        # a self-signed client certificate is not under any system root: refused
        assert refused_handshake(port, client_context("client_selfsigned"))


def test_require_and_verify_without_ca_blocks_clients_without_a_system_rooted_cert() -> None:
    with exporter_server("web_config_noAuth.good.blocking.yml") as (port, _web):
        assert refused_handshake(port, client_context())
        assert refused_handshake(port, client_context("client_selfsigned"))


def test_require_and_verify_with_the_toolkit_client_ca() -> None:
    with exporter_server("tls_config_noAuth.requireandverifyclientcert.good.yml") as (port, _web):
        assert get(port, client_context("client_selfsigned")) == 200
        assert refused_handshake(port, client_context())


def test_client_allowed_sans_as_in_the_toolkit() -> None:
    with exporter_server("web_config_auth_client_san.good.yaml") as (port, _web):
        assert get(port, client_context("client2_selfsigned")) == 200
    with exporter_server("web_config_auth_client_san.bad.yaml") as (port, _web):
        assert refused_handshake(port, client_context("client2_selfsigned"))


def test_cipher_suites_as_in_the_toolkit() -> None:
    with exporter_server("web_config_noAuth_someCiphers.good.yml") as (port, _web):
        assert get(port, client_context(ciphers="ECDHE-RSA-AES128-GCM-SHA256")) == 200
        assert refused_handshake(port, client_context(ciphers="ECDHE-RSA-AES256-SHA"))
    with exporter_server("web_config_noAuth.good.yml") as (port, _web):
        assert refused_handshake(port, client_context(max_version=ssl.TLSVersion.TLSv1_1))


def test_curves_as_in_the_toolkit_with_the_first_of_several() -> None:
    with exporter_server("web_config_noAuth_someCurves.good.yml") as (port, _web):
        assert get(port, client_context(curve="secp521r1")) == 200
        assert refused_handshake(port, client_context(curve="secp384r1"))
    # Python's ssl sets one curve: of CurveP256, CurveP384, CurveP521, X25519 the first
    with exporter_server("web_config_noAuth_allCurves.good.yml") as (port, web):
        assert web.config.notes == (
            "tls_server_config.curve_preferences: Python's ssl can use one curve only: using "
            "CurveP256 (the first), not CurveP384, CurveP521, X25519",
        )
        assert get(port, client_context(curve="prime256v1")) == 200
        assert refused_handshake(port, client_context(curve="X25519"))


def test_rate_limit_answers_429_when_the_bucket_is_empty() -> None:
    with exporter_server("web_config_rate_limiter_one_second.yaml") as (port, web):
        assert web.config.rate_limit == RateLimit(interval=1.0, burst=0)
        assert [get(port, None) for _ in range(10)] == [429] * 10
    with exporter_server("web_config_rate_limiter_nonblocking.yaml") as (port, web):
        assert web.config.rate_limit is None
        assert [get(port, None) for _ in range(10)] == [200] * 10


def test_rate_limiter_is_a_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(RateLimit(interval=2.0, burst=3), clock=lambda: now[0])
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 1.0  # half a token
    assert limiter.allow() is False
    now[0] += 1.0  # the other half
    assert [limiter.allow(), limiter.allow()] == [True, False]
    now[0] += 60.0  # refills up to burst only
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rate_limit:\n  interval: 1x\n",
            'rate_limit.interval: invalid duration "1x" (expected e.g. 1s, 500ms, 1m)',
        ),
        (
            "rate_limit:\n  interval: -1s\n",
            'rate_limit.interval: invalid duration "-1s" (expected e.g. 1s, 500ms, 1m)',
        ),
        (
            "rate_limit:\n  interval: 1s\n  burst: -2\n",
            'rate_limit.burst: expected a whole number >= 0, got "-2"',
        ),
        (
            "rate_limit:\n  intervall: 1s\n",
            "rate_limit.intervall: unknown key (did you mean interval?)",
        ),
    ],
)
def test_bad_rate_limit_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as caught:
        WebConfigProvider(str(path))
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("interval", "seconds"),
    [("1m30s", 90.0), ("500ms", 0.5), ("1000000000", 1.0), ("1.5h", 5400.0)],
)
def test_rate_limit_interval_reads_go_durations(
    tmp_path: Path, interval: str, seconds: float
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"rate_limit:\n  interval: {interval}\n  burst: 7\n")
    assert WebConfigProvider(str(path)).config.rate_limit == RateLimit(seconds, 7)
