"""The first hour of a new user (issue 14): --config.check and start-up agree, every
problem at once, the online check, and one clear line for each CLI mistake."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pki_simulator.cli import build_parser as simulator_parser
from pki_simulator.faults import Fault

from pki_exporter import app, cli
from pki_exporter.runtime import logs
from tests.exporter_proc import LineReader, base_env, running, tenant_config, write_config

TOOLKIT = Path(__file__).parent / "data" / "exporter-toolkit"
TENANT_ID = "0e5f4d3c-2b1a-4c9d-8e7f-6a5b4c3d2e1f"  # not the placeholders of config.example.yaml
CLIENT_ID = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
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
        f"SECRET_CONTOSO is not set (and 1 more problem: run pki-exporter --config.check "
        f"--config.file {cfg} to list it)\n"
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
    for route, line, (name, t) in zip(
        lines[1:5:2],
        lines[2:5:2],
        [("contoso", sim.tenants[0]), ("fabrikam", sim.tenants[1])],
        strict=True,
    ):
        names = ", ".join(sorted(ca.display_name for ca in t.cas))
        assert route == (
            f"tenant {name} ({t.tenant_id}): routes: token endpoint {sim.url} direct, "
            f"Graph {sim.url} direct"
        )
        assert line == f"tenant {name} ({t.tenant_id}): token OK, 2 CAs visible: {names}"
    assert lines[5:] == ["online: OK (2 tenants)"]
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
    lines = [line for line in result.stdout.splitlines() if ": routes: " not in line]
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
    assert app.url_host("::1") == "[::1]"
    assert app.url_host("127.0.0.1") == "127.0.0.1"


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


# --- issue 22: the first hour, second pass ------------------------------------------------

#: What each unreadable quirk of the simulator breaks, as the exporter's log must name it:
#: the test's own table, not the exporter's judgement (a quirk changes one field).
QUIRK_REASONS = {
    "date_out_of_range": ("validityEndDateTime", "not an RFC 3339 date-time"),
    "date_garbage": ("validityStartDateTime", "not an RFC 3339 date-time"),
    "date_number": ("validityStartDateTime", "not a string (number)"),
    "end_null": ("validityEndDateTime", "missing or null"),
    "end_missing": ("validityEndDateTime", "missing or null"),
    "platform_number": ("devicePlatform", "not a string (number)"),
    "status_number": ("certificateStatus", "not a string (number)"),
    "device_number": ("deviceId", "not a string (number)"),
}
_JSON_NAMES = {type(None): "null", str: "string", int: "number"}
_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line: str) -> dict[str, str]:
    """One logfmt line as a dict (quoted values unquoted)."""
    return {
        key: json.loads(value) if value.startswith('"') else value
        for key, value in _LOGFMT.findall(line)
    }


def expected_misfits(ca: Any) -> tuple[Counter[str], list[str]]:
    """From the simulator's own data: ``field reason`` -> count over the CA's unreadable
    records, and the ids of the first five of them that have one (page order)."""
    reasons: Counter[str] = Counter()
    ids: list[str] = []
    for page in range(ca.pages):
        items = json.loads("[" + ca.generate_page(page).text + "]")
        for offset, item in enumerate(items):
            quirk = ca.quirks.get(ca.page_starts[page] + offset)
            if quirk == "not_an_object":
                reasons[f"record not an object ({_JSON_NAMES[type(item)]})"] += 1
            elif quirk in QUIRK_REASONS:
                field, reason = QUIRK_REASONS[quirk]
                reasons[f"{field} {reason}"] += 1
                if len(ids) < 5:
                    ids.append(item["id"])
    return reasons, ids


def test_the_log_says_which_fields_of_the_invalid_records_failed(
    tmp_path: Path, start_simulator: Any, start_exporter: Any
) -> None:
    """The invalid-records alert sends the reader to the log: at info, once per refresh of
    each CA, the log names how many records failed on which field and why, with the ids of a
    few, and no personal data (issue 22, item 2)."""
    sim = start_simulator(tenants=1, cas=2, certificates=2500, page_size=1000)
    (t,) = sim.tenants
    write_config(tmp_path / "config.yaml", [tenant_config(sim, t, "contoso")], refresh=REFRESH)
    exporter = start_exporter(
        "--config.file", "config.yaml", env={"SECRET_CONTOSO": t.client_secret}
    )
    samples = exporter.scrape()
    log = exporter.stop()
    lines = [
        logfmt(line) for line in log.splitlines() if "leaf certificates left out as invalid" in line
    ]
    for ca in sim.dataset.all_cas():
        reasons, ids = expected_misfits(ca)
        invalid = ca.facts().invalid  # the simulator's ground truth
        assert sum(reasons.values()) == invalid > 5
        (served,) = [
            value
            for (name, labels), value in samples.items()
            if name == "intune_cloudpki_leaf_certificates_invalid"
            and ("ca_id", ca.spec.id) in labels
        ]
        assert served == invalid
        (line,) = [fields for fields in lines if fields["ca_id"] == ca.spec.id]
        assert line["level"] == "info"
        assert line["tenant"] == "contoso"
        assert line["ca"] == ca.spec.display_name
        assert int(line["invalid"]) == invalid
        ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        assert line["reasons"] == ", ".join(f"{reason}: {n}" for reason, n in ranked)
        assert line["record_ids"] == ",".join(ids)
    # No personal data: no device name or user of any record reaches the log.
    for ca in sim.dataset.all_cas():
        for row in ca.device_records():
            assert not row.device_name or row.device_name not in log
            assert not row.user or row.user not in log


def test_misfits_of_the_json_fallback_are_judged_too() -> None:
    """A lone surrogate sends the page through the json module: its misfits are judged the
    same way, and a display field's surrogate still costs nothing."""
    from pki_exporter.graph.records import Misfit, MisfitTally, decode_leaf_page

    good = {
        "validityStartDateTime": "2026-01-01T00:00:00Z",
        "validityEndDateTime": "2027-01-01T00:00:00Z",
    }
    guid = "976C94F8-94F8-976C-F894-6C97F8946C97"
    body = json.dumps(
        {
            "value": [
                {**good, "id": guid, "certificateStatus": "@"},
                {**good, "id": "DESKTOP-1", "deviceName": "@", "validityEndDateTime": None},
                [1],
                {**good, "deviceName": "@"},
            ]
        }
    ).replace('"@"', '"\\ud800"')
    page = decode_leaf_page(body.encode())
    assert (len(page.records), page.invalid) == (1, 3)
    assert page.misfits == (
        Misfit("certificateStatus", "a lone UTF-16 surrogate", guid),
        Misfit("validityEndDateTime", "missing or null", "DESKTOP-1"),
        Misfit("record", "not an object (array)"),
    )
    tally = MisfitTally()
    tally.add(page.misfits)
    assert tally.record_ids == [guid]  # an id that is no GUID could be a device name
    assert tally.reasons() == (
        "certificateStatus a lone UTF-16 surrogate: 1, record not an object (array): 1, "
        "validityEndDateTime missing or null: 1"
    )


