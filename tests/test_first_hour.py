"""The first hour of a new user (issue 14): --config.check and start-up agree, every
problem at once, the online check, and one clear line for each CLI mistake."""

from __future__ import annotations

import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pki_simulator.cli import build_parser as simulator_parser
from pki_simulator.faults import Fault

from pki_exporter import cli
from pki_exporter.runtime import logs
from tests.exporter_proc import LineReader, base_env, running, tenant_config, write_config

TOOLKIT = Path(__file__).parent / "data" / "exporter-toolkit"
TENANT_ID = "00000000-0000-0000-0000-000000000000"
CLIENT_ID = "11111111-1111-1111-1111-111111111111"
REFRESH = {"interval": "1m", "timeout": "10s", "concurrency": 4}


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "pki_exporter", *args],
        env=env or base_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tenant(name: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
        "credential": {"client_secret_env": f"SECRET_{name.upper()}"},
    }
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not None}


# --- --config.check: every problem, one stream -----------------------------------------


def test_config_check_prints_every_problem_of_both_files_on_stdout(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "refresh": {"interval": "5x", "timeot": "10s"},
                "tenants": [
                    tenant("contoso", tenant_id="not-a-guid"),
                    {**tenant("fabrikam", client_id=None), "clientid": CLIENT_ID},
                    tenant("northwind"),
                ],
            },
            sort_keys=False,
        )
    )
    web = TOOLKIT / "web_config_junk_key.yml"
    result = run(["--config.check", "--config.file", str(cfg), "--web.config.file", str(web)])
    assert result.returncode == 1
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"error: {cfg}: refresh.timeot: unknown key (did you mean timeout?)",
        f"error: {cfg}: refresh.interval: expected a duration like 30s, 5m, 1h",
        f"error: {cfg}: tenants[0].tenant_id: not a GUID or a domain name like "
        "contoso.onmicrosoft.com",
        f"error: {cfg}: tenants[1].clientid: unknown key (did you mean client_id?)",
        f"error: {cfg}: tenants[1].client_id: required",
        f"error: {cfg}: tenants[2].credential.client_secret_env: environment variable "
        "SECRET_NORTHWIND is not set",
        f"error: {web}: tls_server_config.cert_filse: unknown key (did you mean cert_file?)",
        f"{cfg}: FAILED (6 problems)",
        f"{web}: FAILED (1 problem)",
    ]


def test_config_check_checks_the_web_config_too(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", [tenant("contoso")], refresh=REFRESH)
    env = base_env(SECRET_CONTOSO="s" * 20)
    bad = TOOLKIT / "web_config_noAuth_wrongTLSVersion.bad.yml"
    refused = run(["--config.check", "--config.file", str(cfg), "--web.config.file", str(bad)], env)
    assert refused.returncode == 1
    assert refused.stdout.splitlines() == [
        f'error: {bad}: tls_server_config.min_version: unknown TLS version "TLS111" (expected '
        "one of TLS10, TLS11, TLS12, TLS13)",
        f"{cfg}: OK (1 tenant, 1 with CA discovery, refresh every 60s)",
        f"{bad}: FAILED (1 problem)",
    ]
    good = TOOLKIT / "web_config_users.good.yml"
    ok = run(["--config.check", "--config.file", str(cfg), "--web.config.file", str(good)], env)
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.splitlines()[-1] == f"{good}: OK (TLS, basic auth for 4 users)"


def test_a_missing_secret_stops_the_start_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "config.yaml",
        [tenant("contoso"), tenant("fabrikam", credential={"client_secret_file": "nope.txt"})],
    )
    result = run(["--config.file", str(cfg), "--web.listen-address", "127.0.0.1:0"])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"pki-exporter: {cfg}: tenants[0].credential.client_secret_env: environment variable "
        "SECRET_CONTOSO is not set (and 1 more problem: see --config.check)\n"
    )
    once = run(["--once", "--config.file", str(cfg)], base_env(SECRET_CONTOSO="s" * 20))
    assert once.returncode == 1
    assert once.stderr == (
        f"pki-exporter: {cfg}: tenants[1].credential.client_secret_file: cannot read "
        f'"{tmp_path / "nope.txt"}": No such file or directory\n'
    )


