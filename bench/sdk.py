"""What a Python user would otherwise write: the official Microsoft Graph beta SDK for
Python (``msgraph-beta-sdk``, Kiota-generated, azure-identity for the token) reading the
same leaf certificates from the simulator, page after page, counting them by status.

Optional (``pip install msgraph-beta-sdk``); without it the row says "skipped". It runs in
a process of its own (``python -m bench.sdk CONFIG.json``) so that its peak RSS is its own.
Pointing it at the simulator takes: the authority host (``authority=``, instance discovery
off), the simulator's CA bundle (``SSL_CERT_FILE`` for azure-identity's aiohttp transport,
an ``httpx.AsyncClient`` with the bundle for Graph), the scope ``<simulator>/.default``, the
simulator's host among the auth provider's ``allowed_hosts`` and the request adapter's
``base_url``. Up to 4 CAs are read at once (``asyncio``), as the exporter does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import ssl
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.common import PYTHON, ROOT, Row, SimProcess, child_env, peak_rss_mb

CONCURRENCY = 1
"""CAs read at once. Parsing a page into the SDK's models takes the event loop for tens of
seconds, long enough for a second connection's TLS handshake to time out: one at a time."""


def available() -> str | None:
    """None when the SDK can run, else why not."""
    for module in ("msgraph_beta", "azure.identity", "kiota_authentication_azure"):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install msgraph-beta-sdk)"
        except ModuleNotFoundError:
            return f"{module.split('.')[0]} is not installed (pip install msgraph-beta-sdk)"
    return None


@dataclass
class SdkResult:
    seconds: float | None
    peak_rss_mb: float | None
    records: int
    pages: int = 0
    skipped: str | None = None
    error: str | None = None
    """What stopped the SDK before the end (the exception it raised)."""
    complete: bool = False

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def row(self, label: str, exporter_rate: float, quirky: SdkResult | None) -> Row:
        name = f"Graph beta SDK (msgraph-beta-sdk) reading leaf pages, {label}"
        if self.skipped or not self.seconds:
            return Row(name, "skipped", "-", "-", "-", f"skipped: {self.skipped or self.error}")
        how = "all" if self.complete else "the first"
        failed = ""
        if quirky is not None and quirky.error:
            failed = (
                f"; on the benchmark's data set (2% quirky records) it stops at the first "
                f"unreadable date: `{quirky.error}`"
            )
        elif quirky is not None and quirky.skipped:
            failed = f"; on the benchmark's data set: {quirky.skipped}"
        return Row(
            name,
            f"{self.rate:,.0f} records/s ({how} {self.records:,} records, {self.pages} pages, "
            f"in {self.seconds:.1f} s; peak RSS {self.peak_rss_mb:.0f} MB){failed}",
            f"exporter's full refresh {exporter_rate:,.0f} records/s",
            f"exporter {exporter_rate / self.rate:,.0f}x faster",
            "(a peer, no target)",
            "-",
        )


def read_all(sim: SimProcess, *, budget: float, timeout: float = 240) -> SdkResult:
    """Run the SDK reader in its own process against the simulator's CAs; it stops after
    the page that passes ``budget`` seconds (the SDK reads a few dozen records a second)."""
    why = available()
    if why:
        print(f"   Graph beta SDK: skipped: {why}", flush=True)
        return SdkResult(None, None, 0, skipped=why)
    job = {
        "url": sim.url,
        "budget": budget,
        "tenants": [
            {"tenant_id": t.tenant_id, "client_id": t.client_id, "secret": t.client_secret,
             "ca_ids": t.ca_ids}
            for t in sim.tenants
        ],
    }  # fmt: skip
    env = child_env(SSL_CERT_FILE=sim.ca_bundle, REQUESTS_CA_BUNDLE=sim.ca_bundle,
                    BENCH_SDK_CA_BUNDLE=sim.ca_bundle, PYTHONPATH=str(ROOT))  # fmt: skip
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.sdk", json.dumps(job)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    peak = 0.0
    started = time.perf_counter()
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        if time.perf_counter() - started > timeout:
            proc.kill()
            proc.wait()
            why = f"did not finish within {timeout:.0f} s"
            print(f"   Graph beta SDK: {why}", flush=True)
            return SdkResult(None, None, 0, error=why)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        why = "failed: " + (err.decode().strip().splitlines() or ["?"])[-1][:200]
        print(f"   Graph beta SDK: {why}", flush=True)
        return SdkResult(None, None, 0, error=why)
    result = json.loads(out)
    print(f"   Graph beta SDK: {result['seconds']:.2f} s for {result['records']:,} records in "
          f"{result['pages']} pages (token {result['token_seconds']:.2f} s), peak RSS {peak:.0f} MB, "
          f"by status {result['statuses']}" + (f"; stopped by {result['error']}" if result["error"] else ""),
          flush=True)  # fmt: skip
    return SdkResult(
        result["seconds"], peak, result["records"], result["pages"], None, result["error"],
        result["complete"],
    )  # fmt: skip


