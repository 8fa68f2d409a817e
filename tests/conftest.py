"""Shared fixtures: a simulated tenant in this process, pki-exporter as a real subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import kinds
from tests.exporter_proc import ExporterProcess, base_env

ANCHOR = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
"""The frozen "now" of the end-to-end tests: the simulator's dates and the exporter's clock."""
FAKE_NOW = ANCHOR.isoformat()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its kind (unit, e2e, system) from the table in tests/kinds.py.

    A test of an unclassified module gets no kind, so `make unit/e2e/system` leave it out;
    tests/test_kinds.py fails on it and says where to add it.
    """
    for item in items:
        function = getattr(item, "originalname", item.name)
        module = kinds.module_name(item.path)
        kind = kinds.kind_of(module, function)
        if kind is not None:
            item.add_marker(kind)
        group = kinds.group_of(module, function)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., Any]]:
    """Start simulators (``Simulator.generate`` keywords, or ``spec=DatasetSpec``); stopped after the test."""
    from pki_simulator import Simulator

    started: list[Any] = []

    def start(spec: Any = None, **kwargs: Any) -> Any:
        if spec is not None:
            sim = Simulator.from_spec(spec)
        else:
            kwargs.setdefault("anchor", ANCHOR)
            sim = Simulator.generate(**kwargs)
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.close()


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """Start ``pki-exporter`` subprocesses with a frozen clock; stopped (log kept) after the test."""
    started: list[ExporterProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        port: int = 0,
        **kw: Any,
    ) -> ExporterProcess:
        environment = base_env(PKI_EXPORTER_FAKE_NOW=FAKE_NOW, **(env or {}))
        proc = ExporterProcess(
            args=[*args, "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug"],
            env=environment,
            cwd=tmp_path,
            port=port,
            **kw,
        )
        started.append(proc)
        return proc.start(wait_ready=wait_ready)

    yield start
    for proc in started:
        proc.stop()
