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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import generate_latest

from pki_exporter import __version__
from pki_exporter.app import Exporter, WebInfoCollector
from pki_exporter.config.check import check_config, check_config_file
from pki_exporter.config.load import ConfigError, load_config, parse_config
from pki_exporter.config.model import Config
from pki_exporter.runtime import clock, logs
from pki_exporter.runtime.sharding import Shard, ShardError, parse_shard
from pki_exporter.web.drilldown import DEFAULT_MODE as DEFAULT_DRILLDOWN
from pki_exporter.web.drilldown import MODES as DRILLDOWN_MODES
from pki_exporter.web.drilldown import certificates_page
from pki_exporter.web.pages import status_page
from pki_exporter.web.server import Endpoints, ExporterServer, serve
from pki_exporter.web.toolkit import WebConfigError, WebConfigProvider, load_web_config

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
        help="check the config file and the web config file (when given) offline: every "
        "problem of their format, and that each secret variable and credential file is "
        "set and readable; print them and a verdict, exit 0/1. Contacts nobody",
    )
    add(
        "--config.check.online",
        dest="config_check_online",
        action="store_true",
        help="--config.check, then for each tenant fetch a token and list the CAs: print "
        "what each tenant can see, or the permission it lacks",
    )
    add(
        "--web.listen-address",
        dest="listen_address",
        default=None,
        metavar="HOST:PORT",
        help=f"address to serve on (default: :{DEFAULT_PORT}, all interfaces; with --demo "
        f"127.0.0.1:{DEFAULT_PORT}); IPv6 as [::1]:{DEFAULT_PORT}",
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
        "--storage.path",
        dest="storage_path",
        default=None,
        metavar="DIR",
        help="keep each CA's last snapshot in DIR (created 0700) and serve it at once after "
        "a restart, until the first refresh replaces it (default: off; --once ignores it)",
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
        help="only log messages of this severity or above (default: %(default)s)",
    )
    add(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="output format of the log on stderr (default: %(default)s)",
    )
    add("--version", action="store_true", help="print the version and exit")
    return parser


def parse_listen_address(text: str) -> tuple[str, int]:
    """``:9869``, ``127.0.0.1:9869``, ``[::1]:9869`` -> (host, port)."""
    if "://" in text:
        raise UserError(
            f"--web.listen-address: expected HOST:PORT without a scheme, got {text!r} "
            f"(e.g. 127.0.0.1:{DEFAULT_PORT}; TLS comes from --web.config.file)"
        )
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise UserError(f"--web.listen-address: expected HOST:PORT, got {text!r}")
    if not 0 <= int(port_text) <= 65535:
        raise UserError(f"--web.listen-address: port {port_text} is out of range (0-65535)")
    if host.startswith("[") != host.endswith("]"):
        raise UserError(f"--web.listen-address: unbalanced brackets in {text!r}")
    host = host.strip("[]")
    return host, int(port_text)


def listen_address(given: str | None, *, demo: bool) -> str:
    """--web.listen-address as given, else all interfaces (the demo: loopback only)."""
    if given is not None:
        return given
    return f"127.0.0.1:{DEFAULT_PORT}" if demo else f":{DEFAULT_PORT}"


def _url_host(host: str) -> str:
    """A host as it stands in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


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


DEFAULT_CONFIG = "config.yaml"


def _unreadable_hint(path: str, message: str) -> str:
    """With no config at all, say how to get one, or to try the demo."""
    if message.startswith("cannot read: No such file") and not os.path.exists(path):
        return f"{message} (write one from config.example.yaml, or try --demo)"
    return message


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
    """The config, its credentials checked as --config.check does: a missing secret
    variable or file stops the start, as a mistake in the file does."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        message = exc.message if exc.path == path else str(exc)
        raise UserError(f"{path}: {_unreadable_hint(path, message)}") from None
    problems = check_config(config)
    if problems:
        more = len(problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''}: see --config.check)"
        raise UserError(f"{path}: {problems[0]}{tail if more else ''}")
    return config


def _shard(text: str | None) -> Shard | None:
    if text is None:
        return None
    try:
        return parse_shard(text)
    except ShardError as exc:
        raise UserError(f"--tenant-shard: {exc}") from None


