"""Command line: flags -> a running exporter, ``--once``, ``--config.check``, ``--demo``.

Flags are named like blackbox_exporter's. A user's mistake (bad config, port in use,
unreadable web config) ends in one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import generate_latest

from pki_exporter import __version__, logs
from pki_exporter.app import Exporter, WebInfoCollector
from pki_exporter.config import Config, ConfigError, check_config, load_config, parse_config
from pki_exporter.drilldown import DEFAULT_MODE as DEFAULT_DRILLDOWN
from pki_exporter.drilldown import MODES as DRILLDOWN_MODES
from pki_exporter.drilldown import certificates_page
from pki_exporter.pages import status_page
from pki_exporter.server import Endpoints, ExporterServer, serve
from pki_exporter.sharding import Shard, ShardError, parse_shard
from pki_exporter.webconfig import WebConfigError, WebConfigProvider

DEFAULT_PORT = 9869
log = logs.get("cli")


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pki-exporter",
        description="Prometheus exporter for Microsoft Intune Cloud PKI. "
        "Run 'pki-exporter simulate --help' for the simulated Graph tenant.",
    )
    add = parser.add_argument
    add(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        metavar="PATH",
        help="YAML config file (default: %(default)s)",
    )
    add(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config and the credential files it names, print a verdict, exit 0/1",
    )
    add(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help="address to serve on (default: %(default)s)",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="PATH",
        help="TLS and basic auth, in the exporter-toolkit web-config format",
    )
    add(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path of the metrics (default: %(default)s)",
    )
    add(
        "--web.external-url",
        dest="external_url",
        default=None,
        metavar="URL",
        help="the URL under which the exporter is reachable (e.g. behind a reverse proxy), for "
        "links from alerts, dashboards and its own pages (default: http(s)://<hostname>:<port>/)",
    )
    add(
        "--web.drilldown",
        dest="drilldown",
        default=DEFAULT_DRILLDOWN,
        choices=DRILLDOWN_MODES,
        help="what /certificates shows: off (404), devices (no user or device names) or full "
        "(user principal names too: personal data) (default: %(default)s)",
    )
    add(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="enable POST /-/reload",
    )
    add(
        "--once",
        action="store_true",
        help="refresh every CA once, print the metrics, exit non-zero if any CA failed",
    )
    add(
        "--output",
        default=None,
        metavar="FILE",
        help="with --once: write the metrics to FILE atomically (textfile collector)",
    )
    add(
        "--demo",
        action="store_true",
        help="run against the embedded simulated tenant; no config needed",
    )
    add(
        "--tenant-shard",
        dest="tenant_shard",
        default=None,
        metavar="I/N",
        help="export only shard I of N of the configured tenants (by a hash of their name); "
        "auto/N takes I from the StatefulSet pod ordinal in $POD_NAME or the host name",
    )
    add(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="(default: %(default)s)",
    )
    add(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="(default: %(default)s)",
    )
    add("--version", action="store_true", help="print the version and exit")
    return parser


def parse_listen_address(text: str) -> tuple[str, int]:
    """``:9869``, ``127.0.0.1:9869``, ``[::1]:9869`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UserError(f"--web.listen-address: expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    return host, int(port_text)


def parse_external_url(text: str | None) -> str | None:
    """``--web.external-url`` checked and ending in "/" (its path prefixes the pages' links)."""
    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--web.external-url: expected http(s)://host[:port][/path], got {text!r}")
    if parts.query or parts.fragment:
        raise UserError(f"--web.external-url: no query or fragment, got {text!r}")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def default_external_url(scheme: str, port: int) -> str:
    """As Prometheus derives its own: this host's name and the port served on."""
    return f"{scheme}://{socket.gethostname()}:{port}/"


def _protects_personal_data(web: WebConfigProvider) -> bool:
    """TLS, and a password or a verified client certificate (the warning at start)."""
    config = web.config
    if config.tls is None:
        return False
    return bool(config.basic_auth_users) or config.tls.client_auth_type in (
        "RequireAndVerifyClientCert",
        "RequireAnyClientCert",
    )


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UserError(f"{path}: {exc}") from None


def _shard(text: str | None) -> Shard | None:
    if text is None:
        return None
    try:
        return parse_shard(text)
    except ShardError as exc:
        raise UserError(f"--tenant-shard: {exc}") from None


def _check(path: str, shard: Shard | None = None) -> int:
    config = _load(path)
    if shard is not None:
        kept = [t.name for t in config.tenants if shard.owns(t.name)]
        names = f": {', '.join(kept)}" if kept else ""
        print(f"tenant shard {shard}: {len(kept)} of {len(config.tenants)} tenants{names}")
    for warning in config.warnings:
        print(f"warning: {warning}")
    problems = check_config(config)
    for problem in problems:
        print(f"error: {problem}")
    if problems:
        print(f"{path}: FAILED ({len(problems)} problem{'s' if len(problems) > 1 else ''})")
        return 1
    cas = sum(1 for t in config.tenants if t.certification_authorities == "all")
    print(
        f"{path}: OK ({len(config.tenants)} tenant{'s' if len(config.tenants) != 1 else ''}, "
        f"{cas} with CA discovery, refresh every {config.refresh.interval:g}s)"
    )
    return 0


def _write_atomically(path: str, data: bytes) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _once(config: Config, output: str | None, shard: Shard | None = None) -> int:
    exporter = Exporter(config, process_metrics=False, select=shard.select if shard else None)
    exporter.refresher.refresh_all()
    exporter.refresher.stop()
    data = generate_latest(exporter.registry)
    if output:
        try:
            _write_atomically(output, data)
        except OSError as exc:
            raise UserError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    failed = [
        f"{tenant.name}/{ca.label}"
        for tenant in exporter.store.tenants.values()
        for ca in tenant.cas.values()
        if not ca.last_success
    ]
    down = [tenant.name for tenant in exporter.store.tenants.values() if not tenant.up]
    if failed or down:
        logs.event(
            log, logging.ERROR, "refresh failed", cas=",".join(failed), tenants_down=",".join(down)
        )
        return 1
    return 0


def _demo_config() -> tuple[Config, Any]:
    from pki_exporter.simulator import Simulator

    sim = Simulator.generate(seed=42, tenants=1, cas=3, certificates=3000)
    sim.start()
    tenant = sim.tenants[0]
    os.environ["PKI_EXPORTER_DEMO_SECRET"] = tenant.client_secret
    text = f"""
refresh: {{interval: 1m, timeout: 10s, concurrency: 4}}
expiry_windows_days: [7, 30, 90]
tenants:
  - name: demo
    tenant_id: {tenant.tenant_id}
    client_id: {tenant.client_id}
    authority_host: {sim.url}
    graph_url: {sim.url}
    ca_bundle: {sim.ca_bundle_path}
    credential: {{client_secret_env: PKI_EXPORTER_DEMO_SECRET}}
    certification_authorities: all
"""
    return parse_config(text, "<demo>"), sim


def _serve(
    config: Config, args: argparse.Namespace, demo: Any = None, shard: Shard | None = None
) -> int:
    host, port = parse_listen_address(args.listen_address)
    try:
        web = WebConfigProvider(args.web_config_file)
    except WebConfigError as exc:
        raise UserError(f"--web.config.file: {exc}") from None
    if not args.telemetry_path.startswith("/") or args.telemetry_path in (
        "/",
        "/healthz",
        "/ready",
        "/-/reload",
        "/certificates",
    ):
        raise UserError(
            f"--web.telemetry-path: {args.telemetry_path!r} must be a free path starting with /"
        )
    given_url = parse_external_url(args.external_url)
    prefix = urlsplit(given_url).path if given_url else "/"
    exporter = Exporter(config, select=shard.select if shard else None)
    requests: queue.Queue[str] = queue.Queue()

    def certificates(query: str, accept: str) -> tuple[int, bytes, str]:
        answer = certificates_page(
            exporter.store,
            query,
            exporter.config.expiry_windows_days,
            prefix=prefix,
            telemetry_path=args.telemetry_path,
            mode=args.drilldown,
            accept=accept,
        )
        return answer.status, answer.body, answer.content_type

    endpoints = Endpoints(
        registry=exporter.registry,
        ready=exporter.ready,
        status_page=lambda: status_page(
            exporter.store,
            args.telemetry_path,
            exporter.config.refresh.interval,
            prefix=prefix,
            windows=exporter.config.expiry_windows_days,
            drilldown=args.drilldown != "off",
        ),
        telemetry_path=args.telemetry_path,
        reload=exporter.reload if args.enable_lifecycle else None,
        certificates=certificates,
    )
    try:
        server = ExporterServer((host, port), endpoints, web)
    except OSError as exc:
        raise UserError(
            f"--web.listen-address: cannot listen on {args.listen_address}: {exc.strerror or exc}"
        ) from None
    for warning in exporter.config.warnings:
        logs.event(log, logging.WARNING, warning)
    if args.drilldown == "full" and not _protects_personal_data(web):
        logs.event(
            log,
            logging.WARNING,
            "/certificates serves personal data (user principal names, device names) without "
            "TLS and basic auth or client certificates; set them in --web.config.file, or "
            "--web.drilldown=devices",
        )
    exporter.start()
    serve(server)
    scheme = "https" if web.tls_enabled else "http"
    shown_host = host or "0.0.0.0"  # noqa: S104 - what the user asked for
    external_url = given_url or default_external_url(scheme, server.server_address[1])
    exporter.registry.register(WebInfoCollector(external_url))
    logs.event(
        log,
        logging.INFO,
        "pki-exporter started",
        version=__version__,
        listen=f"{scheme}://{shown_host}:{server.server_address[1]}",
        external_url=external_url,
        tenants=len(exporter.config.tenants),
        config=config.source,
        **(
            {"tenant_shard": str(shard), "tenants_configured": len(config.tenants)} if shard else {}
        ),
    )
    if demo is not None:
        where = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        print(
            f"pki-exporter demo: simulated tenant at {demo.url}\n"
            f"  metrics:     {where}{args.telemetry_path}\n"
            f"  status page: {where}/\n"
            "  stop with Ctrl-C",
            flush=True,
        )

    def on_signal(signum: int, _frame: Any) -> None:
        requests.put("reload" if signum == signal.SIGHUP else "stop")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    while True:
        if requests.get() == "stop":
            break
        exporter.reload()
    logs.event(log, logging.INFO, "stopping")
    server.shutdown()
    server.server_close()
    exporter.stop()
    if demo is not None:
        demo.close()
    _abandon_requests_in_flight()
    return 0


def _abandon_requests_in_flight() -> None:
    """Leave without waiting for Graph. A request in flight may have up to refresh.timeout
    (60 s by default) to go, and the interpreter joins the pool thread carrying it before
    exiting (daemon or not); a stop must take seconds, so such a request is abandoned."""
    workers = [t for t in threading.enumerate() if t.name.startswith(("pki-ca", "pki-scrape"))]
    end = time.monotonic() + 1.0  # idle workers leave at once; busy ones are waiting on Graph
    for worker in workers:
        worker.join(max(0.0, end - time.monotonic()))
    busy = [worker for worker in workers if worker.is_alive()]
    if busy:
        logs.event(log, logging.INFO, "abandoning Graph requests in flight", threads=len(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate":
        from pki_exporter.simulator.cli import main as simulate

        code: int = simulate(argv[1:])
        return code
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"pki-exporter, version {__version__} (python {platform.python_version()})")
        return 0
    logs.setup("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    try:
        shard = _shard(args.tenant_shard)
        if args.config_check:
            return _check(args.config_file, shard)
        if args.output and not args.once:
            raise UserError("--output: only with --once")
        if args.demo:
            config, demo = _demo_config()
            if args.once:
                try:
                    return _once(config, args.output, shard)
                finally:
                    demo.stop()
            return _serve(config, args, demo, shard)
        config = _load(args.config_file)
        if args.once:
            return _once(config, args.output, shard)
        return _serve(config, args, shard=shard)
    except UserError as exc:
        print(f"pki-exporter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