REPO = Path(__file__).resolve().parent.parent


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_quick_start_says_what_make_test_installs_and_how_long_it_takes() -> None:
    quick = _readme_section("Quick start")
    assert "make test" in quick
    script = (REPO / "scripts" / "install-system-deps.sh").read_text()
    packages = set(re.findall(r"need\+=\(\"?\$?(\w[\w-]*)\"?\)", script)) - {"tool", "wrk"}
    packages |= set(re.search(r"for tool in ([\w ]+); do", script).group(1).split())  # type: ignore[union-attr]
    assert packages >= {"prometheus", "prometheus-alertmanager", "chromium", "podman"}
    for package in sorted(packages):
        assert f"`{package}`" in quick, f"Quick start does not say make test installs {package}"
    assert re.search(r"takes about \d+ minutes", quick)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_a_local_config_yaml_is_never_committed() -> None:
    def ignored(path: str) -> bool:
        result = subprocess.run(
            ["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True, timeout=30
        )
        return result.returncode == 0

    assert ignored("config.yaml")
    assert not ignored("deploy/systemd/config.yaml")  # the unit's example stays tracked
    assert not ignored("config.example.yaml")


def _simulate(args: list[str], marker: str = "Serving until interrupted") -> tuple[Any, list[str]]:
    """``pki-exporter simulate ARGS`` as a real process, its output up to ``marker``
    (read with a deadline: a thread reads, the test waits at most 60 s)."""
    import queue
    import threading

    proc = subprocess.Popen(
        [sys.executable, "-m", "pki_exporter", "simulate", *args],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=60)
            if line is None:
                raise AssertionError("simulate exited early:\n" + "\n".join(seen))
            seen.append(line)
            if marker in line:
                return proc, seen
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


def _stop(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _value(lines: list[str], name: str) -> str:
    return next(line.split(":", 1)[1].split()[0] for line in lines if line.startswith(name + ":"))


def test_simulate_keeps_its_files_and_address_in_a_state_dir(tmp_path: Path) -> None:
    """A restart of the simulator keeps a pasted config working: the same URL, the same CA
    bundle (the old copy still verifies the new server), the same app certificate and PFX
    passphrase (issue 22, item 4)."""
    state = tmp_path / "sim-state"
    common = ["--state-dir", str(state), "--seed", "4", "--cas", "1", "--certificates", "10"]
    first, lines = _simulate([*common, "--port", "0"])  # any free port, then remembered
    try:
        url, bundle = _value(lines, "Graph URL"), Path(_value(lines, "CA bundle"))
        assert f"State dir:      {state}  (CA bundle, keys and addresses kept across restarts)" in (
            lines
        )
        assert bundle == state / "ca.pem"
        trusted = bundle.read_bytes()
        cert = Path(_value(lines, "Certificate")).read_bytes()
        pfx_line = next(line for line in lines if line.startswith("PFX:"))
        secret = _value(lines, "Client secret")
        context = ssl.create_default_context(cadata=trusted.decode())
        assert httpx.get(f"{url}/_simulator/info", verify=context, timeout=10).status_code == 200
    finally:
        _stop(first)
    assert (state / "ca.key.pem").stat().st_mode & 0o077 == 0
    second, again = _simulate(common)  # no --port: the remembered one
    try:
        assert _value(again, "Graph URL") == url
        assert bundle.read_bytes() == trusted
        assert Path(_value(again, "Certificate")).read_bytes() == cert
        assert next(line for line in again if line.startswith("PFX:")) == pfx_line
        assert _value(again, "Client secret") == secret
        # The bundle read before the restart verifies the restarted server.
        assert httpx.get(f"{url}/_simulator/info", verify=context, timeout=10).status_code == 200
    finally:
        _stop(second)


def test_simulate_has_a_fixed_default_port_and_says_where_its_files_are() -> None:
    from pki_simulator import cli as simulator_cli

    args = simulator_parser().parse_args([])
    assert (args.host, args.port, args.state_dir) == (None, None, None)
    assert simulator_cli.DEFAULT_PORT == 9870
    helps = {a.dest: a.help for a in simulator_parser()._actions}
    assert "default 9870" in helps["port"]
    proc, lines = _simulate(["--port", "0", "--cas", "1", "--certificates", "10"])
    _stop(proc)
    (files,) = [line for line in lines if line.startswith("Files:")]
    assert files.endswith(
        "(temporary, deleted on exit: --state-dir DIR keeps them and the addresses across restarts)"
    )


def test_simulate_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                *[sys.executable, "-m", "pki_exporter", "simulate", "--port", str(port)],
                *["--cdn-port", "0", "--cas", "1"],
            ],
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"pki-exporter simulate: cannot listen on 127.0.0.1:{port} (Graph) and 127.0.0.1:0 "
        "(CDN): Address already in use (another simulator? --port 0 --cdn-port 0 take any "
        "free ports)\n"
    )


