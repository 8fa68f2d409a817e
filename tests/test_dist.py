"""The wheel and the sdist, built with `python -m build`, installed on their own, checked by twine.

What users install is built here exactly as a release would be (sdist first, the wheel from
the sdist), in a temporary directory; the wheel goes into a fresh venv with nothing but its
own dependencies, and the installed `pki-exporter` runs from there: --version, and
--config.check on the example configuration. `twine check --strict` validates both
archives' metadata (the README renders on PyPI); the wheel carries the package and nothing
of the repository's tests or benchmarks.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pki_exporter import __version__

ROOT = Path(__file__).resolve().parent.parent
WHEEL = f"pki_exporter-{__version__}-py3-none-any.whl"
SDIST = f"pki_exporter-{__version__}.tar.gz"


def _run(*command: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,  # type: ignore[call-overload]
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    assert sorted(p.name for p in out.iterdir()) == [WHEEL, SDIST]
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv (no system site-packages) with the wheel and its dependencies only."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", venv)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(*pip, "install", dist / WHEEL)
    yield venv


def _wheel_names(dist: Path) -> list[str]:
    with zipfile.ZipFile(dist / WHEEL) as wheel:
        return wheel.namelist()


def test_the_installed_wheel_runs(installed: Path, tmp_path: Path) -> None:
    exe = installed / "bin" / "pki-exporter"
    # Run from elsewhere with a clean environment: the repository is not on the path.
    env = {"PATH": f"{installed / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8"}
    version = _run(exe, "--version", cwd=tmp_path, env=env)
    assert version.stdout.startswith(f"pki-exporter, version {__version__} ")
    where = _run(
        installed / "bin" / "python", "-c", "import pki_exporter; print(pki_exporter.__file__)",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert where.stdout.startswith(str(installed)), where.stdout
    # The example as shipped: valid, but its placeholder GUIDs could never get a token.
    example = ROOT / "config.example.yaml"
    secret = {**env, "PKI_EXPORTER_CLIENT_SECRET": "not-a-real-secret"}
    check = subprocess.run(
        [exe, "--config.check", "--config.file", example],
        cwd=tmp_path, env=secret, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (check.returncode, check.stderr) == (1, "")
    assert check.stdout.splitlines() == [
        f"error: {example}: tenants[0]: tenant_id and client_id still hold the example's "
        "placeholder GUIDs; put in your own (Entra admin center: the tenant's and the app "
        "registration's Overview)",
        f"{example}: FAILED (1 problem)",
    ]
    mine = tmp_path / "config.yaml"
    mine.write_text(
        example.read_text()
        .replace("00000000-0000-0000-0000-000000000000", "contoso.onmicrosoft.com")
        .replace("11111111-1111-1111-1111-111111111111", "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
    )
    check = _run(exe, "--config.check", "--config.file", mine, cwd=tmp_path, env=secret)
    assert check.stdout.startswith(f"{mine}: OK ("), check.stdout
    assert "not-a-real-secret" not in check.stdout + check.stderr
    # Without the simulator (a distribution of its own), --demo says in one line how to get it.
    demo = subprocess.run(
        [exe, "--demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert demo.returncode == 1
    assert demo.stderr == (
        "pki-exporter: the simulated tenant is not installed (it is a distribution of its own, "
        "kept out of the exporter's wheel and image): run 'make demo' in a clone, or "
        "'pip install ./simulator'\n"
    )
    # Nothing but the wheel's dependencies in the venv.
    frozen = _run(installed / "bin" / "python", "-m", "pip", "list", "--format=freeze", env=env)
    names = {line.split("==")[0].lower() for line in frozen.stdout.split()}
    assert "pki-exporter" in names
    for dev_only in ("pytest", "ruff", "mypy", "hypothesis", "build", "twine"):
        assert dev_only not in names


def test_twine_accepts_both_archives(dist: Path) -> None:
    result = _run(sys.executable, "-m", "twine", "check", "--strict", dist / WHEEL, dist / SDIST)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_holds_the_package_and_its_metadata_only(dist: Path) -> None:
    names = _wheel_names(dist)
    info = f"pki_exporter-{__version__}.dist-info/"
    assert all(n.startswith(("pki_exporter/", info)) for n in names), names
    assert "pki_exporter/py.typed" in names and "pki_exporter/cli.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "/tests/" in n]
    with zipfile.ZipFile(dist / WHEEL) as wheel:
        metadata = Parser().parsestr(wheel.read(info + "METADATA").decode())
        entry_points = wheel.read(info + "entry_points.txt").decode()
    assert metadata["Name"] == "pki-exporter" and metadata["Version"] == __version__
    assert metadata["Requires-Python"] == ">=3.11"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {str(Requirement(r)) for r in pyproject["dependencies"]}
    required = {
        str(Requirement(r)) for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r
    }
    assert required == runtime
    assert "pki-exporter = pki_exporter.cli:main" in entry_points


def test_wheel_holds_no_simulator(dist: Path) -> None:
    names = _wheel_names(dist)
    assert not [n for n in names if re.search(r"(^|/)(pki_)?simulator(/|\.py$)", n)], names


def test_sdist_holds_the_sources_and_no_local_clutter(dist: Path) -> None:
    with tarfile.open(dist / SDIST) as sdist:
        names = [n.split("/", 1)[1] for n in sdist.getnames() if "/" in n]
    for needed in ("pyproject.toml", "README.md", "pki_exporter/__init__.py", "PKG-INFO"):
        assert needed in names, needed
    for clutter in (".venv/", ".git/", "__pycache__", ".pyc", "test-output/", ".mypy_cache"):
        assert not [n for n in names if clutter in n], clutter
