"""Ready-made tenants: the demo's, with one healthy CRL and one CRL fault to look at.

``pki-exporter --demo`` (and ``python -m pki_simulator --preset demo``) should show what
the exporter is for without a real tenant: CAs whose CRLs are fine, a renewed CA with two
CRLs, and one CA whose CRL lacks revocations Intune made (the critical "revocations
unpublished" alert).
"""

from __future__ import annotations

from datetime import datetime

from pki_simulator.dataset import generate_spec
from pki_simulator.faults import Fault
from pki_simulator.spec import DatasetSpec

DEMO_SEED = 42
DEMO_MISSING = 3
"""Revocations the demo's faulty CA leaves off its CRL."""


def demo_spec(
    seed: int = DEMO_SEED, certificates: int = 3000, anchor: datetime | None = None
) -> DatasetSpec:
    """One tenant, four CAs (one of each profile): healthy, HSM nearing its end, expired,
    and paused-and-renewed (two versions, two CRLs)."""
    return generate_spec(seed, 1, 4, certificates, anchor)


def demo_faults(spec: DatasetSpec) -> list[Fault]:
    """The demo's CRL fault: the second CA's CRL misses ``DEMO_MISSING`` revocations."""
    ca = spec.tenants[0].cas[1]
    return [Fault(kind="crl_missing", ca_id=ca.id, count=DEMO_MISSING)]
