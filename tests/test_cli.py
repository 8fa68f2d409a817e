"""The command line as a user meets it: a file name given without its flag, a start refused
for several problems, and the demo's simulated tenant (with its keys) never left behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from pki_exporter import app, cli
from pki_exporter.runtime import logs
from tests.exporter_proc import base_env, free_port

TENANT_ID = "5d7b3c1e-8f2a-4b6c-9d0e-1f2a3b4c5d6e"
CLIENT_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def run(args: list[str], cwd: Path | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "pki_exporter", *args],
        env=base_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_config_file_without_its_flag_points_to_config_file(tmp_path: Path) -> None:
    result = run(["--config.check", "config.yaml"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "pki-exporter: error: unrecognized arguments: config.yaml "
        "(did you mean --config.file config.yaml?)\n"
    )
    # Given with its flag as well, the loose argument is only unrecognized; so is a flag.
    other = run(["--config.file", "a.yaml", "b.yaml"], cwd=tmp_path)
    assert other.stderr == "pki-exporter: error: unrecognized arguments: b.yaml\n"
    flag = run(["--config.chek"], cwd=tmp_path)
    assert flag.stderr == "pki-exporter: error: unrecognized arguments: --config.chek\n"


def test_a_start_refused_for_several_problems_counts_them_and_names_the_check(
    tmp_path: Path,
) -> None:
    config = tmp_path / "my config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "refresh": {"interval": "5x"},
                "tenants": [
                    {
                        "name": "contoso",
                        "tenant_id": "not-a-guid",
                        "client_id": CLIENT_ID,
                        "credential": {"client_secret_env": "SECRET_CONTOSO"},
                    },
                    {
                        "name": "fabrikam",
                        "tenant_id": TENANT_ID,
                        "client_id": CLIENT_ID,
                        "credential": {"client_secret_env": "SECRET_FABRIKAM"},
                    },
                ],
            },
            sort_keys=False,
        )
    )
    start = run(["--config.file", str(config), "--web.listen-address", f"127.0.0.1:{free_port()}"])
    assert start.returncode == 1
    assert start.stdout == ""
    assert start.stderr == (
        f"pki-exporter: {config}: refresh.interval: expected a duration like 30s, 5m, 1h "
        f"(and 2 more problems: run pki-exporter --config.check --config.file '{config}' "
        "to list them)\n"
    )
    # The command it names lists all three.
    check = run(["--config.check", "--config.file", str(config)])
    assert check.returncode == 1
    assert [line for line in check.stdout.splitlines() if line.startswith("error: ")] == [
        f"error: {config}: refresh.interval: expected a duration like 30s, 5m, 1h",
        f"error: {config}: tenants[0].tenant_id: not a GUID or a domain name like "
        "contoso.onmicrosoft.com",
        f"error: {config}: tenants[1].credential.client_secret_env: environment variable "
        "SECRET_FABRIKAM is not set",
    ]


def test_the_summary_of_problems() -> None:
    assert app.summary("c.yaml", ["a: wrong"]) == "a: wrong"
    assert app.summary("c.yaml", ["a: wrong", "b: wrong"]) == (
        "a: wrong (and 1 more problem: run pki-exporter --config.check --config.file c.yaml "
        "to list it)"
    )


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo in this process, its temporary files under ``tmp_path/tmp``."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("PKI_EXPORTER_DEMO_SECRET", "")  # so that the demo's is undone after
    yield temp
    logs.setup("info")


def test_demo_once_deletes_the_simulated_tenants_files(private_tmp: Path, tmp_path: Path) -> None:
    """In this process, so that nothing but the exporter's own closing can delete them
    (the interpreter's exit would, in a process of its own)."""
    output = tmp_path / "metrics.prom"
    assert cli.main(["--demo", "--once", "--output", str(output)]) == 0
    assert "intune_cloudpki_leaf_certificates{" in output.read_text()
    assert output.stat().st_mode & 0o777 == 0o644
    assert list(private_tmp.iterdir()) == []


def test_a_demo_that_cannot_listen_deletes_them_too(
    private_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["--demo", "--web.listen-address", f"127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err == (
        f"pki-exporter: --web.listen-address: cannot listen on 127.0.0.1:{port}: "
        "Address already in use\n"
    )
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (p, f"--web.telemetry-path: {p!r} must be a free path starting with /")
        for p in ("/", "/healthz", "/ready", "/-/reload", "/certificates", "metrics")
    ],
)
def test_the_telemetry_path_may_not_take_a_path_of_the_router(path: str, message: str) -> None:
    with pytest.raises(app.UserError) as caught:
        cli._serve_options(cli.build_parser().parse_args(["--web.telemetry-path", path]), None)
    assert str(caught.value) == message
