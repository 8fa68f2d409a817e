"""``--config.check.online``: are my credentials and permissions right?

For each tenant of a config that passed the offline check: fetch a token from Entra ID,
list the Cloud PKI CAs with it, and say what the tenant can see, or what is missing (the
application permission on a 403). One line per finding, on the stream given; no secret
is ever printed (token errors are the ones the exporter logs, already scrubbed).
"""

from __future__ import annotations

import time
from typing import TextIO

from pki_exporter import outbound
from pki_exporter.config.model import Config, TenantConfig
from pki_exporter.graph.client import GraphClient, GraphError
from pki_exporter.graph.credentials import AuthError, token_provider
from pki_exporter.graph.retry import RetryPolicy
from pki_exporter.runtime.logs import redact

PERMISSION = "DeviceManagementCloudCA.Read.All"
"""The Microsoft Graph application permission the exporter needs (admin consent)."""


def check_online(config: Config, out: TextIO) -> int:
    """Check every tenant; returns the number of tenants with a problem."""
    failed = 0
    for tenant in config.tenants:
        if not _check_tenant(config, tenant, out):
            failed += 1
    return failed


def _check_tenant(config: Config, tenant: TenantConfig, out: TextIO) -> bool:
    timeout = config.refresh.timeout
    tokens = token_provider(tenant, timeout)
    route = outbound.tenant_route(tenant)
    client = GraphClient(
        tenant.graph_url,
        tokens,
        timeout=timeout,
        ca_bundle=tenant.ca_bundle,
        policy=RetryPolicy(max_attempts=2, max_delay=5.0, max_retry_after=10.0),
        route=route,
    )
    where = f"tenant {tenant.name} ({tenant.tenant_id})"
    print(f"{where}: routes: {outbound.describe_routes(tenant, route)}", file=out)
    try:
        try:
            tokens.token()
        except AuthError as exc:
            print(f"error: {where}: no token from {tenant.authority_host}: {_line(exc)}", file=out)
            return False
        try:
            cas = client.list_cas(time.monotonic() + 2 * timeout)
        except GraphError as exc:
            if exc.status == 403:
                app = f"app {tenant.client_id}" if tenant.client_id else "managed identity"
                print(
                    f"error: {where}: token OK, but Graph refused to list the CAs (403): the "
                    f"{app} lacks the application permission {PERMISSION} "
                    f"(grant it and give admin consent); Graph said: {_line(exc)}",
                    file=out,
                )
            else:
                print(f"error: {where}: token OK, listing the CAs failed: {_line(exc)}", file=out)
            return False
    finally:
        client.close()
        tokens.close()
    names = sorted(str(ca.get("displayName") or ca.get("id")) for ca in cas)
    shown = f": {', '.join(names)}" if names else ""
    print(
        f"{where}: token OK, {len(cas)} CA{'s' if len(cas) != 1 else ''} visible{shown}", file=out
    )
    ok = True
    if tenant.certification_authorities != "all":
        visible = {str(ca.get("id", "")).lower() for ca in cas}
        for ref in tenant.certification_authorities:
            if ref.id.lower() not in visible:
                print(f"error: {where}: configured CA {ref.id} is not visible", file=out)
                ok = False
    return ok


def _line(exc: BaseException) -> str:
    """The error whole, on one line (its cause is never cut; the messages bound themselves)."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__)