def test_editable_installs_print_no_setuptools_warning_boxes(tmp_path: Path) -> None:
    """``make demo`` installs both projects with ``pip install --quiet -e``: setuptools
    must have nothing to warn about (no "!!" boxes) (issue 22, item 3)."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    # Today's pip, as the Makefile installs it (it shows what the build backend warns
    # about): the one of the test's own venv, installing into the new one.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "-e",
            str(REPO),
            "-e",
            str(REPO / "simulator"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # pip's own notes about the machine's index configuration are not ours to fix.
    ours = [line for line in output.splitlines() if not line.startswith("WARNING: Location ")]
    assert not [line for line in ours if "!!" in line or "Warning" in line], "\n".join(ours)


SYSTEMD = REPO / "deploy" / "systemd"


def _can_unshare() -> bool:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return False
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def _exporter_for_nobody() -> str:
    """A ``pki-exporter`` an unprivileged user can run: this venv's interpreter may live
    under /root (pyenv), so Debian's python3 of the same version with this venv's packages
    when there is one."""
    system = Path("/usr/bin/python3")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = (
        subprocess.run(
            [
                str(system),
                "-c",
                "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if system.exists()
        else None
    )
    if probe is None or probe.stdout.strip() != version:
        return f'#!/bin/sh\nexec {sys.executable} -m pki_exporter "$@"\n'
    import sysconfig

    path = ":".join([sysconfig.get_paths()["purelib"], str(REPO)])
    return f'#!/bin/sh\nPYTHONPATH={path} exec {system} -m pki_exporter "$@"\n'


@pytest.mark.skipif(not _can_unshare(), reason="needs root, unshare and setpriv")
def test_the_systemd_check_runs_with_the_units_credentials() -> None:
    """docs/deploy.md's check: ``pki-exporter-check`` loads the unit's LoadCredential=
    files where the service sees them, as an unprivileged user, with the unit's flags; a
    plain --config.check cannot pass, since the credential exists only inside the unit
    (issue 22, item 6)."""
    etc = Path(tempfile.mkdtemp(prefix="pki-exporter-check-", dir="/tmp"))
    try:
        etc.chmod(0o755)
        secret = etc / "client-secret"
        secret.write_text("s3cret-value-of-the-app\n")
        secret.chmod(0o600)  # root's alone, as /etc/pki-exporter/client-secret
        config = etc / "config.yaml"
        config.write_text(
            (SYSTEMD / "config.yaml")
            .read_text()
            .replace("00000000-0000-0000-0000-000000000000", TENANT_ID.replace("0", "a"))
            .replace("11111111-1111-1111-1111-111111111111", "5b9c2d7e-3f41-4a6b-8c0d-2e4f6a8b0c1d")
        )
        config.chmod(0o644)
        unit = etc / "pki-exporter.service"
        unit.write_text(
            (SYSTEMD / "pki-exporter.service")
            .read_text()
            .replace(":/etc/pki-exporter/client-secret", f":{secret}")
        )
        exporter = etc / "pki-exporter"
        exporter.write_text(_exporter_for_nobody())
        exporter.chmod(0o755)
        env = base_env(
            PKI_EXPORTER=str(exporter),
            PKI_EXPORTER_CONFIG=str(config),
            PKI_EXPORTER_ENV_FILE=str(SYSTEMD / "pki-exporter.env"),
            PKI_EXPORTER_UNIT_FILE=str(unit),
        )

        def check(*args: str) -> Any:
            return subprocess.run(
                [str(SYSTEMD / "pki-exporter-check"), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        # What docs/deploy.md used to say: fails however right the setup is.
        plain = run(["--config.check", "--config.file", str(config)])
        assert plain.returncode == 1
        assert "/run/credentials/pki-exporter.service/client-secret" in plain.stdout
        # The way the unit runs: passes.
        ok = check()
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.splitlines() == [
            f"{config}: OK (1 tenant, 1 with CA discovery, refresh every 300s)"
        ]
        assert "s3cret" not in ok.stdout + ok.stderr
        assert not Path("/run/credentials/pki-exporter.service/client-secret").exists()
        # A drop-in that empties LoadCredential= (managed identity): no secret any more.
        with unit.open("a") as drop_in:
            drop_in.write("\n[Service]\nLoadCredential=\n")
        missing = check()
        assert missing.returncode == 1
        assert "tenants[0].credential.client_secret_file: cannot read" in missing.stdout
        # The service's user cannot read a config only root can: neither can the check.
        unit.write_text(
            (SYSTEMD / "pki-exporter.service")
            .read_text()
            .replace(":/etc/pki-exporter/client-secret", f":{secret}")
        )
        config.chmod(0o600)
        unreadable = check()
        assert unreadable.returncode == 1
        assert "Permission denied" in unreadable.stdout + unreadable.stderr
    finally:
        shutil.rmtree(etc)


def test_the_deploy_doc_gives_the_check_that_can_pass() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text()
    section = doc.split("## systemd service on a Linux host", 1)[1].split("\n## ", 1)[0]
    assert "pki-exporter-check" in section
    assert "install -m 0755 deploy/systemd/pki-exporter-check" in section
    # No bare --config.check of the installed config in the steps: it cannot pass.
    steps = section.split("```sh", 1)[1].split("```", 1)[0]
    assert "bin/pki-exporter --config.check --config.file /etc/pki-exporter" not in steps


_README_CONTROL = re.compile(r"`((?:[A-Z]+/)*[A-Z]+) /_simulator/([\w/{}.-]+)`")


def test_the_simulator_lists_every_control_endpoint_the_readme_names(
    start_simulator: Any,
) -> None:
    """``GET /_simulator/`` (the URL ``simulate`` prints) lists every control endpoint the
    README names, with at least the methods it names, and each listed GET answers
    (issue 22, item 7)."""
    named = _README_CONTROL.findall((REPO / "README.md").read_text())
    assert len(named) >= 6, named  # the README still names them this way
    sim = start_simulator(tenants=1, cas=1, certificates=1)
    context = ssl.create_default_context(cafile=str(sim.ca_bundle_path))
    with httpx.Client(verify=context, timeout=10) as client:
        listed: dict[str, set[str]] = {}
        for entry in client.get(f"{sim.url}/_simulator/").json()["endpoints"]:
            methods, url = entry.split(" ", 1)
            path = url.split("?", 1)[0].removeprefix("/_simulator/")
            listed.setdefault(path, set()).update(methods.split("|"))
        for methods, path in named:
            assert path in listed, f"GET /_simulator/ does not list /_simulator/{path}"
            assert set(methods.split("/")) <= listed[path], (path, methods, listed[path])
        for path, methods in listed.items():
            if "GET" in methods and "{" not in path:
                answer = client.get(f"{sim.url}/_simulator/{path}")
                assert answer.status_code == 200, (path, answer.text)


@pytest.mark.parametrize(
    ("error", "message", "source"),
    [
        (
            "token: invalid_client: AADSTS7000215: Invalid client secret provided. Ensure the "
            "secret being sent in the request is the client secret value. Trace ID: 1f0e "
            "Correlation ID: 2a3b Timestamp: 2026-12-07 01:00:00Z (correlation-id 2a3b-4c)",
            "Invalid client secret provided. Ensure the secret being sent in the request is "
            "the client secret value.",
            "token: invalid_client · AADSTS7000215 · correlation-id 2a3b-4c",
        ),
        (
            "GET /beta/deviceManagement/cloudCertificationAuthority: HTTP 403 Forbidden: "
            'Forbidden: {"_version": 3, "Message": "Application is not authorized to perform '
            'this operation. - Operation ID (for customer support): 00000000"} (request-id r1)',
            "Application is not authorized to perform this operation.",
            "GET /beta/deviceManagement/cloudCertificationAuthority HTTP 403 Forbidden",
        ),
        (
            "token: via proxy http://proxy.corp:3128: 407 Proxy Authentication Required",
            "token: via proxy http://proxy.corp:3128: 407 Proxy Authentication Required",
            "",
        ),
    ],
)
def test_a_tenants_error_is_told_in_words_first(error: str, message: str, source: str) -> None:
    from pki_exporter.web.pages import readable_error

    assert readable_error(error) == (message, source)
