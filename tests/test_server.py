"""pki_exporter.web.server: ExporterServer with fake endpoints over real sockets.

Routes and their exact answers, the headers every answer carries, the limits on what a
client may send, and slow clients against one worker and half-second deadlines (the
server's timeouts are constructor arguments), without an exporter behind the server.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from cryptography import x509
from prometheus_client import CollectorRegistry, Gauge

from pki_exporter.web.server import (
    CONTENT_SECURITY_POLICY,
    MAX_BODY,
    MAX_HEAD,
    MAX_QUERY,
    MAX_REQUEST_LINE,
    Endpoints,
    ExporterServer,
    Timeouts,
    serve,
)
from pki_exporter.web.server import log as server_log
from pki_exporter.web.toolkit import HTTP_ON_HTTPS_RESPONSE, WebConfigProvider
from tests import tlsutil

pytestmark = pytest.mark.timeout(30)

METRICS_TEXT = b"# HELP demo_value A value.\n# TYPE demo_value gauge\ndemo_value 42.0\n"


@dataclass
class Fakes:
    """What the endpoints answer, and what they were asked."""

    ready: bool = True
    reload_error: str | None = None
    reloads: int = 0
    certificate_calls: list[tuple[str, str]] = field(default_factory=list)
    certificates_fail: bool = False
    certificates_body: bytes = b"serial,subject\n"

    def certificates(self, query: str, accept: str) -> tuple[int, bytes, str]:
        self.certificate_calls.append((query, accept))
        if self.certificates_fail:
            raise RuntimeError("a bug")
        return 200, self.certificates_body, "text/csv; charset=utf-8"

    def reload(self) -> str | None:
        self.reloads += 1
        return self.reload_error


Start = Callable[..., tuple[str, Fakes]]


@pytest.fixture
def start() -> Iterator[Start]:
    servers: list[ExporterServer] = []

    def run(
        web: WebConfigProvider | None = None,
        *,
        lifecycle: bool = True,
        path: str = "/metrics",
        **options: Any,
    ) -> tuple[str, Fakes]:
        """`options`: ExporterServer's keywords (timeouts, workers, web_config_interval)."""
        fakes = Fakes()
        registry = CollectorRegistry()
        Gauge("demo_value", "A value.", registry=registry).set(42)
        endpoints = Endpoints(
            registry=registry,
            ready=lambda: fakes.ready,
            status_page=lambda: "<!doctype html><title>status</title>",
            telemetry_path=path,
            reload=fakes.reload if lifecycle else None,
            certificates=fakes.certificates,
        )
        server = ExporterServer(
            ("127.0.0.1", 0), endpoints, web or WebConfigProvider(None), **options
        )
        serve(server)
        servers.append(server)
        scheme = "https" if server.web.tls_enabled else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}", fakes

    yield run
    for server in servers:
        server.shutdown()
        server.server_close()