# -- the reader (in its own process) -----------------------------------------------------


async def _read(job: dict[str, Any]) -> dict[str, Any]:
    import httpx
    from azure.identity.aio import ClientSecretCredential
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph_beta import GraphRequestAdapter, GraphServiceClient  # type: ignore[import-untyped]
    from msgraph_core import APIVersion, GraphClientFactory  # type: ignore[import-untyped]

    url = job["url"]
    host = urlsplit(url).hostname or "127.0.0.1"
    context = ssl.create_default_context(cafile=os.environ["BENCH_SDK_CA_BUNDLE"])
    statuses: Counter[str] = Counter()
    pages = 0
    started = time.perf_counter()
    deadline = started + float(job["budget"])
    token_seconds = 0.0
    error: str | None = None
    complete = True
    for tenant in job["tenants"]:
        credential = ClientSecretCredential(
            tenant["tenant_id"],
            tenant["client_id"],
            tenant["secret"],
            authority=url,
            disable_instance_discovery=True,
        )
        auth = AzureIdentityAuthenticationProvider(
            credential, scopes=[f"{url}/.default"], allowed_hosts=[host]
        )
        http = GraphClientFactory.create_with_default_middleware(
            api_version=APIVersion.beta,
            client=httpx.AsyncClient(verify=context, timeout=httpx.Timeout(60.0)),
        )
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = f"{url}/beta"
        client = GraphServiceClient(request_adapter=adapter)
        t0 = time.perf_counter()
        await credential.get_token(f"{url}/.default")
        token_seconds += time.perf_counter() - t0
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(ca_id: str) -> None:
            nonlocal pages, complete
            async with gate:
                if time.perf_counter() > deadline:
                    complete = False
                    return
                cas = client.device_management.cloud_certification_authority
                action = cas.by_cloud_certification_authority_id(
                    ca_id
                ).get_all_cloud_certification_authority_leaf_certificates
                page = await action.post()
                while page is not None:
                    pages += 1
                    for leaf in page.value or []:
                        status = leaf.certificate_status
                        statuses[str(getattr(status, "value", status))] += 1
                    if not page.odata_next_link:
                        break
                    if time.perf_counter() > deadline:
                        complete = False
                        break
                    page = await action.with_url(page.odata_next_link).post()

        try:
            await asyncio.gather(*(one(ca_id) for ca_id in tenant["ca_ids"]))
        except Exception as exc:  # what the SDK raises on a page it cannot read
            error = f"{type(exc).__name__}: {str(exc)[:120]}"
            complete = False
        await credential.close()
        await http.aclose()
    return {
        "seconds": time.perf_counter() - started,
        "token_seconds": token_seconds,
        "records": sum(statuses.values()),
        "pages": pages,
        "statuses": dict(statuses.most_common(4)),
        "error": error,
        "complete": complete,
    }


def main(argv: list[str]) -> int:
    result = asyncio.run(_read(json.loads(argv[0])))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
