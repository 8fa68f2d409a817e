"""Command line: flags -> checked options -> `app` (serve, ``--once``), ``--config.check``,
``--demo``, ``simulate``.

Flags are named like blackbox_exporter's. This module parses and checks them, and starts
the simulated tenant for ``--demo`` (the only module that may import the simulator);
building and running the exporter is `app`'s. A user's mistake (bad flag, bad config,
port in use, unreadable web config) ends in one line on stderr and exit code 1 (2 for
flags argparse refuses), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from pki_exporter import __version__
from pki_exporter.app import (
    Demo,
    ServeOptions,
    UserError,
    load_config_file,
    once,
    read_config,
    serve,
    unreadable_hint,
)
from pki_exporter.config.load import parse_config
from pki_exporter.config.model import Config
from pki_exporter.runtime import clock, logs
from pki_exporter.runtime.sharding import Shard, ShardError, parse_shard
from pki_exporter.web.drilldown import DEFAULT_MODE as DEFAULT_DRILLDOWN
from pki_exporter.web.drilldown import MODES as DRILLDOWN_MODES
from pki_exporter.web.handler import RESERVED_PATHS
from pki_exporter.web.toolkit import WebConfigError, load_web_config

DEFAULT_PORT = 9869
DEFAULT_CONFIG = "config.yaml"

__all__ = ["DEFAULT_PORT", "UserError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with its mistakes told in one line (``pki-exporter: error: ...``, exit 2,
    as Prometheus' own exporters do) and a file name given without its flag pointed at
    ``--config.file``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: None = None
    ) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            message = f"unrecognized arguments: {' '.join(extra)}"
            loose = [a for a in extra if not a.startswith("-")]
            if len(loose) == 1 and parsed.config_file == DEFAULT_CONFIG:
                message += f" (did you mean --config.file {loose[0]}?)"
            self.error(message)
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pki-exporter",
        description="Prometheus exporter for Microsoft Intune Cloud PKI. "
        "Run 'pki-exporter simulate --help' for the simulated Graph tenant.",
    )
    add = parser.add_argument
    add(
        "--config.file",
        dest="config_file",
        default=DEFAULT_CONFIG,
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


def _shard(text: str | None) -> Shard | None:
    if text is None:
        return None
    try:
        return parse_shard(text)
    except ShardError as exc:
        raise UserError(f"--tenant-shard: {exc}") from None


def _check(
    path: str, shard: Shard | None = None, web_config: str | None = None
) -> tuple[int, Config | None]:
    """Every problem of the config file (and of the web config file, when given), on
    stdout, one line each; then one verdict line per file. Returns the exit code (0 when
    all is well) and the config, when it has no problem."""
    config, problems = read_config(path)
    if config is not None and shard is not None:
        kept = [t.name for t in config.tenants if shard.owns(t.name)]
        names = f": {', '.join(kept)}" if kept else ""
        print(f"tenant shard {shard}: {len(kept)} of {len(config.tenants)} tenants{names}")
    for warning in config.warnings if config is not None else ():
        named = warning if warning.startswith(f"{path}: ") else f"{path}: {warning}"
        print(f"warning: {named}")
    for problem in problems:
        print(f"error: {path}: {unreadable_hint(path, problem)}")
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
    if problems or config is None:
        return 1, None
    return (1 if web_failed else 0), config


def _check_online(config: Config, shard: Shard | None) -> int:
    from pki_exporter.graph.online import check_online

    if shard is not None:
        config = shard.select(config)
    failed = check_online(config, sys.stdout)
    tenants = len(config.tenants)
    if failed:
        print(f"online: FAILED ({failed} of {tenants} tenant{'s' if tenants != 1 else ''})")
        return 1
    print(f"online: OK ({tenants} tenant{'s' if tenants != 1 else ''})")
    return 0


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


def _demo() -> tuple[Config, Demo]:
    """The simulated tenant, started, and a config for it (built in: no file to reload).
    Whoever gets it closes it: `app.once` and `app.serve` do, however they end."""
    Simulator = _simulator().Simulator

    _demo_tempdir()
    # four CAs, a renewed one with two CRLs, and one CRL missing revocations (a fault to see)
    # generated around the exporter's "now" (PKI_EXPORTER_FAKE_NOW included)
    anchor = datetime.fromtimestamp(clock.now(), tz=UTC)
    sim = Simulator.demo(certificates=3000, anchor=anchor)
    try:
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
    except BaseException:
        sim.close()
        raise


def _telemetry_path(path: str) -> str:
    if not path.startswith("/") or path in RESERVED_PATHS:
        raise UserError(f"--web.telemetry-path: {path!r} must be a free path starting with /")
    return path


def _demo_faults(sim: Any) -> list[str]:
    """The demo tenant's deliberate faults, for the status page and the start-up lines."""
    from pki_simulator.cli import deliberate_faults

    faults: list[str] = deliberate_faults(sim)
    return faults


def _serve_options(args: argparse.Namespace, shard: Shard | None) -> ServeOptions:
    """The serving flags, checked before anything slow (the demo, the config) starts."""
    listen = listen_address(args.listen_address, demo=args.demo)
    host, port = parse_listen_address(listen)
    return ServeOptions(
        host=host,
        port=port,
        listen=listen,
        web_config_file=args.web_config_file,
        telemetry_path=_telemetry_path(args.telemetry_path),
        external_url=parse_external_url(args.external_url),
        drilldown=args.drilldown,
        enable_lifecycle=args.enable_lifecycle,
        storage_path=args.storage_path,
        shard=shard,
    )


def _simulate(argv: list[str]) -> int:
    try:
        _simulator()
    except UserError as exc:
        print(f"pki-exporter: {exc}", file=sys.stderr)
        return 1
    from pki_simulator.cli import main as simulate

    code: int = simulate(argv, prog="pki-exporter simulate")
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate":
        return _simulate(argv[1:])
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"pki-exporter, version {__version__} (python {platform.python_version()})")
        return 0
    logs.setup("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    try:
        shard = _shard(args.tenant_shard)
        if args.config_check or args.config_check_online:
            if args.listen_address is not None:
                parse_listen_address(args.listen_address)
            code, config = _check(args.config_file, shard, args.web_config_file)
            if code == 0 and config is not None and args.config_check_online:
                code = _check_online(config, shard)
            return code
        if args.output and not args.once:
            raise UserError("--output: only with --once")
        options = _serve_options(args, shard)
        _check_output(args.output)
        if args.demo:
            config, demo = _demo()
            if args.once:
                return once(config, args.output, shard, demo)
            faults = _demo_faults(demo)
            return serve(config, options, config_file=None, demo=demo, demo_faults=faults)
        config = load_config_file(args.config_file)
        if args.once:
            return once(config, args.output, shard)
        return serve(config, options, config_file=args.config_file)
    except UserError as exc:
        print(f"pki-exporter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
