"""Property tests of the HTTP surface, over real sockets to a real exporter process.

Hypothesis writes query strings for ``/certificates`` and ``/`` and whole request heads
(methods, targets, versions, headers: malformed, huge, non-UTF-8, repeated). Whatever it
sends, the answer is a status line below 500, a client error is one line of text (or of
JSON), and the exporter's log never holds a traceback.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from tests.exporter_proc import ExporterProcess
from tests.fuzzing import fuzz_settings
from tests.test_hostile_clients import start_exporter

pytestmark = pytest.mark.timeout(300)

FUZZ = fuzz_settings(150, health_checks=(HealthCheck.function_scoped_fixture, HealthCheck.too_slow))


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    sim, proc = start_exporter(tmp_path_factory.mktemp("fuzz"), "--web.drilldown", "full")
    try:
        yield proc
    finally:
        log = proc.stop()
        sim.close()
        assert "Traceback" not in log, log[-5000:]
        assert "level=error" not in log, log[-5000:]


def exchange(proc: ExporterProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection; the first answer (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", proc.port), timeout=15) as sock:
        with contextlib.suppress(OSError):  # an oversized head may be refused before its end
            sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 "), (request[:200], data[:200])
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        head_request = request.startswith(b"HEAD ")
        while len(body) < length and not head_request:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            body += chunk
        return status, headers, body


def check(status: int, headers: dict[str, str], body: bytes) -> None:
    assert 200 <= status < 500, (status, body[:300])
    assert headers.get("x-content-type-options") == "nosniff"
    if status >= 400 and body:
        text = body.decode("utf-8")
        assert text.endswith("\n") and text.count("\n") == 1, text
        assert "Traceback" not in text


# Query strings: known and unknown names, repeated, odd values, raw bytes percent-encoded.
names = st.sampled_from(["ca", "tenant", "within_days", "limit", "format", "x", "", "ca[]"])
values = st.one_of(
    st.text(max_size=30),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["json", "html", "7", "90", "0", "1000", "1001", "Contoso Issuing CA 1"]),
    st.binary(max_size=20).map(lambda b: quote(b, safe="")),
)
pairs = st.lists(st.tuples(names, values), max_size=6)
raw_queries = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
    max_size=200,
)


def _encode(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(n, safe='[]')}={quote(v, safe='%')}" for n, v in pairs)


@FUZZ
@given(
    path=st.sampled_from(["/certificates", "/"]),
    query=st.one_of(pairs.map(_encode), raw_queries),
    accept=st.sampled_from(["", "application/json", "text/html", "*/*"]),
)
def test_query_strings(exporter: ExporterProcess, path: str, query: str, accept: str) -> None:
    target = f"{path}?{query}".encode("latin-1", "replace").replace(b" ", b"%20")
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if accept:
        request += f"Accept: {accept}\r\n".encode()
    status, headers, body = exchange(exporter, request + b"\r\n")
    check(status, headers, body)
    if path == "/":
        assert status == 200
    if status >= 400 and headers["content-type"] == "application/json":
        assert body.count(b"\n") == 1 and body.startswith(b'{"status": ')


# Whole request heads: any bytes but CR and LF inside a line (those end it).
line_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
methods = st.one_of(
    st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"get", b""]),
    line_bytes,
)
targets = st.one_of(
    st.sampled_from([b"/", b"/metrics", b"/certificates", b"/-/reload", b"*", b"//x", b"/%zz"]),
    line_bytes.map(lambda b: b"/" + b),
    st.integers(0, 20000).map(lambda n: b"/certificates?ca=" + b"a" * n),
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1", b"http/1.1", b""])
header = st.tuples(
    st.one_of(
        st.sampled_from([b"Host", b"Content-Length", b"Accept", b"Transfer-Encoding"]), line_bytes
    ),
    st.one_of(line_bytes, st.integers(0, 30000).map(lambda n: b"v" * n)),
)


@FUZZ
@given(
    method=methods,
    target=targets,
    version=versions,
    headers=st.lists(header, max_size=8),
    separator=st.sampled_from([b"\r\n", b"\n"]),
)
def test_raw_request_heads(
    exporter: ExporterProcess,
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    separator: bytes,
) -> None:
    line = b" ".join(part for part in (method, target, version) if part)
    if not line.strip():
        line = b"GET"  # an empty first line is a closed connection, not a request
    head = line + separator
    for name, value in headers:
        head += name + b": " + value + separator
    status, response_headers, body = exchange(exporter, head + b"Connection: close" + separator * 2)
    check(status, response_headers, body)


def test_the_log_is_clean_so_far(exporter: ExporterProcess) -> None:
    log = exporter.log()
    assert "Traceback" not in log and "level=error" not in log
    assert Path(exporter.cwd).exists()
