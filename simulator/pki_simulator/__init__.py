"""A simulated Microsoft Graph tenant for Intune Cloud PKI: authority, Graph, data, faults.

It lets every test and the demo go through the exporter's real code path (MSAL over
TLS, httpx, paging, throttling, errors) on loopback, with exact expected values.
"""

from pki_simulator.app import Simulator
from pki_simulator.authority import SimTenant
from pki_simulator.dataset import QUIRK_NAMES, generate_spec
from pki_simulator.faults import FAULT_KINDS, Fault, FaultSet
from pki_simulator.limits import GraphLimits
from pki_simulator.requestlog import RequestLogEntry
from pki_simulator.spec import CASpec, DatasetSpec, TenantSpec
from pki_simulator.truth import METRICS, SampleKey

__all__ = [
    "FAULT_KINDS",
    "METRICS",
    "QUIRK_NAMES",
    "CASpec",
    "DatasetSpec",
    "Fault",
    "FaultSet",
    "GraphLimits",
    "RequestLogEntry",
    "SampleKey",
    "SimTenant",
    "Simulator",
    "TenantSpec",
    "generate_spec",
]
