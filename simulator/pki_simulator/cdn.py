"""The CDN: a plain-HTTP listener of its own serving each CA version's CRL and certificate.

Real tenants publish CRLs at ``http://primary-cdn.pki.azure.net/...`` (plain HTTP, as
relying parties fetch CRLs) on a host apart from Graph. So does the simulator: a loopback
listener on its own port, named in the URLs by ``cdn_host`` (default ``127.0.0.1``), so
that an allow-list can name it and a test can prove the exporter never sends it a Graph
token: the CDN's request log keeps every header of every request.

Routes: ``GET /{region}/crls/{hex}/{caId}_v{n}/current.crl`` (the CRL, with ETag and
Last-Modified, 304 on a matching ``If-None-Match`` or a ``If-Modified-Since`` not older
than Last-Modified) and ``GET /{region}/cacerts/{hex}/{caId}_v{n}/cert.cer`` (the CA
version's DER certificate); anything else is a 404.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from email.utils import formatdate, parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from pki_simulator.faults import CRL_TRANSPORT_FAULTS, Scope
from pki_simulator.messages import Request, Response

if TYPE_CHECKING:
    from pki_simulator.app import Simulator
    from pki_simulator.dataset import CAData, Dataset
    from pki_simulator.server import SimulatorServer

CERT_TYPE = "application/pkix-cert"


@dataclass(frozen=True)
class CDNLogEntry:
    """One request to the CDN. ``headers`` are every request header as received (name,
    value), so that a test can prove no ``Authorization``, token or secret reached the
    CRL host; ``kind`` is ``crl``, ``cacert`` or ``other``; ``time`` comes from the
    simulator's clock."""

    time: float
    method: str
    path: str
    status: int
    kind: str
    tenant_id: str | None
    ca_id: str | None
    version: int | None
    fault: str | None
    headers: tuple[tuple[str, str], ...]
    bytes_sent: int
    duration: float

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["headers"] = [list(pair) for pair in self.headers]
        return data


@dataclass(frozen=True)
class _Target:
    ca: CAData
    version: int
    kind: str


def _text(status: int, message: str, **kwargs: Any) -> Response:
    return Response(
        status=status,
        body=message.encode() + b"\n",
        content_type="text/plain; charset=utf-8",
        compressible=False,
        **kwargs,
    )


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _not_modified(request: Request, etag: str, last_modified: int) -> bool:
    match = request.header("if-none-match")
    if match is not None:
        tags = [t.strip() for t in match.split(",")]
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    since = request.header("if-modified-since")
    if since is None:
        return False
    try:
        return parsedate_to_datetime(since).timestamp() >= last_modified
    except (TypeError, ValueError, IndexError):
        return False


