"""requirements.lock, the image's pinned and hashed dependencies, still matches pyproject.toml.

`make lock` writes it with pip-compile --generate-hashes from pyproject.toml's runtime
dependencies; the Dockerfile installs it with --require-hashes. This test fails when
someone edits the dependencies in pyproject.toml and forgets `make lock`: every runtime
requirement must be pinned at a version it accepts, the lock's top-level names must be
exactly pyproject's, and every pin must carry hashes and be needed by something.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
TOP_LEVEL = "pki-exporter (pyproject.toml)"


@dataclass
class Pin:
    version: Version
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> dict[str, Pin]:
    """pip-compile's output: ``name==version \\``, ``--hash=...`` lines, ``# via`` comments."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        if match := re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*\\?", line):
            current = pins[canonicalize_name(match[1])] = Pin(Version(match[2]))
            in_via = False
        elif line.startswith("--hash=") and current is not None:
            current.hashes.append(line.removeprefix("--hash=").rstrip(" \\"))
        elif line.startswith("# via") and current is not None:
            rest = line.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.append(rest)
        elif in_via and line.startswith("#   ") and current is not None:
            current.via.append(line.removeprefix("#").strip())
        elif line and not line.startswith("#"):
            raise ValueError(f"requirements.lock: unexpected line {line!r}")
    return pins


def runtime_requirements(pyproject_text: str) -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads(pyproject_text)["project"]["dependencies"]]


def lock_problems(pyproject_text: str, lock_text: str) -> list[str]:
    """Why the lock does not match pyproject.toml, as sentences (none when it does)."""
    pins = parse_lock(lock_text)
    problems = []
    wanted: set[str] = set()
    for requirement in runtime_requirements(pyproject_text):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        wanted.add(name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{requirement} is not in requirements.lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} does not accept the locked {name}=={pin.version}")
    top_level = {name for name, pin in pins.items() if TOP_LEVEL in pin.via}
    for name in sorted(top_level - wanted):
        problems.append(f"{name} is locked as a requirement of pyproject.toml, which has none")
    for name in sorted(wanted - top_level):
        if name in pins:
            problems.append(f"{name} is locked, but not as a requirement of pyproject.toml")
    for name, pin in sorted(pins.items()):
        if not pin.hashes or not all(h.startswith("sha256:") for h in pin.hashes):
            problems.append(f"{name}=={pin.version} has no sha256 hash")
        needed_by = {canonicalize_name(v) for v in pin.via if v != TOP_LEVEL}
        if TOP_LEVEL not in pin.via and not needed_by & set(pins):
            problems.append(f"{name}=={pin.version} is needed by nothing locked")
    return problems


def test_lock_matches_pyproject() -> None:
    problems = lock_problems(PYPROJECT.read_text(), LOCK.read_text())
    assert problems == [], "requirements.lock is stale; run `make lock`:\n" + "\n".join(problems)


def test_lock_is_written_by_make_lock() -> None:
    text = LOCK.read_text()
    assert "pip-compile" in text[:600] and "--generate-hashes" in text[:600]
    makefile = (ROOT / "Makefile").read_text()
    assert "--generate-hashes" in makefile and "--output-file requirements.lock" in makefile
    # The Dockerfile installs exactly the lock, hash-checked, then the exporter alone.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("--require-hashes") == 2
    assert "--no-deps" in dockerfile
    # The lock is in the image's build context.
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda p: p.replace('"msal>=1.35,<2",', '"msal>=1.35,<2",\n    "rich>=13",'),
            "rich>=13 is not in requirements.lock",
        ),
        (
            lambda p: p.replace('"httpx>=0.27,<1",', '"httpx>=0.27,<0.28",'),
            "httpx<0.28,>=0.27 does not accept the locked httpx==",
        ),
        (
            lambda p: p.replace('    "bcrypt>=4.1,<6",\n', ""),
            "bcrypt is locked as a requirement of pyproject.toml, which has none",
        ),
    ],
    ids=["new dependency", "tightened bound", "dropped dependency"],
)
def test_a_stale_lock_is_caught(edit: object, expected: str) -> None:
    pyproject = PYPROJECT.read_text()
    changed = edit(pyproject)  # type: ignore[operator]
    assert changed != pyproject, "edit out of date with pyproject.toml"
    problems = lock_problems(changed, LOCK.read_text())
    assert any(expected in p for p in problems), problems


def test_a_lock_without_hashes_or_with_strays_is_caught() -> None:
    lock = LOCK.read_text()
    unhashed = re.sub(r"(idna==\S+) \\\n(\s+--hash=\S+( \\)?\n)+", r"\1\n", lock)
    assert unhashed != lock
    assert any(
        "idna==" in p and "no sha256 hash" in p
        for p in lock_problems(PYPROJECT.read_text(), unhashed)
    )
    stray = lock + "left-pad==1.0 \\\n    --hash=sha256:00\n    # via nothing-here\n"
    assert "left-pad==1.0 is needed by nothing locked" in lock_problems(
        PYPROJECT.read_text(), stray
    )