def raw(url: str, request: bytes) -> bytes:
    """Send bytes as they are; the whole answer until the server closes."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """Read until what was received ends with `end` (or contains it, for a long answer)."""
    sock.settimeout(5)
    data = b""
    while end not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def status_and_body(answer: bytes) -> tuple[bytes, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


# --------------------------------------------------------------------------- routes


def test_metrics_are_the_registry_in_text_format(start: Start) -> None:
    url, _ = start()
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.content == METRICS_TEXT


def test_metrics_in_openmetrics_and_gzip_when_asked(start: Start) -> None:
    url, _ = start()
    with httpx.Client() as client:
        response = client.get(
            url + "/metrics",
            headers={
                "Accept": "application/openmetrics-text; version=1.0.0",
                "Accept-Encoding": "gzip",
            },
        )
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.content == (
        b"# HELP demo_value A value.\n# TYPE demo_value gauge\ndemo_value 42.0\n# EOF\n"
    )
    plain = httpx.get(url + "/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-length"] == str(len(METRICS_TEXT))


def test_a_custom_telemetry_path_moves_the_metrics(start: Start) -> None:
    url, _ = start(path="/probe/metrics")
    assert httpx.get(url + "/probe/metrics").content == METRICS_TEXT
    missing = httpx.get(url + "/metrics")
    assert (missing.status_code, missing.text) == (404, "Not found\n")


def test_status_page_health_and_readiness(start: Start) -> None:
    url, fakes = start()
    page = httpx.get(url + "/")
    assert (page.status_code, page.headers["content-type"], page.text) == (
        200,
        "text/html; charset=utf-8",
        "<!doctype html><title>status</title>",
    )
    assert (httpx.get(url + "/healthz").status_code, httpx.get(url + "/healthz").text) == (
        200,
        "ok\n",
    )
    assert httpx.get(url + "/ready").text == "ready\n"
    fakes.ready = False
    not_ready = httpx.get(url + "/ready")
    assert (not_ready.status_code, not_ready.text) == (
        503,
        "not ready: not every CA has had a refresh attempt yet\n",
    )


def test_certificates_get_the_query_and_accept_and_are_not_cached(start: Start) -> None:
    url, fakes = start()
    response = httpx.get(url + "/certificates?ca=x&format=csv", headers={"Accept": "text/csv"})
    assert (response.status_code, response.content) == (200, b"serial,subject\n")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert fakes.certificate_calls == [("ca=x&format=csv", "text/csv")]


def test_a_failing_drilldown_is_a_one_line_500(start: Start) -> None:
    url, fakes = start()
    fakes.certificates_fail = True
    response = httpx.get(url + "/certificates")
    assert (response.status_code, response.text) == (500, "failed; see the exporter's log\n")


@pytest.mark.parametrize(
    ("lifecycle", "error", "status", "text"),
    [
        (True, None, 200, "config reloaded\n"),
        (True, "config.yaml: tenants: expected a list", 500, None),
        (False, None, 403, "Lifecycle API is not enabled.\n"),
    ],
    ids=["ok", "error", "off"],
)
def test_reload(
    start: Start, lifecycle: bool, error: str | None, status: int, text: str | None
) -> None:
    url, fakes = start(lifecycle=lifecycle)
    fakes.reload_error = error
    response = httpx.post(url + "/-/reload")
    expected = text or f"failed to reload config: {error}\n"
    assert (response.status_code, response.text) == (status, expected)
    assert fakes.reloads == (1 if lifecycle else 0)
    put = httpx.put(url + "/-/reload")
    assert put.status_code == status


def test_methods_that_a_route_does_not_take(start: Start) -> None:
    url, fakes = start()
    get_reload = httpx.get(url + "/-/reload")
    assert (get_reload.status_code, get_reload.headers["allow"], get_reload.text) == (
        405,
        "POST, PUT",
        "Only POST or PUT requests allowed.\n",
    )
    post_metrics = httpx.post(url + "/metrics")
    assert (post_metrics.status_code, post_metrics.headers["allow"]) == (405, "GET, HEAD")
    delete = httpx.delete(url + "/metrics")
    assert (delete.status_code, delete.headers["allow"], delete.text) == (
        405,
        "GET, HEAD, POST, PUT",
        "Method not allowed\n",
    )
    assert fakes.reloads == 0


def test_head_has_the_headers_and_no_body(start: Start) -> None:
    url, _ = start()
    response = httpx.head(url + "/metrics", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(METRICS_TEXT))
    assert response.content == b""


# --------------------------------------------------------------------------- headers


def test_every_answer_carries_the_security_headers(start: Start) -> None:
    url, _ = start()
    for path in ("/", "/metrics", "/healthz", "/nowhere"):
        headers = httpx.get(url + path).headers
        assert (
            headers["content-security-policy"],
            headers["x-content-type-options"],
            headers["referrer-policy"],
            headers["server"],
        ) == (CONTENT_SECURITY_POLICY, "nosniff", "no-referrer", "pki-exporter"), path


def test_web_config_headers_override_and_add(start: Start, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "http_server_config": {
                    "headers": {
                        "Content-Security-Policy": "default-src 'self'",
                        "X-Frame-Options": "deny",
                    }
                }
            }
        )
    )
    url, _ = start(WebConfigProvider(str(web)))
    headers = httpx.get(url + "/").headers
    assert headers.get_list("content-security-policy") == ["default-src 'self'"]
    assert headers["x-frame-options"] == "deny"
    assert headers["referrer-policy"] == "no-referrer"


def test_basic_auth_guards_all_but_healthz(start: Start, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
    url, fakes = start(WebConfigProvider(str(web)))
    denied = httpx.get(url + "/metrics")
    assert (denied.status_code, denied.headers["www-authenticate"], denied.text) == (
        401,
        'Basic realm="pki-exporter"',
        "Unauthorized\n",
    )
    assert httpx.post(url + "/-/reload").status_code == 401
    assert fakes.reloads == 0
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/metrics", auth=("prom", "pw")).content == METRICS_TEXT


def test_rate_limit_answers_429_before_auth(start: Start, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"rate_limit": {"interval": "1h", "burst": 2}}))
    url, _ = start(WebConfigProvider(str(web)))
    codes = [httpx.get(url + "/metrics").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert httpx.get(url + "/metrics").text == "Too Many Requests\n"
    assert httpx.get(url + "/healthz").status_code == 200  # left out, as of auth


# --------------------------------------------------------------------------- limits


def test_a_get_with_a_body_is_refused(start: Start) -> None:
    url, _ = start()
    answer = raw(url, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert status_and_body(answer) == (
        b"HTTP/1.1 400 Bad Request",
        b"a GET request takes no body\n",
    )


def test_a_long_query_is_414(start: Start) -> None:
    url, _ = start()
    response = httpx.get(url + "/metrics?" + "a" * (MAX_QUERY + 1))
    assert (response.status_code, response.text) == (414, f"query longer than {MAX_QUERY}\n")


def test_a_long_request_line_is_414(start: Start) -> None:
    url, _ = start()
    answer = raw(url, b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n\r\n")
    assert status_and_body(answer) == (
        b"HTTP/1.1 414 Request-URI Too Long",
        b"request line too long\n",
    )


def test_a_large_head_is_431(start: Start) -> None:
    url, _ = start()
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(MAX_HEAD // 100))
    answer = raw(url, b"GET /metrics HTTP/1.1\r\n" + headers + b"\r\n")
    assert status_and_body(answer) == (
        b"HTTP/1.1 431 Request Header Fields Too Large",
        b"request head too large\n",
    )


def test_post_bodies_are_bounded_and_never_chunked(start: Start) -> None:
    url, fakes = start()
    large = httpx.post(url + "/-/reload", content=b"x" * (MAX_BODY + 1))
    assert (large.status_code, large.text) == (413, f"body larger than {MAX_BODY}\n")
    chunked = raw(
        url, b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert status_and_body(chunked) == (
        b"HTTP/1.1 411 Length Required",
        b"a body needs a Content-Length\n",
    )
    small = httpx.post(url + "/-/reload", content=b"x" * MAX_BODY)
    assert small.status_code == 200
    assert fakes.reloads == 1


def test_http_0_9_is_refused(start: Start) -> None:
    url, _ = start()
    answer = raw(url, b"GET /metrics\r\n\r\n")
    assert status_and_body(answer) == (b"HTTP/1.1 400 Bad Request", b"HTTP/0.9 is not supported\n")


# --------------------------------------------------------------------------- slow clients
#
# One worker and short deadlines: a client that held the worker would starve the scrape
# that follows it, and a deadline that did not hold would leave the connection open.
# The clients pace themselves (a byte every 50 ms); nothing here measures time.

LONG = Timeouts(head=60.0, write=60.0, idle=60.0)
"""Longer than any test: the slow client is surely still there when the scrape comes."""
SHORT = Timeouts(head=0.5, write=0.5, idle=0.5)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def connect(url: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connecting: the window offered stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port_of(url)))
    return sock


def trickle_until_answered(sock: socket.socket, byte: bytes, most: int = 200) -> bytes:
    """Send `byte` every 50 ms until the server answers or closes; what it sent back.

    `most` bytes take 10 s: far past a 0.5 s deadline, far short of a 4 KiB body or a
    16 KiB head, so only a deadline on the whole request can end this."""
    sock.settimeout(0.05)
    answer = b""
    for _ in range(most):
        with contextlib.suppress(OSError):  # reset by the server: its answer is below
            sock.send(byte)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return answer
        if not chunk:
            return answer
        answer += chunk
    raise AssertionError(f"still open after {most} bytes; got {answer!r}")


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def tls_web(tmp_path: Path) -> tuple[Path, tlsutil.Issued]:
    """A web config with TLS; (its path, the CA that issued the server certificate)."""
    ca = tlsutil.make_ca()
    cert, key = tlsutil.issue_cert(ca, "old.example", ["127.0.0.1"]).write(tmp_path, "server")
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump({"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}})
    )
    return web, ca


def test_a_trickled_body_holds_no_worker(start: Start) -> None:
    url, fakes = start(timeouts=LONG, workers=1)
    with connect(url) as slow:
        slow.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\nx")
        # The one worker is free: the body is the loop's to wait for.
        assert httpx.get(url + "/metrics", timeout=5).content == METRICS_TEXT
        slow.sendall(b"y" * 4095)  # the rest: now it is answered
        assert status_and_body(read_until(slow, b"config reloaded\n")) == (
            b"HTTP/1.1 200 OK",
            b"config reloaded\n",
        )
    assert fakes.reloads == 1


def test_a_trickled_body_is_cut_at_the_request_deadline(start: Start) -> None:
    url, fakes = start(timeouts=SHORT, workers=1)
    with connect(url) as slow:
        slow.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n")
        answer = trickle_until_answered(slow, b"x")
    assert status_and_body(answer) == (
        b"HTTP/1.1 408 Request Timeout",
        b"request body not received in time\n",
    )
    assert fakes.reloads == 0


def test_a_trickled_head_is_cut_at_the_request_deadline(start: Start) -> None:
    url, _ = start(timeouts=SHORT, workers=1)
    with connect(url) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        answer = trickle_until_answered(slow, b"a")
    assert status_and_body(answer) == (
        b"HTTP/1.1 408 Request Timeout",
        b"request head not received in time\n",
    )


def test_a_kept_alive_connection_is_closed_after_its_idle_timeout(start: Start) -> None:
    url, _ = start(timeouts=Timeouts(head=60.0, write=60.0, idle=0.5))
    with connect(url) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_and_body(read_until(kept, b"ok\n"))[1] == b"ok\n"
        assert read_all(kept) == b""  # nothing more, then closed (within the 5 s read timeout)


def test_plain_http_to_the_tls_port_is_read_by_the_loop(
    start: Start, tls_web: tuple[Path, tlsutil.Issued]
) -> None:
    url, _ = start(WebConfigProvider(str(tls_web[0])), timeouts=LONG, workers=1)
    with connect(url) as plain:
        plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half a head
        assert httpx.get(url + "/metrics", verify=False, timeout=5).content == METRICS_TEXT
        plain.sendall(b"\r\n")
        assert read_all(plain) == HTTP_ON_HTTPS_RESPONSE


def test_plain_http_to_the_tls_port_is_cut_at_the_head_deadline(
    start: Start, tls_web: tuple[Path, tlsutil.Issued]
) -> None:
    url, _ = start(WebConfigProvider(str(tls_web[0])), timeouts=SHORT, workers=1)
    with connect(url) as plain:
        plain.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        assert trickle_until_answered(plain, b"a") == b""  # closed, without an answer


BIG = 32 * 1024 * 1024
"""An answer far larger than what the kernels buffer between a server and a client that
offers a 4 KiB window (about 3 MB on loopback)."""


def slow_reader(url: str, tls: bool) -> socket.socket:
    """A client that asks for a big answer and reads none of it (yet)."""
    sock = connect(url, rcvbuf=4096)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    sock.sendall(b"GET /certificates HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_slow_reader_holds_no_worker(
    start: Start, tls_web: tuple[Path, tlsutil.Issued], tls: bool
) -> None:
    web = WebConfigProvider(str(tls_web[0])) if tls else None
    url, fakes = start(web, timeouts=LONG, workers=1)
    fakes.certificates_body = b"c" * BIG
    with slow_reader(url, tls) as slow:
        while not fakes.certificate_calls:  # answered by the worker, being sent by the loop
            time.sleep(0.01)
        for _ in range(3):
            assert httpx.get(url + "/metrics", verify=False, timeout=5).content == METRICS_TEXT
        # It is all there for a client that reads on.
        head, _, start_of_body = read_until(slow, b"c" * 1024).partition(b"\r\n\r\n")
        body = bytearray(start_of_body)
        slow.settimeout(5)
        while len(body) < BIG:
            chunk = slow.recv(1 << 20)
            assert chunk, len(body)
            body += chunk
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert (len(body), body.count(b"c")) == (BIG, BIG)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_slow_reader_is_cut_at_the_write_deadline(
    start: Start,
    tls_web: tuple[Path, tlsutil.Issued],
    tls: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    web = WebConfigProvider(str(tls_web[0])) if tls else None
    # Only the write deadline is short: under SHORT's 0.5 s head deadline, which covers the
    # TLS handshake, a loaded machine once kept the client's handshake from ending in time.
    url, fakes = start(web, timeouts=Timeouts(head=60.0, write=0.5, idle=60.0), workers=1)
    fakes.certificates_body = b"c" * BIG
    caplog.set_level(logging.DEBUG, logger=server_log.name)
    with slow_reader(url, tls) as slow:
        slow.settimeout(5)
        received = 0
        slow_until = time.monotonic() + 10

        def cut() -> bool:
            return any(r.getMessage() == "deadline passed" for r in caplog.records)

        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            # Slow (a few KiB each 50 ms) until the server says it passed the deadline, or
            # for 10 s; then fast: only a deadline on the whole answer stops the rest from
            # coming.
            while chunk := slow.recv(65536):
                received += len(chunk)
                if not cut() and time.monotonic() < slow_until:
                    time.sleep(0.05)
    # Cut while writing the answer (the server says so: the reset it sends makes the
    # client's kernel drop what it held, so a client that a loaded machine kept from
    # reading before the deadline reads nothing at all), long before the end.
    cuts = [r for r in caplog.records if r.getMessage() == "deadline passed"]
    assert [getattr(r, "fields", None) for r in cuts] == [{"state": "write"}]
    assert received < BIG // 2, received


class RecordingProvider(WebConfigProvider):
    """Notes the thread of every check of the web config's files."""

    def __init__(self, path: str) -> None:
        self.threads: list[str] = []
        super().__init__(path)

    def reload_if_changed(self) -> None:
        self.threads.append(threading.current_thread().name)
        super().reload_if_changed()


