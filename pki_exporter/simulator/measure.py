"""How fast the simulator serves leaf pages to an httpx client (``python -m
pki_exporter.simulator.measure``). Not a test: numbers for docs/simulator.md and a check
that the simulator is never the bottleneck of the exporter's benchmark.

The simulator runs in its own process (as it does beside the exporter in the benchmark),
started through the ``simulate`` command; the client walks every page of every CA with a
plain httpx client, once per encoding, and reports MB/s and records/s.
"""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pki_exporter.simulator.render import make_skiptoken

PREFIX = "/beta/deviceManagement/cloudCertificationAuthority"
ACTION = "getAllCloudCertificationAuthorityLeafCertificates"


@dataclass
class Pass:
    name: str
    seconds: float
    wire_bytes: int
    json_bytes: int
    records: int
    pages: int

    def line(self) -> str:
        json_rate = (
            f"{self.json_bytes / self.seconds / 1e6:8.1f} MB/s JSON"
            if self.json_bytes
            else "     (not decoded)"
        )
        return (
            f"{self.name:<24} {self.seconds:7.2f} s  {self.pages:6d} pages  "
            f"{self.wire_bytes / self.seconds / 1e6:8.1f} MB/s wire  {json_rate}  "
            f"{self.records / self.seconds:10.0f} records/s"
        )


def _field(lines: list[str], name: str) -> str:
    return next(line.split(":", 1)[1].split()[0] for line in lines if line.startswith(name + ":"))


def _walk(
    client: httpx.Client,
    url: str,
    ca_ids: list[str],
    pages_per_ca: int,
    name: str,
    *,
    gzip: bool,
    decode: bool,
) -> Pass:
    """Fetch every page; the links are built from the simulator's own skiptoken format so
    that the client spends no time parsing JSON: what is timed is the serving."""
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    wire = json_bytes = pages = 0
    started = time.perf_counter()
    for ca_id in ca_ids:
        base = f"{url}{PREFIX}/{ca_id}/{ACTION}"
        for page in range(pages_per_ca):
            method, target = ("POST", base) if page == 0 else ("GET", base)
            params = {} if page == 0 else {"$skiptoken": make_skiptoken("action", ca_id, page)}
            with client.stream(method, target, headers=headers, params=params) as response:
                response.raise_for_status()
                if decode:
                    json_bytes += len(response.read())
                    wire += int(response.headers["Content-Length"])
                else:
                    wire += sum(len(chunk) for chunk in response.iter_raw())
            pages += 1
    return Pass(name, time.perf_counter() - started, wire, json_bytes, 0, pages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pki_exporter.simulator.measure")
    parser.add_argument("--cas", type=int, default=10)
    parser.add_argument("--certificates", type=int, default=10_000, help="per CA")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="passes per encoding")
    args = parser.parse_args(argv)
    command = [
        sys.executable, "-m", "pki_exporter.simulator", "--cas", str(args.cas),
        "--certificates", str(args.certificates), "--page-size", str(args.page_size),
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--warm"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Serving until"):
                break
        warm_seconds = time.perf_counter() - started
        url = _field(lines, "Authority URL")
        bundle = _field(lines, "CA bundle")
        tenant_id, client_id = _field(lines, "Tenant id"), _field(lines, "Client id")
        secret = _field(lines, "Client secret")
        ca_ids = [line.split()[1] for line in lines if line.startswith("  CA ")]
        rss = _rss_mb(process.pid)
        context = ssl.create_default_context(cafile=bundle)
        with httpx.Client(verify=context, trust_env=False, timeout=60) as client:
            token = client.post(
                f"{url}/{tenant_id}/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": secret,
                    "scope": f"{url}/.default",
                },
            ).json()["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"
            records = args.cas * args.certificates
            print(
                f"simulator: {args.cas} CAs x {args.certificates} certificates, pages of "
                f"{args.page_size}; generated, rendered and gzipped in {warm_seconds:.1f} s "
                f"(process start to ready), RSS {rss:.0f} MB"
            )
            pages_per_ca = -(-args.certificates // args.page_size)
            for name, gzip, decode in (
                ("identity", False, True),
                ("gzip (wire bytes)", True, False),
                ("gzip (httpx decodes)", True, True),
            ):
                for _ in range(args.repeat):
                    result = _walk(
                        client, url, ca_ids, pages_per_ca, name, gzip=gzip, decode=decode
                    )
                    result.records = records
                    print(result.line(), flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