def test_no_config_names_the_file_once_and_mentions_the_demo(tmp_path: Path) -> None:
    result = run([], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "pki-exporter: config.yaml: cannot read: No such file or directory "
        "(write one from config.example.yaml, or try --demo)\n"
    )
    unreadable = tmp_path / "dir.yaml"
    unreadable.mkdir()
    result = run(["--config.file", str(unreadable)])
    assert result.stderr == f"pki-exporter: {unreadable}: cannot read: Is a directory\n"


# --- --config.check.online against the simulator ---------------------------------------


def online_config(tmp_path: Path, sim: Any) -> tuple[Path, dict[str, str]]:
    a, b = sim.tenants
    cfg = write_config(
        tmp_path / "config.yaml",
        [tenant_config(sim, a, "contoso"), tenant_config(sim, b, "fabrikam")],
        refresh=REFRESH,
    )
    return cfg, base_env(SECRET_CONTOSO=a.client_secret, SECRET_FABRIKAM=b.client_secret)


def test_online_check_lists_what_each_tenant_sees(tmp_path: Path, start_simulator: Any) -> None:
    sim = start_simulator(tenants=2, cas=2, certificates=10)
    cfg, env = online_config(tmp_path, sim)
    result = run(["--config.check.online", "--config.file", str(cfg)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{cfg}: OK (2 tenants, 2 with CA discovery, refresh every 60s)"
    for line, (name, t) in zip(
        lines[1:3], [("contoso", sim.tenants[0]), ("fabrikam", sim.tenants[1])], strict=True
    ):
        names = ", ".join(sorted(ca.display_name for ca in t.cas))
        assert line == f"tenant {name} ({t.tenant_id}): token OK, 2 CAs visible: {names}"
    assert lines[3:] == ["online: OK (2 tenants)"]
    assert result.stderr == ""


def test_online_check_names_the_missing_permission_and_a_bad_secret(
    tmp_path: Path, start_simulator: Any
) -> None:
    sim = start_simulator(tenants=2, cas=1, certificates=10)
    a, b = sim.tenants
    sim.faults.add(Fault(kind="page_error", tenant_id=a.tenant_id, status=403))
    sim.faults.add(Fault(kind="token_error", tenant_id=b.tenant_id))
    cfg, env = online_config(tmp_path, sim)
    result = run(["--config.check.online", "--config.file", str(cfg)], env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[1].startswith(
        f"error: tenant contoso ({a.tenant_id}): token OK, but Graph refused to list the CAs "
        f"(403): the app {a.client_id} lacks the application permission "
        "DeviceManagementCloudCA.Read.All (grant it and give admin consent); Graph said: "
    )
    assert lines[2].startswith(f"error: tenant fabrikam ({b.tenant_id}): no token from {sim.url}: ")
    assert "invalid_client" in lines[2]
    assert lines[3:] == ["online: FAILED (2 of 2 tenants)"]
    for secret in (a.client_secret, b.client_secret):
        assert secret not in result.stdout + result.stderr


# --- one clear line per CLI mistake -----------------------------------------------------


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "http://127.0.0.1:9873",
            "--web.listen-address: expected HOST:PORT without a scheme, got "
            "'http://127.0.0.1:9873' (e.g. 127.0.0.1:9869; TLS comes from --web.config.file)",
        ),
        (":99999", "--web.listen-address: port 99999 is out of range (0-65535)"),
        ("9873", "--web.listen-address: expected HOST:PORT, got '9873'"),
        (
            "nosuchhost.invalid:9873",
            "--web.listen-address: cannot listen on nosuchhost.invalid:9873: unknown host "
            "'nosuchhost.invalid' (give an IP address or a resolvable name)",
        ),
    ],
)
def test_listen_address_mistakes_are_one_clear_line(address: str, message: str) -> None:
    result = run(["--demo", "--web.listen-address", address])
    assert result.returncode == 1
    assert result.stderr == f"pki-exporter: {message}\n"


