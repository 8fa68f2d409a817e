"""The container image, built from the project's Dockerfile with podman and run as a user would.

No registry is reachable here, so the base image is made from Debian's packages: mmdebstrap
builds a bookworm root file system with python3 and a venv at /usr/local (where the
official python image keeps its Python), ``podman import`` turns it into an image, and the
Dockerfile is built on it through ``ARG PYTHON_IMAGE`` (users keep the official image, the
default). The root file system tarball is cached outside the repository, keyed by the
packages, the mirror and the day, so reruns skip the ~30 s of mmdebstrap; a cold run
builds it.

What the sandboxes this runs in need on every podman build and run: ``--runtime runc`` and
explicit ulimits (crun and the default limits are refused), ``--format docker`` (OCI
images drop the HEALTHCHECK), ``--layers=false`` (podman 4.3 mishandles ``RUN --mount
from=build`` when that stage is cached), ``--network host`` (pip reaches the index; the exporter
listens on the host's loopback) and pip's CA bundle mounted into the build (package
traffic may be re-signed by a proxy).

The image then runs read-only with a tmpfs /tmp, as the image's own user (UID 65532), no
capabilities, on a loopback port, with a config (mounted read-only, the secret in the
environment) for a simulated tenant that runs on the host (the simulator is not in the
image, so ``--demo`` is not either): /metrics is scraped and compared with the simulator's
ground truth, the HEALTHCHECK run (healthy, and unhealthy when pointed elsewhere), the
container stopped by name (exit code 0, no traceback), and the image's size held under a
budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.utils import canonicalize_name

from pki_exporter import __version__
from tests.conftest import ANCHOR, FAKE_NOW
from tests.exporter_proc import (
    certificate_samples,
    closed_port,
    free_port,
    parse_samples,
    tenant_config,
)
from tests.test_lock import parse_lock

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PKI_EXPORTER_TEST_CACHE", "/var/tmp/pki-exporter-test-cache"))
SUITE = "bookworm"  # the Debian release of the Dockerfile's default python:3.11-slim-bookworm
PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
IMAGE_UID = 65532
BASE_REPO = "localhost/pki-exporter-test-base"
#: every podman build and run (crun and the default rlimits are refused in the sandboxes)
PODMAN_RUNTIME = (
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
)
#: What the Dockerfile adds on top of its base image: the locked dependencies and the
#: exporter (measured 32.0 MB on 2026-12-05; cryptography's wheel is a third of it).
ADDED_BUDGET_BYTES = 40_000_000
#: The whole image on the mmdebstrap base (measured 226 MB, of which the base 194 MB).
IMAGE_BUDGET_BYTES = 250_000_000


def _podman_or_skip() -> str:
    if os.geteuid() != 0:
        pytest.skip("podman builds need root here (run the tests as root: make test)")
    for tool in ("podman", "mmdebstrap", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} not installed (scripts/install-system-deps.sh installs it as root)"
            )
    podman = shutil.which("podman")
    assert podman is not None
    probe = subprocess.run(
        [podman, "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip()[:300]}")
    return podman


def apt_source_files() -> list[Path]:
    files = [Path("/etc/apt/sources.list")]
    directory = Path("/etc/apt/sources.list.d")
    if directory.is_dir():
        files += sorted(directory.iterdir())
    return files


def debian_mirror(suite: str = SUITE, files: list[Path] | None = None) -> str:
    """The machine's Debian mirror for `suite`, from its apt sources (one-line or deb822)."""
    if files is None:
        files = apt_source_files()
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split()
                    and "main" in fields.get("components", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                ):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if (
                    len(words) >= 4
                    and words[0] == "deb"
                    and words[2] == suite
                    and "main" in words[3:]
                ):
                    return words[1]
    return "http://deb.debian.org/debian"


def _mmdebstrap_command(target: Path, mirror: str) -> list[str]:
    return [
        "mmdebstrap",
        "--quiet",
        "--variant=apt",
        f"--include={','.join(PACKAGES)}",
        # Documentation and translations are of no use to a test base.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        # A venv at /usr/local: `python` and `pip` on PATH, as in the official image.
        '--customize-hook=chroot "$1" python3 -m venv /usr/local',
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
        SUITE,
        str(target),
        f"deb {mirror} {SUITE} main",
    ]


