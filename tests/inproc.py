"""In-process building blocks for unit tests against the simulator: specs and configs.

The simulator runs in the test's own process (real TLS on 127.0.0.1); the exporter's
parts are built from a real config file, read by the real loader.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pki_simulator import CASpec, DatasetSpec, Simulator, TenantSpec

from pki_exporter.config.load import Config, TenantConfig, load_config

ANCHOR = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TENANT_ID = "11111111-2222-4333-8444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
CA_A = "0a000000-0000-4000-8000-00000000000a"
CA_B = "0b000000-0000-4000-8000-00000000000b"


def ca(ca_id: str, name: str, certificates: int, page_size: int = 1000) -> CASpec:
    return CASpec(
        id=ca_id, display_name=name, certificates=certificates, page_size=page_size, quirk_share=0.0
    )


def one_tenant(*cas: CASpec, name: str = "contoso") -> DatasetSpec:
    """One tenant holding ``cas``: exact certificate counts, exact pages."""
    tenant = TenantSpec(tenant_id=TENANT_ID, client_id=CLIENT_ID, name=name, cas=tuple(cas))
    return DatasetSpec(seed=7, anchor=ANCHOR, tenants=(tenant,))


def write_config(
    sim: Simulator, directory: Path, *, refresh: dict[str, Any] | None = None, **tenant: Any
) -> Config:
    """The config of the simulator's first tenant (client secret in a file), loaded."""
    sim_tenant = sim.tenants[0]
    secret = directory / "secret"
    secret.write_text(sim_tenant.client_secret)
    secret.chmod(0o600)
    entry: dict[str, Any] = {
        "name": sim_tenant.name,
        "tenant_id": sim_tenant.tenant_id,
        "client_id": sim_tenant.client_id,
        "authority_host": sim.url,
        "graph_url": sim.url,
        "ca_bundle": str(sim.ca_bundle_path),
        "credential": {"client_secret_file": str(secret)},
        "certification_authorities": "all",
    }
    entry.update(tenant)
    doc = {
        "refresh": {"interval": "1s", "timeout": "5s", "concurrency": 2, **(refresh or {})},
        "expiry_windows_days": [7, 30, 90],
        "tenants": [entry],
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return load_config(str(path))


def tenant_config(sim: Simulator, directory: Path, **tenant: Any) -> TenantConfig:
    return write_config(sim, directory, **tenant).tenants[0]