def _check(path: str, shard: Shard | None = None, web_config: str | None = None) -> int:
    """Every problem of the config file (and of the web config file, when given), on
    stdout, one line each; then one verdict line per file. Exit 0 when all is well."""
    config, problems = check_config_file(path)
    if config is not None and shard is not None:
        kept = [t.name for t in config.tenants if shard.owns(t.name)]
        names = f": {', '.join(kept)}" if kept else ""
        print(f"tenant shard {shard}: {len(kept)} of {len(config.tenants)} tenants{names}")
    for warning in config.warnings if config is not None else ():
        named = warning if warning.startswith(f"{path}: ") else f"{path}: {warning}"
        print(f"warning: {named}")
    for problem in problems:
        print(f"error: {path}: {_unreadable_hint(path, problem)}")
    web_verdict = ""
    web_failed = False
    if web_config is not None:
        try:
            web = load_web_config(web_config)
        except WebConfigError as exc:
            print(f"error: {exc}")
            web_verdict = f"{web_config}: FAILED (1 problem)"
            web_failed = True
        else:
            for note in web.notes:
                print(f"warning: {web_config}: {note}")
            features = ["TLS" if web.tls is not None else "plain HTTP"]
            if web.basic_auth_users:
                users = len(web.basic_auth_users)
                features.append(f"basic auth for {users} user{'s' if users != 1 else ''}")
            if web.rate_limit is not None:
                features.append("rate limit")
            web_verdict = f"{web_config}: OK ({', '.join(features)})"
    if problems or config is None:
        count = max(1, len(problems))
        print(f"{path}: FAILED ({count} problem{'s' if count > 1 else ''})")
    else:
        cas = sum(1 for t in config.tenants if t.certification_authorities == "all")
        print(
            f"{path}: OK ({len(config.tenants)} tenant{'s' if len(config.tenants) != 1 else ''}, "
            f"{cas} with CA discovery, refresh every {config.refresh.interval:g}s)"
        )
    if web_verdict:
        print(web_verdict)
    return 1 if problems or config is None or web_failed else 0


def _check_online(path: str, shard: Shard | None) -> int:
    from pki_exporter.graph.online import check_online

    config = load_config(path)  # valid: the offline check has passed
    if shard is not None:
        config = shard.select(config)
    failed = check_online(config, sys.stdout)
    tenants = len(config.tenants)
    if failed:
        print(f"online: FAILED ({failed} of {tenants} tenant{'s' if tenants != 1 else ''})")
        return 1
    print(f"online: OK ({tenants} tenant{'s' if tenants != 1 else ''})")
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