def base_image(podman: str) -> str:
    """The Debian base image (made once a day per mirror and package list), its reference."""
    mirror = debian_mirror()
    day = datetime.now(UTC).strftime("%Y%m%d")
    recipe = json.dumps(_mmdebstrap_command(Path("rootfs.tar"), mirror))
    key = f"{day}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    reference = f"{BASE_REPO}:{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"{SUITE}-rootfs-{key}.tar"
    if not tarball.exists():
        partial = tarball.with_suffix(f".{os.getpid()}.partial.tar")
        result = subprocess.run(
            _mmdebstrap_command(partial, mirror), capture_output=True, text=True, timeout=900
        )
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            pytest.fail(f"mmdebstrap failed:\n{result.stdout}\n{result.stderr}")
        partial.rename(tarball)
    for old in CACHE.glob(f"{SUITE}-rootfs-*.tar"):  # yesterday's and other recipes'
        if old != tarball:
            old.unlink(missing_ok=True)
    if subprocess.run([podman, "image", "exists", reference]).returncode != 0:
        subprocess.run(
            [
                podman,
                "import",
                "--quiet",
                "--change",
                "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["python3"]',
                str(tarball),
                reference,
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    listed = subprocess.run(
        [podman, "images", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPO],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for old_reference in listed:
        if old_reference != reference:
            subprocess.run([podman, "rmi", "--force", old_reference], capture_output=True)
    return reference


def pip_cert() -> str | None:
    """The CA bundle this machine's pip uses (PIP_CERT, else pip's configuration)."""
    if os.environ.get("PIP_CERT"):
        return os.environ["PIP_CERT"]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.split(".")[-1] == "cert":
            return value.strip().strip("'\"")
    return None


def canonical(requirement: str) -> str:
    """`Name_x==1.0` -> `name-x==1.0` (the lock's spelling)."""
    name, _, version = requirement.partition("==")
    return f"{canonicalize_name(name)}=={version}"


def _image_size(podman: str, reference: str) -> int:
    out = subprocess.run(
        [podman, "image", "inspect", "--format", "{{.Size}}", reference],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[str, str, str]]:
    """(podman, base image, image built from the Dockerfile); the image is removed after."""
    podman = _podman_or_skip()
    base = base_image(podman)
    tag = f"localhost/pki-exporter-test:{secrets.token_hex(4)}"
    command = [
        podman,
        "build",
        *PODMAN_RUNTIME,
        "--format",
        "docker",
        # podman 4.3 (Debian 12) mounts a stale or missing `--mount from=build` when the
        # build stage comes from its layer cache: build every layer afresh.
        "--layers=false",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"VERSION={__version__}",
        "--tag",
        tag,
    ]
    cert = pip_cert()
    if cert and Path(cert).is_file():
        command += [
            "--volume",
            f"{cert}:/run/pip-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/pip-ca.crt",
        ]
    result = subprocess.run([*command, str(ROOT)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    try:
        yield podman, base, tag
    finally:
        subprocess.run([podman, "rmi", "--force", tag], capture_output=True)


def _podman(podman: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([podman, *args], capture_output=True, text=True, check=check, timeout=120)


@pytest.mark.timeout(1200)
def test_image_runs_read_only_as_its_own_user(
    image: tuple[str, str, str], start_simulator: Any, tmp_path: Path
) -> None:
    podman, base, tag = image
    # A simulated tenant on the host's loopback; the container shares the host's network.
    sim = start_simulator(seed=151, cas=2, certificates=400)
    tenant = sim.tenants[0]
    mounted = tmp_path / "etc"
    mounted.mkdir()
    mounted.chmod(0o755)
    shutil.copy(sim.ca_bundle_path, mounted / "ca.pem")
    (mounted / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "refresh": {"interval": "5m", "timeout": "10s"},
                "tenants": [
                    tenant_config(sim, tenant, "contoso", ca_bundle="/etc/pki-exporter/ca.pem")
                ],
            }
        )
    )
    for file in mounted.iterdir():
        file.chmod(0o644)
    inspected = json.loads(_podman(podman, "image", "inspect", tag).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["pki-exporter"]
    healthcheck = inspected["Healthcheck"]["Test"]  # kept: built --format docker
    assert healthcheck[0] == "CMD" and healthcheck[1] == "python"
    assert config["Labels"]["org.opencontainers.image.version"] == __version__

    port = free_port()  # named in the container's HEALTHCHECK URL, so chosen before it starts
    url = f"http://127.0.0.1:{port}"
    name = f"pki-exporter-test-{secrets.token_hex(4)}"
    _podman(
        podman,
        "run",
        "--detach",
        "--name",
        name,
        *PODMAN_RUNTIME,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--env",
        f"PKI_EXPORTER_HEALTHCHECK_URL={url}/healthz",
        "--env",
        f"PKI_EXPORTER_FAKE_NOW={FAKE_NOW}",
        "--env",
        f"SECRET_CONTOSO={tenant.client_secret}",
        "--volume",
        f"{mounted}:/etc/pki-exporter:ro",
        tag,
        "--config.file=/etc/pki-exporter/config.yaml",
        "--storage.path=/var/lib/pki-exporter",
        "--web.listen-address",
        f"127.0.0.1:{port}",
    )
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{url}/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = _podman(podman, "inspect", "--format", "{{.State.Running}}", name).stdout
            assert state.strip() == "true", _podman(podman, "logs", name).stderr
            time.sleep(0.2)
        logs = _podman(podman, "logs", name)
        assert ready is not None and ready.status_code == 200, logs.stdout + logs.stderr

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert f'intune_cloudpki_exporter_build_info{{version="{__version__}"}} 1.0' in metrics
        expected = sim.expected_samples(
            now=ANCHOR, windows=(7, 30, 90), tenant_names={tenant.tenant_id: "contoso"}
        )
        assert certificate_samples(parse_samples(metrics)) == expected
        assert 'intune_cloudpki_tenant_up{tenant="contoso"} 1.0' in metrics
        # The state volume is writable (the warm-restart snapshots land there).
        stored = _podman(podman, "exec", name, "ls", "/var/lib/pki-exporter").stdout.split()
        assert len([f for f in stored if f.endswith(".snapshot")]) == 2, stored

        # It runs as the image's user, with nothing writable but /tmp.
        pid = _podman(podman, "inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        assert fields["Uid"].split() == [str(IMAGE_UID)] * 4
        assert fields["CapEff"].strip() == "0000000000000000"
        write = "open('/etc/pki-exporter/x', 'w')"
        denied = _podman(podman, "exec", name, "python", "-c", write, check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr

        # Exactly the locked dependencies and the exporter are installed, and no installer.
        listing = "import importlib.metadata as m; print(*sorted(f'{d.name}=={d.version}' for d in m.distributions()))"
        installed = _podman(podman, "exec", name, "python", "-c", listing).stdout.split()
        pins = parse_lock((ROOT / "requirements.lock").read_text())
        wanted = {f"{n}=={p.version}" for n, p in pins.items()} | {f"pki-exporter=={__version__}"}
        assert {canonical(i) for i in installed} == wanted
        no_pip = _podman(podman, "exec", name, "python", "-m", "pip", "--version", check=False)
        assert no_pip.returncode != 0 and "No module named pip" in no_pip.stderr

        # The image's HEALTHCHECK: healthy here, unhealthy when pointed where nothing listens.
        health = _podman(podman, "healthcheck", "run", name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        command = healthcheck[1:]
        assert _podman(podman, "exec", name, *command).returncode == 0
        with closed_port() as nobody:
            elsewhere = f"PKI_EXPORTER_HEALTHCHECK_URL=http://127.0.0.1:{nobody}/healthz"
            unhealthy = _podman(podman, "exec", "--env", elsewhere, name, *command, check=False)
        assert unhealthy.returncode != 0

        _podman(podman, "stop", "--time", "20", name)
        state = json.loads(_podman(podman, "inspect", name).stdout)[0]["State"]
        logs = _podman(podman, "logs", name)
        text = logs.stdout + logs.stderr
        assert state["ExitCode"] == 0, text
        for trouble in ("Traceback", "Read-only file system", "Permission denied"):
            assert trouble not in text, text
    finally:
        _podman(podman, "rm", "--force", name, check=False)

    # Size: what the Dockerfile adds, and the whole image, under budgets set from measurement.
    size, base_size = _image_size(podman, tag), _image_size(podman, base)
    assert size - base_size <= ADDED_BUDGET_BYTES, (size, base_size)
    assert size <= IMAGE_BUDGET_BYTES, size


def test_debian_mirror_reads_both_apt_source_formats(tmp_path: Path) -> None:
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main contrib\n"
    )
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: https://other.example/x\nSuites: nodistro\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://822.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    assert debian_mirror("bookworm", [deb822, one_line]) == "http://822.example/debian"
    assert debian_mirror("bookworm", [one_line, deb822]) == "http://one.example/debian"
    assert debian_mirror("bookworm", [tmp_path / "absent"]) == "http://deb.debian.org/debian"
    assert debian_mirror("trixie", [one_line, deb822]) == "http://deb.debian.org/debian"
