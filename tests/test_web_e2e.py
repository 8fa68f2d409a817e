"""The exporter's own endpoints, protected with --web.config.file: the real process, real
TLS clients with a throw-away CA, client certificates, bcrypt basic auth, headers.

/healthz is deliberately open (liveness probes carry no password); everything else asks
for a user. With RequireAndVerifyClientCert no connection gets past the handshake without
a client certificate signed by the configured CA, /healthz included.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from pki_exporter.web.toolkit import HTTP_ON_HTTPS_RESPONSE
from tests import tlsutil
from tests.conftest import ANCHOR, FAKE_NOW
from tests.exporter_proc import (
    ExporterProcess,
    base_env,
    parse_samples,
    tenant_config,
    write_config,
)
from tests.test_exporter_e2e import WINDOWS, certificate_samples

pytestmark = pytest.mark.timeout(120)

USER = "prometheus"
PASSWORD = "correct horse battery staple"
HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "deny",
    "Content-Security-Policy": "default-src 'self'",
}


def htpasswd(password: str, cost: int = 10) -> str:
    """As ``htpasswd -nBC 10`` writes it: $2y$, cost 10."""
    return "$2y$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()[4:]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    client: tuple[Path, Path]
    rogue: tuple[Path, Path]

    def context(self, client: tuple[Path, Path] | None = None, **kw: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client is not None:
            ctx.load_cert_chain(str(client[0]), str(client[1]))
        for key, value in kw.items():
            setattr(ctx, key, value)
        return ctx


@pytest.fixture(scope="module")
def material() -> dict[str, tlsutil.Issued]:
    ca = tlsutil.make_ca("pki-exporter e2e CA")
    rogue_ca = tlsutil.make_ca("rogue CA")
    return {
        "ca": ca,
        "server": tlsutil.issue_cert(ca, "pki-exporter", ["127.0.0.1", "localhost"]),
        "client": tlsutil.issue_cert(ca, "prometheus", ["prometheus.example"], client=True),
        "rogue": tlsutil.issue_cert(rogue_ca, "prometheus", ["prometheus.example"], client=True),
    }


@pytest.fixture
def pki(tmp_path: Path, material: dict[str, tlsutil.Issued]) -> Pki:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(material["ca"].cert_pem())
    cert, key = material["server"].write(tmp_path, "server")
    return Pki(
        ca=ca,
        cert=cert,
        key=key,
        client=material["client"].write(tmp_path, "client"),
        rogue=material["rogue"].write(tmp_path, "rogue"),
    )


class Secured(ExporterProcess):
    """An ExporterProcess whose own probes go over TLS with a client certificate."""

    ctx: ssl.SSLContext | None = None

    def wait_http(self, path: str, timeout: float = 30.0, **kw: Any) -> httpx.Response:
        kw.setdefault("verify", self.ctx)
        kw.setdefault("headers", basic(USER, PASSWORD))
        return super().wait_http(path, timeout, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("verify", self.ctx)
        return super().get(path, **kw)


def write_web(path: Path, doc: dict[str, Any]) -> Path:
    tlsutil.atomic_write(path, yaml.safe_dump(doc, sort_keys=False))
    return path


def full_web_config(pki: Pki, password_hash: str) -> dict[str, Any]:
    return {
        "tls_server_config": {
            "cert_file": str(pki.cert),
            "key_file": str(pki.key),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": str(pki.ca),
            "min_version": "TLS12",
            "max_version": "TLS13",
        },
        "basic_auth_users": {USER: password_hash},
        "http_server_config": {"headers": HEADERS},
    }


def start(sim: Any, tmp_path: Path, web: Path, ctx: ssl.SSLContext | None, *extra: str) -> Secured:
    tenant = sim.tenants[0]
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, tenant, "contoso")])
    proc = Secured(
        args=[
            "--config.file",
            str(cfg),
            "--web.config.file",
            str(web),
            "--web.listen-address",
            "127.0.0.1:0",
            *extra,
        ],
        env=base_env(PKI_EXPORTER_FAKE_NOW=FAKE_NOW, SECRET_CONTOSO=tenant.client_secret),
        cwd=tmp_path,
        scheme="https" if ctx is not None else "http",
    )
    proc.ctx = ctx
    return proc


@pytest.fixture
def running(start_simulator: Any) -> Any:
    procs: list[ExporterProcess] = []

    def run(*args: Any, **kw: Any) -> Secured:
        sim = start_simulator(seed=71, tenants=1, cas=2, certificates=300)
        proc = start(sim, *args, **kw)
        procs.append(proc)
        proc.start()
        proc.sim = sim  # type: ignore[attr-defined]
        return proc

    yield run
    for proc in procs:
        proc.stop()


def test_mutual_tls_and_basic_auth_protect_everything_but_healthz(
    pki: Pki, tmp_path: Path, running: Any
) -> None:
    web = write_web(tmp_path / "web.yml", full_web_config(pki, htpasswd(PASSWORD)))
    ctx = pki.context(pki.client)
    exporter = running(tmp_path, web, ctx, "--web.enable-lifecycle")
    sim = exporter.sim
    url = exporter.url
    with httpx.Client(verify=ctx, timeout=10) as client:
        # The right user: exact numbers, over TLS with a verified client certificate.
        ok = client.get(url + "/metrics", headers=basic(USER, PASSWORD))
        assert ok.status_code == 200
        for name, value in HEADERS.items():
            assert ok.headers[name] == value
        deadline = time.monotonic() + 30
        while True:
            samples = parse_samples(
                client.get(url + "/metrics", headers=basic(USER, PASSWORD)).text
            )
            ok_cas = [v for k, v in samples.items() if k[0] == "intune_cloudpki_refresh_success"]
            if ok_cas == [1.0, 1.0]:
                break
            assert time.monotonic() < deadline, samples
            time.sleep(0.1)
        truth = sim.expected_samples(
            now=ANCHOR, windows=WINDOWS, tenant_names={sim.tenants[0].tenant_id: "contoso"}
        )
        assert certificate_samples(samples) == certificate_samples(dict(truth))
        # Wrong password, unknown user, no credentials, a broken header: 401 with a challenge.
        for headers in (
            basic(USER, "wrong"),
            basic("admin", PASSWORD),
            {},
            {"Authorization": "Basic !!!"},
            {"Authorization": "Bearer x"},
        ):
            for path in ("/metrics", "/", "/ready", "/-/reload"):
                denied = client.get(url + path, headers=headers)
                assert denied.status_code == 401, (path, headers)
                assert denied.headers["WWW-Authenticate"] == 'Basic realm="pki-exporter"'
                assert denied.headers["X-Frame-Options"] == "deny"  # headers on 401s too
                assert "intune_cloudpki" not in denied.text
            assert client.post(url + "/-/reload", headers=headers).status_code == 401
        for path in ("/", "/ready"):
            assert client.get(url + path, headers=basic(USER, PASSWORD)).status_code == 200
        assert client.post(url + "/-/reload", headers=basic(USER, PASSWORD)).status_code == 200
        # /healthz answers without a password (the client certificate is still required).
        health = client.get(url + "/healthz")
        assert (health.status_code, health.text) == (200, "ok\n")
        assert health.headers["Strict-Transport-Security"] == HEADERS["Strict-Transport-Security"]
    # No client certificate, or one from another CA: no TLS session at all.
    for refused in (pki.context(), pki.context(pki.rogue)):
        with pytest.raises(
            (ssl.SSLError, httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
        ):
            httpx.get(url + "/healthz", verify=refused, timeout=5)
    # The client checks the server too: without the test CA the certificate is not trusted.
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", verify=True, timeout=5)


def test_changed_password_works_without_restart(pki: Pki, tmp_path: Path, running: Any) -> None:
    web = write_web(tmp_path / "web.yml", full_web_config(pki, htpasswd(PASSWORD)))
    ctx = pki.context(pki.client)
    exporter = running(tmp_path, web, ctx)
    assert exporter.proc is not None
    pid = exporter.proc.pid
    new = "a new password, rotated"
    write_web(web, full_web_config(pki, htpasswd(new)))
    with httpx.Client(verify=ctx, timeout=10) as client:
        deadline = time.monotonic() + 10
        while client.get(exporter.url + "/metrics", headers=basic(USER, new)).status_code != 200:
            assert time.monotonic() < deadline, "the new password was not taken up"
            time.sleep(0.1)
        assert (
            client.get(exporter.url + "/metrics", headers=basic(USER, PASSWORD)).status_code == 401
        )
        # A broken file while running: the last good one stays in force.
        (tmp_path / "web.yml").write_text("basic_auth_users: {prometheus: not-a-hash}\n")
        assert client.get(exporter.url + "/metrics", headers=basic(USER, new)).status_code == 200
    assert exporter.proc.pid == pid and exporter.proc.poll() is None
    log = exporter.stop()
    assert "not-a-hash" not in log and new not in log and PASSWORD not in log
    assert "web config not reloaded, the previous one stays in force" in log


def test_plain_http_to_the_tls_port_gets_a_clean_400(
    pki: Pki, tmp_path: Path, running: Any
) -> None:
    web = write_web(tmp_path / "web.yml", full_web_config(pki, htpasswd(PASSWORD)))
    ctx = pki.context(pki.client)
    exporter = running(tmp_path, web, ctx)
    plain = httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)
    assert plain.status_code == 400
    assert plain.text == "Client sent an HTTP request to an HTTPS server.\n"
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert raw.makefile("rb").read() == HTTP_ON_HTTPS_RESPONSE
    # The port still speaks TLS to the next client, and the process lives on.
    response = httpx.get(exporter.url + "/healthz", verify=ctx, timeout=5)
    assert response.status_code == 200
    assert exporter.proc is not None and exporter.proc.poll() is None


def test_tls13_only_refuses_a_tls12_client(pki: Pki, tmp_path: Path, running: Any) -> None:
    doc = full_web_config(pki, htpasswd(PASSWORD, cost=4))
    doc["tls_server_config"]["min_version"] = "TLS13"
    web = write_web(tmp_path / "web.yml", doc)
    ctx = pki.context(pki.client)
    exporter = running(tmp_path, web, ctx)
    old = pki.context(pki.client, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises((ssl.SSLError, httpx.ConnectError)):
        httpx.get(exporter.url + "/healthz", verify=old, timeout=5)
    with (
        socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"


def test_basic_auth_without_tls_warns(tmp_path: Path, running: Any) -> None:
    web = write_web(tmp_path / "web.yml", {"basic_auth_users": {USER: htpasswd(PASSWORD, cost=4)}})
    exporter = running(tmp_path, web, None)
    assert exporter.get("/metrics").status_code == 401
    assert exporter.get("/metrics", headers=basic(USER, PASSWORD)).status_code == 200
    assert exporter.get("/healthz").status_code == 200
    log = exporter.stop()
    (line,) = [line for line in log.splitlines() if "passwords travel in clear text" in line]
    assert "level=warn " in line and "basic_auth_users without tls_server_config" in line


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"tls_server_config": {"cert_fil": "x"}}, "tls_server_config.cert_fil: unknown key"),
        ({"tls_server_config": {"min_version": "TLS13"}}, "missing one of cert or cert_file"),
        (
            {"tls_server_config": {"cert_file": "missing.crt", "key_file": "missing.key"}},
            "tls_server_config.cert_file: cannot read",
        ),
        (
            "RequireCert",
            'tls_server_config.client_auth_type: unknown value "RequireCert"',
        ),
        ({"basic_auth_users": {USER: PASSWORD}}, "basic_auth_users.prometheus: not a bcrypt hash"),
        (
            {"http_server_config": {"headers": {"Server": "x"}}},
            "http_server_config.headers.Server: header cannot be configured",
        ),
        ("tls_server_config: [\n", "invalid YAML"),
    ],
    ids=["typo", "no-cert", "missing-files", "client-auth", "plain-password", "header", "yaml"],
)
def test_invalid_web_config_is_refused_at_start(
    pki: Pki, tmp_path: Path, start_simulator: Any, doc: Any, message: str
) -> None:
    web = tmp_path / "web.yml"
    if doc == "RequireCert":
        doc = {
            "tls_server_config": {
                "cert_file": str(pki.cert),
                "key_file": str(pki.key),
                "client_auth_type": "RequireCert",
            }
        }
    if isinstance(doc, str):
        web.write_text(doc)
    else:
        write_web(web, doc)
    sim = start_simulator(seed=72, tenants=1, cas=1, certificates=10)
    cfg = write_config(tmp_path / "config.yaml", [tenant_config(sim, sim.tenants[0], "contoso")])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pki_exporter",
            "--config.file",
            str(cfg),
            "--web.config.file",
            str(web),
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        env=base_env(SECRET_CONTOSO=sim.tenants[0].client_secret),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"pki-exporter: --web.config.file: {web}: "), lines[0]
    assert message in lines[0]
    assert PASSWORD not in run.stderr
    # Refused before anything started: no request ever reached Graph.
    assert not [e for e in sim.log if e.endpoint != "control"]
