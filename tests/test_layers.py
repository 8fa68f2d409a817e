"""Dependencies point one way (docs/design.md, "Layout"): every import inside the package,
read from the source, is checked against the layers. A lower layer importing a higher one
fails here, naming the module and the import.

    cli -> app -> refresher -> graph / aggregate -> state <- metrics / web
    config, runtime: the ground floor, used by everyone
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pki_exporter"

# unit -> the units it may import (besides itself). A unit is a subpackage or a top module.
ALLOWED: dict[str, frozenset[str]] = {
    "runtime": frozenset({"config"}),
    "config": frozenset({"runtime"}),
    "graph": frozenset({"config", "runtime"}),
    "aggregate": frozenset({"graph", "config", "runtime"}),
    "crl": frozenset({"aggregate", "graph", "config", "runtime"}),
    "state": frozenset({"crl", "aggregate", "graph", "config", "runtime"}),
    "storage": frozenset({"state", "crl", "aggregate", "graph", "config", "runtime"}),
    "metrics": frozenset({"state", "crl", "aggregate", "graph", "config", "runtime"}),
    "web": frozenset({"metrics", "state", "crl", "aggregate", "config", "runtime"}),
    "crl_reader": frozenset({"crl", "state", "aggregate", "graph", "config", "runtime"}),
    "refresher": frozenset(
        {"crl_reader", "crl", "graph", "aggregate", "state", "storage", "config", "runtime"}
    ),
    "app": frozenset(
        {
            "refresher",
            "crl_reader",
            "crl",
            "metrics",
            "web",
            "storage",
            "state",
            "aggregate",
            "graph",
            "config",
            "runtime",
        }
    ),
    "cli": frozenset(
        {
            "app",
            "refresher",
            "crl_reader",
            "crl",
            "metrics",
            "web",
            "storage",
            "state",
            "aggregate",
            "graph",
            "config",
            "runtime",
        }
    ),
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
}
# Within the runtime floor, only sharding reads the config (it picks a shard's tenants).
MODULE_EXCEPTIONS = {("pki_exporter.runtime.sharding", "config")}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
        return ".".join(parts) if len(parts) > 1 else "pki_exporter.__init__"
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ours (exporter or simulator) in ``path``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pki_exporter":
                found += [(node.lineno, f"pki_exporter.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in OURS]


OURS = ("pki_exporter", "pki_simulator")
MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_is_known() -> None:
    units = {unit_of(module_name(path)) for path in MODULES}
    assert units <= set(ALLOWED), units - set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    module = module_name(path)
    unit = unit_of(module)
    wrong = []
    for line, imported in imports(path):
        if imported == "pki_simulator" or imported.startswith("pki_simulator."):
            # The simulator is a distribution of its own: only the command line may reach
            # it, lazily, for --demo and `simulate`.
            if module != "pki_exporter.cli":
                wrong.append(f"{path.name}:{line} imports {imported}")
            continue
        target = unit_of(imported)
        if target in ("__init__", unit) or imported == "pki_exporter.__version__":
            continue
        if target in ALLOWED[unit] or (module, target) in MODULE_EXCEPTIONS:
            continue
        wrong.append(f"{path.relative_to(ROOT)}:{line} ({unit}) imports {imported} ({target})")
    assert wrong == []


def test_the_checker_sees_a_backward_import(tmp_path: Path) -> None:
    """The rule itself: graph importing metrics is refused, metrics importing state is not."""
    assert "metrics" not in ALLOWED["graph"]
    assert "state" in ALLOWED["metrics"]
    source = tmp_path / "x.py"
    source.write_text("from pki_exporter.metrics.collector import render\nimport os\n")
    assert imports(source) == [(1, "pki_exporter.metrics.collector")]