def _check_output(output: str | None) -> None:
    """Fail at once, not after a whole refresh, when --output cannot be written."""
    if output is None:
        return
    target = Path(output)
    directory = target.parent
    if target.is_dir():
        raise UserError(f"--output: {output} is a directory")
    if not directory.is_dir():
        raise UserError(f"--output: cannot write {output}: no directory {str(directory)!r}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"--output: cannot write {output}: directory not writable")


def _once(config: Config, output: str | None, shard: Shard | None = None) -> int:
    exporter = Exporter(config, process_metrics=False, select=shard.select if shard else None)
    exporter.refresher.refresh_all()
    exporter.refresher.crls.read_all()  # the CRLs the leaves just named (crl.enabled)
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
        fields = {"cas": ",".join(failed), "tenants_down": ",".join(down)}
        logs.event(log, logging.ERROR, "refresh failed", **{k: v for k, v in fields.items() if v})
        return 1
    return 0


DEMO_TEMP_FALLBACKS = ("/dev/shm", "/run/user", "/var/tmp")  # noqa: S108


def _demo_tempdir(fallbacks: tuple[str, ...] = DEMO_TEMP_FALLBACKS) -> None:
    """The simulator writes its TLS CA and test credentials to a temporary directory; under
    a read-only root without a writable /tmp, use another writable place (memory-backed
    /dev/shm first) or say in one line what is missing."""
    try:
        tempfile.gettempdir()
        return
    except FileNotFoundError:
        pass
    for candidate in fallbacks:
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            tempfile.tempdir = candidate
            return
    raise UserError(
        "--demo: no writable temporary directory for the simulated tenant's files "
        f"(tried $TMPDIR, /tmp, {', '.join(fallbacks)}); set TMPDIR to a writable directory"
    )


SIMULATOR_MISSING = (
    "the simulated tenant is not installed (it is a distribution of its own, kept out of the "
    "exporter's wheel and image): run 'make demo' in a clone, or 'pip install ./simulator'"
)


def _simulator() -> Any:
    """The simulator package, imported only for --demo and ``simulate``."""
    try:
        import pki_simulator
    except ModuleNotFoundError as exc:
        if exc.name != "pki_simulator":
            raise
        raise UserError(SIMULATOR_MISSING) from None
    return pki_simulator


def _demo_config() -> tuple[Config, Any]:
    Simulator = _simulator().Simulator

    _demo_tempdir()
    # four CAs, a renewed one with two CRLs, and one CRL missing revocations (a fault to see)
    # generated around the exporter's "now" (PKI_EXPORTER_FAKE_NOW included)
    anchor = datetime.fromtimestamp(clock.now(), tz=UTC)
    sim = Simulator.demo(certificates=3000, anchor=anchor)
    sim.start()
    tenant = sim.tenants[0]
    os.environ["PKI_EXPORTER_DEMO_SECRET"] = tenant.client_secret
    text = f"""
refresh: {{interval: 1m, timeout: 10s, concurrency: 4}}
expiry_windows_days: [7, 30, 90]
crl: {{interval: 1m, allowed_hosts: ["127.0.0.1"]}}
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


SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005),
in the serving process (docs/performance.md, "Scrapes before refresh work")."""


def _serve(
    config: Config, args: argparse.Namespace, demo: Any = None, shard: Shard | None = None
) -> int:
    listen = listen_address(args.listen_address, demo=demo is not None)
    host, port = parse_listen_address(listen)
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
    exporter = Exporter(
        config, select=shard.select if shard else None, storage_path=args.storage_path
    )
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
        turns=exporter.turns,
        before_scrape=exporter.before_scrape,
    )
    try:
        server = ExporterServer((host, port), endpoints, web)
    except socket.gaierror:
        raise UserError(
            f"--web.listen-address: cannot listen on {listen}: unknown host {host!r} "
            "(give an IP address or a resolvable name)"
        ) from None
    except OSError as exc:
        raise UserError(
            f"--web.listen-address: cannot listen on {listen}: {exc.strerror or exc}"
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
    # The whole process, once: a scrape takes the GIL back a dozen times (socket, /proc,
    # gzip), and while a refresh decodes pages each of those waits up to this long.
    sys.setswitchinterval(SWITCH_INTERVAL)
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
        listen=f"{scheme}://{_url_host(shown_host)}:{server.server_address[1]}",
        external_url=external_url,
        tenants=len(exporter.config.tenants),
        config=config.source,
        **(
            {"tenant_shard": str(shard), "tenants_configured": len(config.tenants)} if shard else {}
        ),
    )
    if demo is not None:
        local = "127.0.0.1" if host in ("", "0.0.0.0", "127.0.0.1") else host  # noqa: S104
        where = f"{scheme}://{_url_host(local)}:{server.server_address[1]}"
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
    _exit_if_threads_remain()
    return 0


def _exit_if_threads_remain() -> None:
    """The last resort: leave at once if a thread that is not ours to abandon still runs.

    The refresher stops its own threads (and leaves only daemon threads blocked on Graph
    behind); the interpreter would wait for any other non-daemon thread for ever. None is
    expected: this says so in the log and exits rather than hang a stopping process.
    """
    main = threading.main_thread()
    left = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    for thread in left:
        thread.join(1.0)
    left = [t for t in left if t.is_alive()]
    if left:
        logs.event(
            log,
            logging.ERROR,
            "threads that cannot be stopped; exiting without waiting for them",
            threads=",".join(sorted(t.name for t in left)),
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate":
        try:
            _simulator()
        except UserError as exc:
            print(f"pki-exporter: {exc}", file=sys.stderr)
            return 1
        from pki_simulator.cli import main as simulate

        code: int = simulate(argv[1:], prog="pki-exporter simulate")
        return code
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"pki-exporter, version {__version__} (python {platform.python_version()})")
        return 0
    logs.setup("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    try:
        shard = _shard(args.tenant_shard)
        if args.listen_address is not None:
            parse_listen_address(args.listen_address)  # before anything slow
        if args.config_check or args.config_check_online:
            code = _check(args.config_file, shard, args.web_config_file)
            if code == 0 and args.config_check_online:
                code = _check_online(args.config_file, shard)
            return code
        if args.output and not args.once:
            raise UserError("--output: only with --once")
        _check_output(args.output)
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