def served_cn(url: str) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port_of(url)), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_certificate_reloads_run_off_the_event_loop(
    start: Start, tls_web: tuple[Path, tlsutil.Issued]
) -> None:
    path, ca = tls_web
    web = RecordingProvider(str(path))
    url, _ = start(web, web_config_interval=0.05)
    assert served_cn(url) == "CN=old.example"
    tlsutil.issue_cert(ca, "new.example", ["127.0.0.1"]).write(path.parent, "server")
    for _ in range(200):  # the server's own check notices within 0.05 s; 10 s at most
        if served_cn(url) == "CN=new.example":
            break
        time.sleep(0.05)
    assert served_cn(url) == "CN=new.example"
    assert "pki-http-web-config" in web.threads
    assert "pki-http" not in web.threads  # the loop's thread (serve()) never read a file


def test_answers_held_for_slow_readers_are_bounded(start: Start) -> None:
    """Past `max_unsent` the oldest slow reader is closed: its answer is dropped, the
    newer one is sent whole."""
    url, fakes = start(timeouts=LONG, max_unsent=BIG)
    fakes.certificates_body = b"c" * BIG
    with slow_reader(url, tls=False) as oldest:
        # Its answer is being sent (the first bytes came): not just asked for, which let a
        # loaded machine send the newest answer first, making it the oldest.
        assert select.select([oldest], [], [], 10)[0] == [oldest]
        with slow_reader(url, tls=False) as newest:
            assert len(read_answer(newest)) == BIG
        assert 0 < len(read_answer(oldest)) < BIG // 2  # what the kernels held, then closed


def read_answer(sock: socket.socket) -> bytes:
    """The body of the one answer on `sock`, as much of it as comes before the close."""
    data = bytearray()
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0 and len(data) - head_end - 4 >= BIG:
                break
    return bytes(data[data.find(b"\r\n\r\n") + 4 :])
