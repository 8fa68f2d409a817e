"""``python -m pki_simulator`` (and ``pki-exporter simulate``): a tenant to point at.

It prints everything a user needs to aim their own exporter (or curl) at it, including a
config snippet to paste, and serves until interrupted. The printed secret is the
simulator's own throwaway one.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from datetime import datetime
from types import FrameType
from typing import Any, TextIO

import yaml

from pki_simulator.app import Simulator
from pki_simulator.dataset import generate_spec
from pki_simulator.faults import FAULT_KINDS, Fault, parse_cli_fault
from pki_simulator.graph import LEAF_FIELDS
from pki_simulator.limits import GraphLimits, parse_page_latency

SECRET_ENV = "PKI_EXPORTER_CLIENT_SECRET"  # noqa: S105 (the variable's name)


def _anchor(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("needs an offset, e.g. 2025-06-01T00:00:00Z")
    return parsed


def _fault(text: str) -> Fault:
    try:
        return parse_cli_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _graph_limits(text: str) -> GraphLimits:
    try:
        return GraphLimits.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _page_latency(text: str) -> tuple[float, float] | None:
    try:
        return parse_page_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _select(text: str) -> str:
    fields = [f.strip() for f in text.split(",") if f.strip()]
    if text.strip() == "*":
        return "*"
    unknown = [f for f in fields if f not in LEAF_FIELDS]
    if unknown or not fields:
        raise argparse.ArgumentTypeError(
            f"unknown leaf field {unknown[0] if unknown else text!r} (or * for all)"
        )
    return ",".join(fields)


def _shares(text: str) -> tuple[tuple[str, float], ...]:
    try:
        pairs = [item.split("=", 1) for item in text.split(",")]
        return tuple((name.strip(), float(weight)) for name, weight in pairs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STATUS=WEIGHT,..., got {text!r}") from None


def build_parser(prog: str = "python -m pki_simulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a simulated Microsoft Graph tenant with Intune Cloud PKI data "
        "(fake Entra ID authority + Graph beta) over HTTPS on loopback.",
        epilog="Fault kinds: " + ", ".join(FAULT_KINDS) + ". Example: --fault "
        "throttle:retry_after=2,times=3 --fault page_error:page=1",
    )
    parser.add_argument("--tenants", type=int, default=1, help="tenants (default 1)")
    parser.add_argument("--cas", type=int, default=3, help="CAs per tenant (default 3)")
    parser.add_argument(
        "--certificates", type=int, default=1000, help="leaf certificates per CA (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=1, help="data set seed (default 1)")
    parser.add_argument(
        "--page-size", type=int, default=1000, help="leaf certificates per page (default 1000)"
    )
    parser.add_argument(
        "--ca-page-size", type=int, default=100, help="CAs per page of the CA list (default 100)"
    )
    parser.add_argument(
        "--anchor",
        type=_anchor,
        default=None,
        help="RFC 3339 instant the dates are generated around (default: now)",
    )
    parser.add_argument(
        "--quirk-share",
        type=float,
        default=0.02,
        help="share of records with a real-tenant quirk (default 0.02)",
    )
    parser.add_argument(
        "--broken-renewal-share",
        type=float,
        default=0.0,
        help="share of active certificates whose renewal is broken: they end within 7 days "
        "of the anchor (default 0)",
    )
    parser.add_argument(
        "--renewed-share",
        type=float,
        default=0.8,
        help="share of active certificates inside their renewal window whose device "
        "renewed (default 0.8)",
    )
    parser.add_argument(
        "--status-shares",
        type=_shares,
        default=None,
        metavar="STATUS=W,...",
        help="status mix of the leaf certificates, e.g. active=1 (default: active=0.62,"
        "revoked=0.14,expired=0.22,unknown=0.02)",
    )
    parser.add_argument(
        "--no-device-share",
        type=float,
        default=0.01,
        help="share of certificates issued to no device (default 0.01)",
    )
    parser.add_argument(
        "--preset",
        choices=["demo"],
        default=None,
        help="a ready-made tenant: 'demo' = 4 CAs (one renewed, two CRLs) and the second "
        "CA's CRL missing 3 revocations (--seed, --certificates and --anchor still apply)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--cdn-host",
        default="127.0.0.1",
        help="host name the CRL and CA-certificate URLs carry (default 127.0.0.1; a name "
        "must resolve to the listen address, e.g. localhost)",
    )
    parser.add_argument(
        "--cdn-port", type=int, default=0, help="CDN (CRL) listen port (default 0 = any free)"
    )
    parser.add_argument("--port", type=int, default=0, help="listen port (default 0 = any free)")
    parser.add_argument(
        "--token-lifetime", type=int, default=3600, help="access token lifetime, s (default 3600)"
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND[:k=v,...]",
        help="a fault active from the start (repeatable); keys: tenant_id, ca_id, page, "
        "times, retry_after, delay, status, target, next_link_base, attempts, and for crl_* "
        "faults version, count, size, next_update_in",
    )
    parser.add_argument(
        "--warm-navigation",
        type=_select,
        default=None,
        metavar="FIELDS|*",
        help="also pre-encode the navigation property's records for this $select "
        "(comma-separated fields; * = whole records), for benchmarks",
    )
    parser.add_argument(
        "--graph-limits",
        type=_graph_limits,
        default=None,
        metavar="default|APP_REQ/APP_WRITES[/WINDOW[/TENANT_REQ/TENANT_WRITES]]",
        help="enforce Graph's request limits with 429 + Retry-After: 'default' = "
        "Microsoft's documented Intune limits (1000 requests and 100 writes per 20 s per "
        "app, 2000/200 per tenant); tenant limits default to twice the app limits "
        "(default: no limits)",
    )
    parser.add_argument(
        "--page-latency",
        type=_page_latency,
        default=None,
        metavar="SECONDS|LOW-HIGH",
        help="wait before answering each leaf page, fixed or drawn from a range, e.g. "
        "0.15-0.4 (default: none)",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="render and gzip every page before serving (for benchmarks)",
    )
    return parser


def exporter_config(sim: Simulator) -> tuple[str, list[tuple[str, str]]]:
    """A config snippet for the exporter, and the (variable, secret) pairs it reads."""
    tenants: list[dict[str, Any]] = []
    env: list[tuple[str, str]] = []
    for n, tenant in enumerate(sim.tenants):
        variable = SECRET_ENV if n == 0 else f"{SECRET_ENV}_{n + 1}"
        env.append((variable, tenant.client_secret))
        tenants.append(
            {
                "name": tenant.name,
                "tenant_id": tenant.tenant_id,
                "client_id": tenant.client_id,
                "authority_host": sim.url,
                "graph_url": sim.url,
                "ca_bundle": str(sim.ca_bundle_path),
                "credential": {"client_secret_env": variable},
                "certification_authorities": "all",
            }
        )
    text = yaml.safe_dump(
        {"expiry_windows_days": [7, 30, 90], "tenants": tenants},
        sort_keys=False,
        default_flow_style=None,
    )
    return text, env


def describe(sim: Simulator) -> str:
    """What ``simulate`` prints once it is listening."""
    certificates = sim.dataset.certificates
    cas = len(sim.dataset.all_cas())
    lines = [
        f"pki-exporter simulator: {len(sim.tenants)} tenant(s), {cas} CA(s), "
        f"{certificates} leaf certificates (seed {sim.spec.seed}, "
        f"anchor {sim.spec.anchor.isoformat()})",
        f"Graph URL:      {sim.url}  (API root {sim.url}/beta)",
        f"Authority URL:  {sim.url}",
        f"CA bundle:      {sim.ca_bundle_path}",
        f"CDN URL:        {sim.cdn_url}  (CRLs and CA certificates, plain HTTP)",
        f"Control API:    {sim.url}/_simulator/  (faults, log, ground-truth, crls, info)",
    ]
    for tenant in sim.tenants:
        lines += [
            "",
            f"Tenant:         {tenant.name}",
            f"Tenant id:      {tenant.tenant_id}",
            f"Client id:      {tenant.client_id}",
            f"Client secret:  {tenant.client_secret}",
            f"Certificate:    {tenant.cert_file}  key {tenant.key_file}  "
            f"(SHA-1 {tenant.thumbprint})",
            f"PFX:            {tenant.pfx_file}  passphrase {tenant.pfx_passphrase}",
            f"Token endpoint: {sim.url}/{tenant.tenant_id}/oauth2/v2.0/token  "
            f"(scope {sim.url}/.default)",
        ]
        lines += [
            f"  CA {ca.id}  {ca.display_name}  ({ca.certificates} certificates)"
            for ca in tenant.cas
        ]
    config, env = exporter_config(sim)
    lines += ["", "Exporter config (paste into config.yaml):", "", config.rstrip(), ""]
    lines += [f"export {variable}='{secret}'" for variable, secret in env]
    host = sim.cdn_host
    lines += [
        "",
        f'CRL allow-list: crl: {{allowed_hosts: ["{host}"]}}  (the CDN is {sim.cdn_url})',
    ]
    if sim.limits is not None:
        limits = sim.limits
        lines += [
            "",
            f"Graph limits:   {limits.app_requests} requests, {limits.app_writes} writes per "
            f"app; {limits.tenant_requests} / {limits.tenant_writes} per tenant; "
            f"{limits.window:g} s windows",
        ]
    if sim.page_latency is not None:
        low, high = sim.page_latency
        shown = f"{low:g} s" if low == high else f"{low:g}-{high:g} s"
        lines += ["", f"Page latency:   {shown} per leaf page"]
    if sim.faults.active():
        lines += ["", "Faults: " + ", ".join(f"{f.kind}({f.id})" for f in sim.faults.active())]
    lines += ["", "Serving until interrupted (Ctrl-C or SIGTERM)."]
    return "\n".join(lines)


def main(
    argv: list[str] | None = None,
    out: TextIO | None = None,
    prog: str = "python -m pki_simulator",
) -> int:
    stream = out or sys.stdout
    args = build_parser(prog).parse_args(argv)
    faults = list(args.fault)
    if args.preset == "demo":
        from pki_simulator.presets import demo_faults, demo_spec

        spec = demo_spec(args.seed, args.certificates, args.anchor)
        faults = demo_faults(spec) + faults
    else:
        spec = generate_spec(
            args.seed,
            args.tenants,
            args.cas,
            args.certificates,
            args.anchor,
            page_size=args.page_size,
            ca_page_size=args.ca_page_size,
            token_lifetime=args.token_lifetime,
            quirk_share=args.quirk_share,
            broken_renewal_share=args.broken_renewal_share,
            renewed_share=args.renewed_share,
            no_device_share=args.no_device_share,
        )
    if args.status_shares is not None:
        tenants = tuple(
            dataclasses.replace(
                t,
                cas=tuple(dataclasses.replace(c, status_shares=args.status_shares) for c in t.cas),
            )
            for t in spec.tenants
        )
        spec = dataclasses.replace(spec, tenants=tenants)
    sim = Simulator.from_spec(
        spec,
        faults=faults,
        limits=args.graph_limits,
        page_latency=args.page_latency,
        cdn_host=args.cdn_host,
    )
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _stop)
    try:
        sim.start(args.host, args.port, args.cdn_port)
        if args.warm:  # after start: the pages embed the URL the server listens on
            sim.warm()
        if args.warm_navigation is not None:
            select = None if args.warm_navigation.strip() == "*" else args.warm_navigation
            sim.warm_navigation(select)
        print(describe(sim), file=stream, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0