class CDN:
    """The CDN listener and its routes (the app of its own `SimulatorServer`)."""

    def __init__(self, sim: Simulator, log_size: int = 100_000) -> None:
        self._sim = sim
        self._lock = threading.Lock()
        self._server: SimulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._url: str | None = None
        self._routes: tuple[Dataset, dict[str, _Target]] | None = None
        self._log: deque[CDNLogEntry] = deque(maxlen=log_size)
        self._cleared_at = float("-inf")
        self._log_lock = threading.Lock()

    # --- life cycle ----------------------------------------------------------------------

    def start(self, host: str, port: int, name: str) -> str:
        """Listen on ``host:port``; returns the base URL ``http://{name}:{port}``."""
        from pki_simulator.server import SimulatorServer

        with self._lock:
            if self._server is not None:
                raise RuntimeError("CDN already started")
            server = SimulatorServer((host, port), self, None, self._sim.clock)
            shown = f"[{name}]" if ":" in name else name
            self._url = f"http://{shown}:{server.server_port}"
            self._stopping.clear()
            self._server = server
            self._thread = server.start_serving("-cdn")
            return self._url

    @property
    def url(self) -> str | None:
        return self._url

    def stop(self) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            self._stopping.set()
        if server is not None:
            server.stop_serving(thread)

    # --- routes --------------------------------------------------------------------------

    def _route(self, path: str) -> _Target | None:
        dataset = self._sim.dataset
        routes = self._routes
        if routes is None or routes[0] is not dataset:
            table: dict[str, _Target] = {}
            base = len(dataset.cdn_base)
            for ca in dataset.all_cas():
                for number in ca.version_numbers:
                    table[ca.crl_urls[number][base:].lower()] = _Target(ca, number, "crl")
                    table[ca.cacert_urls[number][base:].lower()] = _Target(ca, number, "cacert")
            routes = self._routes = (dataset, table)
        return routes[1].get(path.lower())

    def handle(self, request: Request) -> Response:
        target = self._route(request.path)
        if target is None:
            return _text(404, "Not Found", endpoint="other")
        ca, number = target.ca, target.version
        ids: dict[str, Any] = {"tenant_id": ca.tenant.spec.tenant_id, "ca_id": ca.spec.id}
        if request.method != "GET":
            return _text(405, "Method Not Allowed", endpoint=target.kind, **ids)
        if target.kind == "cacert":
            version = ca.versions()[number]
            return self._entity(
                request,
                version.der,
                CERT_TYPE,
                '"' + version.thumbprint.lower() + '"',
                version.not_before,
                target,
                ids,
            )
        scope = Scope("crl", ca.tenant.spec.tenant_id, ca.spec.id, version=number)
        fault = self._sim.faults.take(scope, CRL_TRANSPORT_FAULTS)
        if fault is not None and fault.kind == "crl_error":
            status = fault.status or 404
            phrase = "Not Found" if status == 404 else "Error"
            return _text(status, phrase, endpoint="crl", fault=fault.kind, **ids)
        if fault is not None and fault.kind == "crl_hang":
            self._stopping.wait(fault.delay)
        document = self._sim.crls.document(ca, number, self._sim.clock(), count=True)
        response = self._entity(
            request,
            document.body,
            document.content_type,
            document.etag,
            document.last_modified,
            target,
            ids,
        )
        shaped = [*document.faults] + ([fault.kind] if fault is not None else [])
        response.fault = ",".join(shaped) or None
        if fault is not None and fault.kind == "crl_reset" and response.status == 200:
            response.reset = True
        return response

    def _entity(
        self,
        request: Request,
        body: bytes,
        content_type: str,
        etag: str,
        last_modified: int,
        target: _Target,
        ids: dict[str, Any],
    ) -> Response:
        headers = [
            ("ETag", etag),
            ("Last-Modified", _http_date(last_modified)),
            ("Cache-Control", "public, max-age=3600"),
        ]
        if _not_modified(request, etag, last_modified):
            return Response(
                status=304,
                body=b"",
                content_type=None,
                headers=headers,
                compressible=False,
                endpoint=target.kind,
                **ids,
            )
        return Response(
            status=200,
            body=body,
            content_type=content_type,
            headers=headers,
            compressible=False,
            endpoint=target.kind,
            **ids,
        )

    # --- the log -------------------------------------------------------------------------

    def log_request(
        self,
        request: Request,
        response: Response,
        *,
        bytes_sent: int,
        content_encoding: str | None,
        started: float,
        started_monotonic: float,
    ) -> None:
        route = self._route(request.path)
        entry = CDNLogEntry(
            time=started,
            method=request.method,
            path=request.path + (f"?{request.query_string}" if request.query_string else ""),
            status=response.status,
            kind=response.endpoint if response.endpoint in ("crl", "cacert") else "other",
            tenant_id=response.tenant_id,
            ca_id=response.ca_id,
            version=route.version if route is not None else None,
            fault=response.fault,
            headers=tuple((str(k), str(v)) for k, v in request.headers.items()),
            bytes_sent=bytes_sent,
            duration=time.monotonic() - started_monotonic,
        )
        with self._log_lock:
            if started_monotonic < self._cleared_at:
                return  # began before the log was cleared: a test's straggler, not its own
            self._log.append(entry)

    def entries(self) -> list[CDNLogEntry]:
        with self._log_lock:
            return list(self._log)

    def clear(self) -> None:
        """Forget every request, those still in flight included (a hang answered later)."""
        with self._log_lock:
            self._log.clear()
            self._cleared_at = time.monotonic()
