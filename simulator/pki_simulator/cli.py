"""``python -m pki_simulator`` (and ``pki-exporter simulate``): a tenant to point at.

It prints everything a user needs to aim their own exporter (or curl) at it, including a
config snippet to paste, and serves until interrupted. The printed secret is the
simulator's own throwaway one.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

import yaml

from pki_simulator.app import Simulator
from pki_simulator.dataset import DAY, generate_spec
from pki_simulator.faults import FAULT_KINDS, Fault, parse_cli_fault
from pki_simulator.graph import LEAF_FIELDS
from pki_simulator.limits import GraphLimits, parse_page_latency
from pki_simulator.truth import devices_at_risk

SECRET_ENV = "PKI_EXPORTER_CLIENT_SECRET"  # noqa: S105 (the variable's name)
DEFAULT_PORT = 9870
"""The simulator's own port, beside the exporter's 9869: the same address on every start."""
DEFAULT_CDN_PORT = 9871
"""The CDN's (CRLs, plain HTTP): fixed too, so that CRL URLs survive a restart."""
ADDRESS_FILE = "address.json"
"""Where --state-dir remembers the host and port the simulator last listened on."""


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
    parser.add_argument(
        "--host",
        default=None,
        help="listen address (default 127.0.0.1, or the one --state-dir remembers)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"listen port (default {DEFAULT_PORT}, or the one --state-dir remembers; 0 = any "
        "free port)",
    )
    parser.add_argument(
        "--cdn-host",
        default="127.0.0.1",
        help="host name the CRL and CA-certificate URLs carry (default 127.0.0.1; a name "
        "must resolve to the listen address, e.g. localhost)",
    )
    parser.add_argument(
        "--cdn-port",
        type=int,
        default=None,
        help=f"CDN (CRL) listen port (default {DEFAULT_CDN_PORT}, or the one --state-dir "
        "remembers; 0 = any free port)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the TLS CA (the CA bundle), the app certificates and the addresses in DIR "
        "across restarts, so that a config pasted from this output keeps working (default: "
        "a temporary directory, deleted on exit)",
    )
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


def _days(seconds: float) -> str:
    days = round(abs(seconds) / DAY)
    return f"{days} day" + ("" if days == 1 else "s")


def deliberate_faults(sim: Simulator, within_days: int = 7) -> list[str]:
    """What the data set gets wrong on purpose, one line each, from its own ground truth
    at its anchor: expired, ending or inactive CAs, unreadable records, certificates and
    devices due within ``within_days``. The demo shows these so that red on its status page
    reads as intended sample data, not as a broken exporter."""
    lines: list[str] = []
    invalid: list[str] = []
    expiring = at_risk = 0
    for ca in sim.dataset.all_cas():
        name, status = ca.spec.display_name, ca.spec.status or "unknown"
        anchor = ca.anchor_ts
        left = ca.valid_until_ts - anchor
        state = "" if status == "active" else f", status {status}"
        if left <= 0:
            lines.append(f"{name}: an expired CA (its certificate ended {_days(left)} ago{state}).")
        elif left < 90 * DAY:
            lines.append(
                f"{name}: a CA near its end of life (its certificate ends in {_days(left)}{state})."
            )
        elif status != "active":
            lines.append(f"{name}: a CA that is not active (status {status}).")
        facts = ca.facts()
        if facts.invalid:
            invalid.append(f"{facts.invalid} in {name}")
        ends = facts.active_ends
        expiring += bisect.bisect_right(ends, anchor + within_days * DAY) - bisect.bisect_right(
            ends, anchor
        )
        at_risk += len(devices_at_risk(ca, anchor, within_days))
    if invalid:
        lines.append(
            "Unreadable records (quirks seen on real tenants: bad dates, wrong types), left "
            "out of every figure, counted as invalid and logged with the field that failed: "
            + ", ".join(invalid)
            + "."
        )
    if expiring:
        lines.append(
            f"{expiring} active certificates end within {within_days} days; {at_risk} devices "
            "among them did not renew (at risk)."
        )
    lines += _crl_faults(sim)
    return lines


def _crl_faults(sim: Simulator) -> list[str]:
    """The CRLs that fail a check on purpose (the demo preset: revocations left out)."""
    lines: list[str] = []
    for crl in sim.expected_crls(sim.spec.anchor):
        if not crl.named:
            continue
        if crl.reason is not None:
            lines.append(f"{crl.ca}: its CRL {crl.url} cannot be used (reason {crl.reason}).")
            continue
        missing = len(sim.expected_unpublished(sim.spec.anchor, crl.ca_id))
        if missing and crl.current:
            lines.append(
                f"{crl.ca}: {missing} revoked certificates are missing from its CRL (unpublished "
                "revocations: revoked in Intune, still accepted by RADIUS and VPN)."
            )
    return lines


def _remembered(state_dir: Path | None) -> tuple[str | None, int | None, int | None]:
    """The host, port and CDN port a state directory remembers (None where it has none)."""
    if state_dir is None:
        return None, None, None
    try:
        address = json.loads((state_dir / ADDRESS_FILE).read_text())
        host, port = address["host"], address["port"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None, None
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
        return None, None, None
    cdn_port = address.get("cdn_port")
    if not isinstance(cdn_port, int) or not 0 < cdn_port < 65536:
        cdn_port = None
    return host, port, cdn_port


def _remember(state_dir: Path, host: str, port: int, cdn_port: int | None) -> None:
    address = {"host": host, "port": port, "cdn_port": cdn_port}
    (state_dir / ADDRESS_FILE).write_text(json.dumps(address) + "\n")


def describe(sim: Simulator, state_dir: Path | None = None) -> str:
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
        f"Control API:    {sim.url}/_simulator/  (faults, log, ground-truth, crls, cdn-log, "
        "info, limits, page-latency)",
        f"State dir:      {sim.directory}  (CA bundle, keys and addresses kept across restarts)"
        if state_dir is not None
        else f"Files:          {sim.directory}  (temporary, deleted on exit: --state-dir DIR "
        "keeps them and the addresses across restarts)",
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
    faults = deliberate_faults(sim)
    if faults:
        lines += ["", "Deliberate faults of the data set:"] + [f"  - {line}" for line in faults]
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
    state_dir = args.state_dir.resolve() if args.state_dir is not None else None
    try:
        sim = Simulator.from_spec(
            spec,
            faults=faults,
            limits=args.graph_limits,
            page_latency=args.page_latency,
            cdn_host=args.cdn_host,
            state_dir=state_dir,
        )
    except OSError as exc:
        print(
            f"{prog}: --state-dir: cannot use {state_dir}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    kept_host, kept_port, kept_cdn_port = _remembered(state_dir)
    host = args.host if args.host is not None else kept_host or "127.0.0.1"
    port = args.port if args.port is not None else kept_port or DEFAULT_PORT
    if args.cdn_port is not None:
        cdn_port = args.cdn_port
    elif args.port == 0:  # any free port for the server: any for the CDN too (tests)
        cdn_port = 0
    else:
        cdn_port = kept_cdn_port or DEFAULT_CDN_PORT
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _stop)
    try:
        try:
            sim.start(host, port, cdn_port)
        except OSError as exc:
            print(
                f"{prog}: cannot listen on {host}:{port} (Graph) and {host}:{cdn_port} (CDN): "
                f"{exc.strerror or exc} (another simulator? --port 0 --cdn-port 0 take any "
                "free ports)",
                file=sys.stderr,
            )
            return 1
        if state_dir is not None:
            _remember(state_dir, host, sim.port, urlsplit(sim.cdn_url or "").port)
        if args.warm:  # after start: the pages embed the URL the server listens on
            sim.warm()
        if args.warm_navigation is not None:
            select = None if args.warm_navigation.strip() == "*" else args.warm_navigation
            sim.warm_navigation(select)
        print(describe(sim, state_dir), file=stream, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0
