"""Every test module has a kind, so that `make unit`, `make e2e` and `make system` together
run every test (`make test` runs the three)."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests import kinds

PYPROJECT = kinds.TESTS_DIR.parent / "pyproject.toml"


def test_every_test_module_is_classified() -> None:
    modules = sorted(kinds.module_name(path) for path in kinds.TESTS_DIR.rglob("test_*.py"))
    missing = [
        kinds.unclassified_message(module) for module in modules if module not in kinds.MODULES
    ]
    assert not missing, "\n".join(missing)


def test_the_tables_name_only_what_exists_and_only_the_three_kinds() -> None:
    stale = [m for m in kinds.MODULES if not (kinds.TESTS_DIR / m).is_file()]
    assert not stale, f"remove from MODULES in {kinds.WHERE}: {stale}"
    for key, kind in [*kinds.MODULES.items(), *kinds.TESTS.items()]:
        assert kind in kinds.KINDS, (key, kind)
    for key in [*kinds.TESTS, *(g for g in kinds.GROUPS if "::" in g)]:
        module, function = key.split("::")
        source = (kinds.TESTS_DIR / module).read_text()
        assert re.search(rf"^def {function}\(", source, re.M), f"no test {key} ({kinds.WHERE})"
    for key in kinds.TESTS:
        module = key.split("::")[0]
        assert kinds.TESTS[key] != kinds.MODULES[module], f"{key} repeats its module's kind"
    for key in kinds.GROUPS:
        assert key.split("::")[0] in kinds.MODULES, f"{key} in GROUPS is no classified module"


def test_the_kinds_are_registered_markers() -> None:
    markers = tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert [m.split(":")[0] for m in markers if m.split(":")[0] in kinds.KINDS] == list(kinds.KINDS)


def test_a_test_gets_its_kind(request: pytest.FixtureRequest) -> None:
    assert [m.name for m in request.node.iter_markers() if m.name in kinds.KINDS] == ["unit"]
    assert (
        kinds.kind_of("test_deploy.py", "test_every_manifest_is_used_by_a_kustomization") == "unit"
    )
    assert kinds.kind_of("test_deploy.py", "test_dockerfile_passes_hadolint") == "system"
    assert kinds.kind_of("test_nothing_here.py", "test_x") is None
    assert kinds.unclassified_message("simulator/test_new.py") == (
        'tests/simulator/test_new.py is not classified: add "simulator/test_new.py": "unit" or '
        '"e2e" or "system" to MODULES in tests/kinds.py (its docstring says which kind)'
    )
