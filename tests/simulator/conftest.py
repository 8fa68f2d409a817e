"""Fixtures for the simulator's own tests: a running simulator and plain clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pki_simulator import SimTenant, Simulator

from .helpers import ANCHOR, GraphClient

# --------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def module_sim() -> Iterator[Simulator]:
    """3 CAs x 120 certificates in pages of 50 (3 pages each), with quirks."""
    sim = Simulator.generate(seed=7, cas=3, certificates=120, page_size=50, anchor=ANCHOR)
    sim.start()
    yield sim
    sim.close()


@pytest.fixture
def sim(module_sim: Simulator) -> Iterator[Simulator]:
    module_sim.faults.clear()
    module_sim.clear_log()
    yield module_sim
    module_sim.faults.clear()
    module_sim.clear_log()


@pytest.fixture
def graph(sim: Simulator) -> Iterator[GraphClient]:
    client = GraphClient(sim, sim.tenants[0])
    sim.clear_log()
    yield client
    client.close()


@pytest.fixture
def make_graph() -> Iterator[Callable[..., GraphClient]]:
    made: list[GraphClient] = []

    def make(sim: Simulator, tenant: SimTenant | None = None, **kwargs: Any) -> GraphClient:
        client = GraphClient(sim, tenant or sim.tenants[0], **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