def test_once_output_into_a_missing_directory_fails_before_any_refresh() -> None:
    result = run(["--demo", "--once", "--output", "/no/such/dir/x"])
    assert result.returncode == 1
    assert result.stderr == (
        "pki-exporter: --output: cannot write /no/such/dir/x: no directory '/no/such/dir'\n"
    )


def test_demo_listens_on_loopback_and_logs_ipv6_in_brackets(tmp_path: Path) -> None:
    with running(
        [sys.executable, "-m", "pki_exporter", "--demo", "--web.listen-address", ":0"],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        out = LineReader(proc.stdout)
        banner = out.readline()
        assert banner.startswith("pki-exporter demo: simulated tenant at https://127.0.0.1:")
        metrics = out.readline()
        prefix, suffix = "  metrics:     http://127.0.0.1:", "/metrics\n"
        assert metrics.startswith(prefix) and metrics.endswith(suffix), metrics
        port = int(metrics.removeprefix(prefix).removesuffix(suffix))
        assert port != 0  # the port bound, not the one asked for
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert response.headers["Server"] == "pki-exporter"
    demo_default = cli.build_parser().parse_args(["--demo"])
    assert demo_default.listen_address is None  # resolved to 127.0.0.1:9869 for --demo
    assert cli.parse_listen_address("[::1]:9873") == ("::1", 9873)
    assert cli._url_host("::1") == "[::1]"
    assert cli._url_host("127.0.0.1") == "127.0.0.1"


def test_demo_listens_on_127_0_0_1_unless_told_otherwise() -> None:
    assert cli.listen_address(None, demo=True) == "127.0.0.1:9869"
    assert cli.listen_address(None, demo=False) == ":9869"
    assert cli.listen_address(":9999", demo=True) == ":9999"


def test_demo_without_a_writable_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_tmp() -> str:
        raise FileNotFoundError("No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", no_tmp)
    monkeypatch.setattr(tempfile, "tempdir", None)
    cli._demo_tempdir((str(tmp_path / "missing"), str(tmp_path)))
    assert tempfile.tempdir == str(tmp_path)
    with pytest.raises(cli.UserError) as caught:
        cli._demo_tempdir((str(tmp_path / "missing"),))
    assert str(caught.value) == (
        "--demo: no writable temporary directory for the simulated tenant's files (tried "
        f"$TMPDIR, /tmp, {tmp_path / 'missing'}); set TMPDIR to a writable directory"
    )


def test_warn_level_is_spelt_as_prometheus_does() -> None:
    stream = io.StringIO()
    logs.setup("warn", "logfmt", stream)
    try:
        logs.event(logs.get("test"), 30, "careful", n=1)
    finally:
        logs.setup("info")
    assert " level=warn logger=pki_exporter.test msg=careful n=1" in stream.getvalue()


def test_help_texts() -> None:
    text = cli.build_parser().format_help()
    assert "only log messages of this severity or above" in text
    assert "output format of the log on stderr" in text
    assert "--config.check.online" in text
    usage = subprocess.run(
        [sys.executable, "-m", "pki_exporter", "simulate", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.stdout.startswith("usage: pki-exporter simulate ")
    helps = {a.dest: a.help for a in simulator_parser()._actions}
    assert helps["broken_renewal_share"] == (
        "share of active certificates whose renewal is broken: they end within 7 days of the "
        "anchor (default 0)"
    )


def test_simulator_control_api_url_answers(start_simulator: Any) -> None:
    sim = start_simulator(tenants=1, cas=1, certificates=1)
    response = httpx.get(
        f"{sim.url}/_simulator/",
        verify=ssl.create_default_context(cafile=str(sim.ca_bundle_path)),
        timeout=10,
    )
    assert response.status_code == 200
    assert "GET /_simulator/info" in response.json()["endpoints"]


def test_once_failure_log_names_only_what_failed(tmp_path: Path, start_simulator: Any) -> None:
    sim = start_simulator(tenants=1, cas=1, certificates=10)
    (t,) = sim.tenants
    sim.faults.add(Fault(kind="token_error", tenant_id=t.tenant_id))
    cfg = write_config(
        tmp_path / "config.yaml", [tenant_config(sim, t, "contoso")], refresh=REFRESH
    )
    result = run(["--once", "--config.file", str(cfg)], base_env(SECRET_CONTOSO=t.client_secret))
    assert result.returncode == 1
    (failure,) = [line for line in result.stderr.splitlines() if 'msg="refresh failed"' in line]
    assert failure.endswith('msg="refresh failed" tenants_down=contoso')
    assert "cas=" not in failure


def test_a_reload_with_a_missing_secret_keeps_the_running_config(
    tmp_path: Path, start_simulator: Any, start_exporter: Any
) -> None:
    sim = start_simulator(tenants=1, cas=1, certificates=10)
    (t,) = sim.tenants
    secret = tmp_path / "secret.txt"
    secret.write_text(t.client_secret)
    entry = tenant_config(sim, t, "contoso", credential={"client_secret_file": str(secret)})
    write_config(tmp_path / "config.yaml", [entry], refresh=REFRESH)
    exporter = start_exporter("--config.file", "config.yaml", "--web.enable-lifecycle")
    secret.unlink()
    answer = httpx.post(exporter.url + "/-/reload", timeout=30)
    assert answer.status_code == 500
    assert answer.text == (
        "failed to reload config: tenants[0].credential.client_secret_file: cannot read "
        f'"{secret}": No such file or directory\n'
    )
    samples = exporter.scrape()
    assert samples[("intune_cloudpki_config_last_reload_successful", ())] == 0


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_listen_address_is_logged_in_brackets() -> None:
    with running(
        [sys.executable, "-m", "pki_exporter", "--demo", "--web.listen-address", "[::1]:0"],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        out.readline()
        metrics = out.readline()
        prefix, suffix = "  metrics:     http://[::1]:", "/metrics\n"
        assert metrics.startswith(prefix) and metrics.endswith(suffix), metrics
        port = int(metrics.removeprefix(prefix).removesuffix(suffix))
        started = err.until(lambda line: "pki-exporter started" in line)
        assert f" listen=http://[::1]:{port} " in started


def _read_only_demo(writable_shm: bool) -> Any:
    """``--demo --once`` in a mount namespace whose every file system is read-only (but,
    when asked, /dev/shm)."""
    binds = [
        "/tmp",
        "/var/tmp",
        "/work",
        str(Path(sys.prefix)),
        *([] if writable_shm else ["/dev/shm"]),
    ]
    script = " && ".join(
        [
            "mount --make-rprivate /",
            "mount -o remount,bind,ro /",
            *[f"{{ mount -o bind,ro {d} {d} 2>/dev/null || true; }}" for d in binds],
            "cd /",
            f"exec env -u TMPDIR {sys.executable} -m pki_exporter --demo --once",
        ]
    )
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("unshare")),
    reason="needs root and unshare for a read-only mount namespace",
)
def test_demo_under_a_read_only_root_without_a_writable_tmp() -> None:
    works = _read_only_demo(writable_shm=True)
    assert works.returncode == 0, works.stderr
    assert "intune_cloudpki_leaf_certificates{" in works.stdout
    assert "Traceback" not in works.stderr
    refused = _read_only_demo(writable_shm=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "pki-exporter: --demo: no writable temporary directory for the simulated tenant's "
        "files (tried $TMPDIR, /tmp, /dev/shm, /run/user, /var/tmp); set TMPDIR to a "
        "writable directory\n"
    )
