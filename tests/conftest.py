"""Shared fixtures: a simulated tenant in this process, pki-exporter as a real subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.exporter_proc import ExporterProcess, base_env, free_port

ANCHOR = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
"""The frozen "now" of the end-to-end tests: the simulator's dates and the exporter's clock."""
FAKE_NOW = ANCHOR.isoformat()


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
        port: int | None = None,
        **kw: Any,
    ) -> ExporterProcess:
        port = port or free_port()
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
