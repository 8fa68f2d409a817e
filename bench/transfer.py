"""The transfer floor: the same pages, the same HTTP client, decoding nothing.

The exporter's refresh is judged against this. The client here is built like
``pki_exporter.graph.client.GraphClient``'s (httpx, the same TLS context, the same headers,
``Accept-Encoding: gzip`` unless told otherwise), walks the same requests (token, CA list,
every leaf page of every CA following ``@odata.nextLink``) with the same number of CAs at
once, and does nothing with the bodies but find the next link with a byte search.
Also: the simulator's own throughput (what used to be ``pki_simulator.measure``),
to show it is not the bottleneck.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from bench.common import SimProcess
from pki_exporter.graph.client import CA_COLLECTION, LEAF_ACTION, USER_AGENT, ssl_context

_NEXT = b'"@odata.nextLink":"'


def next_link(body: bytes) -> str | None:
    """The page's nextLink without parsing it (it is the last member of the simulator's
    pages, and of Graph's; searching from the end costs nothing)."""
    at = body.rfind(_NEXT)
    if at < 0:
        return None
    start = at + len(_NEXT)
    return body[start : body.index(b'"', start)].decode()


@dataclass
class Walk:
    seconds: float
    pages: int
    wire_bytes: int
    body_bytes: int
    cpu_seconds: float = 0.0


def client_for(sim: SimProcess, encoding: str = "gzip") -> httpx.Client:
    """An httpx client as GraphClient builds it."""
    return httpx.Client(
        verify=ssl_context(sim.ca_bundle),
        timeout=httpx.Timeout(60.0),
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": encoding,
            "Prefer": "include-unknown-enum-members",
        },
        follow_redirects=False,
        trust_env=True,
    )


def _walk_ca(
    client: httpx.Client, url: str, headers: dict[str, str], counts: list[int], lock: threading.Lock
) -> None:
    link: str | None = url
    method = "POST"
    pages = wire = size = 0
    while link:
        with client.stream(method, link, headers=headers) as response:
            response.raise_for_status()
            body = response.read()
            wire += response.num_bytes_downloaded
        size += len(body)
        pages += 1
        link = next_link(body)
        method = "GET" if link and "$skiptoken" in link else "POST"
    with lock:
        counts[0] += pages
        counts[1] += wire
        counts[2] += size


def download_all(sim: SimProcess, *, encoding: str = "gzip", concurrency: int = 4) -> Walk:
    """Token, CA list and every leaf page of every tenant, ``concurrency`` CAs at once."""
    counts = [0, 0, 0]
    lock = threading.Lock()
    started, cpu_started = time.perf_counter(), time.process_time()
    with client_for(sim, encoding) as client, ThreadPoolExecutor(concurrency) as pool:
        futures = []
        for tenant in sim.tenants:
            token = sim.token(client, tenant)
            headers = {"Authorization": f"Bearer {token}"}
            listed = client.get(sim.url + CA_COLLECTION, headers=headers)
            listed.raise_for_status()
            for ca_id in tenant.ca_ids:
                url = f"{sim.url}{CA_COLLECTION}/{ca_id}/{LEAF_ACTION}"
                futures.append(pool.submit(_walk_ca, client, url, headers, counts, lock))
        for future in futures:
            future.result()
    return Walk(
        time.perf_counter() - started,
        counts[0],
        counts[1],
        counts[2],
        time.process_time() - cpu_started,
    )


def simulator_throughput(sim: SimProcess, *, gzip: bool) -> Walk:
    """What the simulator can serve: one keep-alive connection, every page of every CA,
    bytes counted as sent (gzip not inflated). The links are built from the simulator's own
    skip-token format, so that the client parses nothing: what is timed is the serving.
    (Formerly ``python -m pki_simulator.measure``.)"""
    from pki_simulator.render import make_skiptoken

    pages = wire = 0
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    with client_for(sim, headers["Accept-Encoding"]) as client:
        started = time.perf_counter()
        for tenant in sim.tenants:
            headers["Authorization"] = f"Bearer {sim.token(client, tenant)}"
            for ca_id in tenant.ca_ids:
                base = f"{sim.url}{CA_COLLECTION}/{ca_id}/{LEAF_ACTION}"
                for page in range(-(-sim.certificates // sim.page_size)):
                    method = "POST" if page == 0 else "GET"
                    params = (
                        {} if page == 0 else {"$skiptoken": make_skiptoken("action", ca_id, page)}
                    )
                    with client.stream(method, base, headers=headers, params=params) as response:
                        response.raise_for_status()
                        wire += sum(len(chunk) for chunk in response.iter_raw())
                    pages += 1
        seconds = time.perf_counter() - started
    return Walk(seconds, pages, wire, 0)


def describe(walk: Walk, records: int) -> str:
    json_rate = (
        f", {walk.body_bytes / walk.seconds / 1e6:.0f} MB/s of JSON" if walk.body_bytes else ""
    )
    return (
        f"{walk.seconds:.2f} s, {walk.pages} pages, {walk.wire_bytes / walk.seconds / 1e6:.0f} "
        f"MB/s on the wire{json_rate}, {records / walk.seconds:,.0f} records/s"
    )


def best(walks: Sequence[Walk]) -> Walk:
    return min(walks, key=lambda w: w.seconds)
