"""The simulator: one object that owns the data set, the fake services, faults and log.

It is what tests and the ``simulate`` command hold. Routing lives here because it is
where the three services meet: the control API (no bearer), the authority (per tenant in
the path) and Graph (tenant from the bearer), with faults applied the same way to the
token endpoint and to Graph.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pki_simulator.authority import (
    AuthError,
    Authority,
    SimTenant,
    TokenInfo,
    aad_error,
    make_tenant,
)
from pki_simulator.cdn import CDN, CDNLogEntry
from pki_simulator.control import handle_control
from pki_simulator.crl import CRLPublisher
from pki_simulator.crltruth import (
    DEFAULT_GRACE,
    DEFAULT_MAX_SIZE,
    CRLTruth,
    crl_samples,
    expected_crls,
    unpublished_rows,
)
from pki_simulator.dataset import CAData, Dataset, generate_spec
from pki_simulator.faults import Fault, FaultSet, Scope, format_retry_after
from pki_simulator.graph import LEAF_FIELDS, Graph, intune_message, is_graph_path, resolve
from pki_simulator.imds import InstanceMetadata
from pki_simulator.limits import (
    WRITE_METHODS,
    GraphLimits,
    Limiter,
    PageLatency,
    Throttled,
    check_page_latency,
    max_in_window,
)
from pki_simulator.messages import Request, Response, graph_error, json_response
from pki_simulator.render import GZIP_LEVEL, LeafPages
from pki_simulator.requestlog import RequestLog, RequestLogEntry
from pki_simulator.server import SimulatorServer
from pki_simulator.spec import DatasetSpec
from pki_simulator.tls import EphemeralCA, write_private
from pki_simulator.truth import SampleKey, devices_at_risk, expected_samples

_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    'authorize", client_id="00000003-0000-0000-c000-000000000000"'
)
_GRAPH_FAULTS = ("throttle", "unavailable", "gateway_timeout", "page_error")
_TOKEN_FAULTS = ("throttle", "unavailable", "gateway_timeout", "token_error")
_LEAF_SOURCES = {"leaves": "action", "leaves_nav": "navigation"}


class Simulator:
    """A simulated Intune Cloud PKI tenant (or several) behind one HTTPS server."""

    def __init__(
        self,
        spec: DatasetSpec,
        *,
        faults: Iterable[Fault] = (),
        clock: Callable[[], float] = time.time,
        gzip_level: int = GZIP_LEVEL,
        log_size: int = 200_000,
        limits: GraphLimits | None = None,
        limits_clock: Callable[[], float] | None = None,
        page_latency: PageLatency = None,
        cdn_host: str = "127.0.0.1",
        state_dir: Path | None = None,
    ) -> None:
        """``state_dir``: keep the files (TLS CA, app certificates) there across restarts
        (``simulate --state-dir``) instead of in a temporary directory deleted on close."""
        #: the clock of token lifetimes and log times; tests may replace it at any time
        self.clock = clock
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pki-exporter-sim-")
            state_dir = Path(self._tmp.name)
        else:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = state_dir
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._gzip_level = gzip_level
        self._base_url: str | None = None
        self._server: SimulatorServer | None = None
        self._thread: threading.Thread | None = None
        #: the host name CRL and CA-certificate URLs carry (the CDN listens on the address
        #: given to `start`; a name here must resolve to it)
        self.cdn_host = cdn_host
        dataset = Dataset(spec, f"http://{cdn_host}")
        self._state: tuple[Dataset, LeafPages] = (dataset, LeafPages(dataset, "", gzip_level))
        self.authority = Authority(
            base_url=lambda: self.url,
            clock=self._now,
            token_lifetime=lambda: self._state[0].spec.token_lifetime,
        )
        self.faults = FaultSet(on_token_expiry=self.authority.expire_tokens, clock=self._now)
        #: the CRLs of every CA version, built on demand (`crl.CRLPublisher`)
        self.crls = CRLPublisher(self.faults)
        #: the plain-HTTP CDN listener serving CRLs and CA certificates (`cdn.CDN`)
        self.cdn = CDN(self)
        keep = self._tmp is None
        self._tenants = [make_tenant(t, spec.seed, self.directory, keep=keep) for t in spec.tenants]
        self.authority.set_tenants(self._tenants)
        self.graph = Graph(lambda: self._state, self.faults, lambda: self.url)
        #: the VM's managed identities and the IMDS token endpoint (``start_imds``)
        self.imds = InstanceMetadata(self)
        self._tls_ca = EphemeralCA() if self._tmp is not None else EphemeralCA.kept_in(state_dir)
        self.ca_bundle_path = self.directory / "ca.pem"
        self.ca_bundle_path.write_bytes(self._tls_ca.cert_pem)
        self._log = RequestLog(log_size)
        for fault in faults:
            self.faults.add(fault)
        #: Graph's request limits (`set_limits`); windows count requests at their arrival
        #: (``time.monotonic()``), or at ``limits_clock()`` when given (tests)
        self.limiter = Limiter(limits, limits_clock)
        self._latency: tuple[float, float] | None = check_page_latency(page_latency)
        self._latency_lock = threading.Lock()
        self._latency_rng = random.Random(spec.seed)

    # --- Graph's limits and latency -------------------------------------------------------

    @property
    def limits(self) -> GraphLimits | None:
        """The request limits in force (None: unlimited, the default)."""
        return self.limiter.limits

    def set_limits(self, limits: GraphLimits | None) -> None:
        """Enforce ``limits`` from now on (None: stop limiting). Requests admitted so far
        stay in their windows; requests served while unlimited are not counted."""
        self.limiter.set_limits(limits)

    @property
    def page_latency(self) -> tuple[float, float] | None:
        """The (low, high) seconds a leaf page waits before its answer (None: no wait)."""
        return self._latency

    def set_page_latency(self, latency: PageLatency) -> None:
        """Make every leaf page (action and navigation) wait ``latency`` seconds: a float,
        a (low, high) range drawn uniformly by a RNG seeded with the data set's seed, or
        None for no wait."""
        self._latency = check_page_latency(latency)

    def draw_page_latency(self) -> float:
        """The next leaf page's wait, in seconds (0 without latency)."""
        latency = self._latency
        if latency is None:
            return 0.0
        low, high = latency
        if high <= low:
            return low
        with self._latency_lock:
            return self._latency_rng.uniform(low, high)

    def _page_delay(self) -> None:
        delay = self.draw_page_latency()
        if delay > 0:
            self._stopping.wait(delay)  # no lock held: many server threads sleep at once

    def _now(self) -> float:
        # late-bound on purpose: tests replace ``self.clock`` while the server runs
        return self.clock()

    # --- construction ----------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: DatasetSpec, **kwargs: Any) -> Simulator:
        return cls(spec, **kwargs)

    @classmethod
    def generate(
        cls,
        seed: int = 1,
        tenants: int = 1,
        cas: int = 3,
        certificates: int = 1000,
        anchor: datetime | None = None,
        *,
        page_size: int = 1000,
        ca_page_size: int = 100,
        token_lifetime: int = 3600,
        quirk_share: float = 0.02,
        broken_renewal_share: float = 0.0,
        renewed_share: float = 0.8,
        no_device_share: float = 0.01,
        **kwargs: Any,
    ) -> Simulator:
        """A realistic data set (see `dataset.generate_spec`) in a simulator."""
        spec = generate_spec(
            seed,
            tenants,
            cas,
            certificates,
            anchor,
            page_size=page_size,
            ca_page_size=ca_page_size,
            token_lifetime=token_lifetime,
            quirk_share=quirk_share,
            broken_renewal_share=broken_renewal_share,
            renewed_share=renewed_share,
            no_device_share=no_device_share,
        )
        return cls(spec, **kwargs)

    @classmethod
    def demo(cls, *, certificates: int = 3000, **kwargs: Any) -> Simulator:
        """The demo tenant (`presets.demo_spec`): four CAs, one of them (the second) with
        revocations missing from its CRL (`presets.demo_faults`); not started."""
        from pki_simulator.presets import demo_faults, demo_spec

        spec = demo_spec(certificates=certificates, anchor=kwargs.pop("anchor", None))
        faults = [*demo_faults(spec), *kwargs.pop("faults", ())]
        return cls(spec, faults=faults, **kwargs)

    # --- life cycle ------------------------------------------------------------------

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        url_host: str | None = None,
    ) -> Simulator:
        """Listen on ``host:port`` (0 = any free port) for Graph and the authority, and on
        ``host:cdn_port`` in plain HTTP for the CDN; returns once connections are accepted.
        ``url_host``: the name its URLs and certificate carry instead (the proxy tests: a
        name that only the proxy resolves)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("simulator already started")
            cdn_base = self.cdn.start(host, cdn_port, self.cdn_host)
            hosts = ["127.0.0.1", "localhost"]
            if host not in ("", "0.0.0.0", "::"):  # noqa: S104
                hosts.insert(0, host)
            if url_host:
                hosts.insert(0, url_host)
            cert_pem, key_pem = self._tls_ca.issue_server_certificate(hosts)
            cert_file = self.directory / "server.crt.pem"
            cert_file.write_bytes(cert_pem)
            key_file = write_private(self.directory / "server.key.pem", key_pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert_file, key_file)
            server = SimulatorServer((host, port), self, context, self._now)
            url_host = url_host or (hosts[0] if host not in ("", "0.0.0.0", "::") else "127.0.0.1")  # noqa: S104
            if ":" in url_host:
                url_host = f"[{url_host}]"
            self._base_url = f"https://{url_host}:{server.server_port}"
            dataset = Dataset(self._state[0].spec, cdn_base)  # URLs name the CDN's port
            self.crls.clear()
            self._state = (dataset, LeafPages(dataset, self._base_url, self._gzip_level))
            self._stopping.clear()
            self._server = server
            self._thread = server.start_serving("")
        return self

    def start_imds(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the instance-metadata token endpoint in plain HTTP, as on a VM; returns its
        URL (for ``AZURE_POD_IDENTITY_AUTHORITY_HOST``). Stopped by `stop`."""
        return self.imds.start(host, port)

    def stop(self) -> None:
        """Stop listening and drop every open connection (idempotent)."""
        self.imds.stop()
        self.cdn.stop()
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            self._stopping.set()
        if server is not None:
            server.stop_serving(thread)

    def close(self) -> None:
        """Stop and delete the temporary directory (CA bundle, keys); a state directory stays."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``: the authority host and the Graph root at once."""
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def cdn_url(self) -> str:
        """``http://{cdn_host}:PORT``: the root of every CRL and CA-certificate URL."""
        url = self.cdn.url
        if url is None:
            raise RuntimeError("simulator not started")
        return url

    # --- data ------------------------------------------------------------------------

    @property
    def spec(self) -> DatasetSpec:
        return self._state[0].spec

    @property
    def dataset(self) -> Dataset:
        return self._state[0]

    @property
    def pages(self) -> LeafPages:
        return self._state[1]

    @property
    def tenants(self) -> list[SimTenant]:
        return list(self._tenants)

    def tenant(self, key: str) -> SimTenant:
        """A tenant by id or by name."""
        for tenant in self._tenants:
            if key.lower() in (tenant.tenant_id.lower(), tenant.name.lower()):
                return tenant
        raise KeyError(key)

    def set_dataset(self, spec: DatasetSpec) -> None:
        """Serve another data set from now on (new certificates, CAs added or removed).

        Tenants that stay keep their credentials, so a running client is not disturbed.
        """
        with self._lock:
            known = {t.tenant_id.lower(): t for t in self._tenants}
            tenants = []
            for t_spec in spec.tenants:
                old = known.get(t_spec.tenant_id.lower())
                if old is not None and old.client_id.lower() == t_spec.client_id.lower():
                    tenants.append(
                        dataclasses.replace(
                            old,
                            spec=t_spec,
                            client_secret=t_spec.client_secret or old.client_secret,
                        )
                    )
                else:
                    tenants.append(
                        make_tenant(t_spec, spec.seed, self.directory, keep=self._tmp is None)
                    )
            dataset = Dataset(spec, self.cdn.url or f"http://{self.cdn_host}")
            self.crls.clear()
            self._state = (dataset, LeafPages(dataset, self._base_url or "", self._gzip_level))
            self._tenants = tenants
            self.authority.set_tenants(tenants)

    def remove_ca(self, ca_id: str, tenant_id: str | None = None) -> Fault:
        """Make a CA disappear (from the list, and 404 on its endpoints) until restored."""
        return self.faults.add(Fault(kind="ca_gone", ca_id=ca_id, tenant_id=tenant_id))

    def restore_ca(self, ca_id: str) -> None:
        for fault in self.faults.active():
            if fault.kind == "ca_gone" and (fault.ca_id or "").lower() == ca_id.lower():
                self.faults.remove(fault)

    def visible_cas(self) -> list[CAData]:
        """The CAs a client can see now (not made to disappear)."""
        result: list[CAData] = []
        for tenant in self.dataset.tenants:
            gone = self.faults.gone_cas(tenant.spec.tenant_id)
            result.extend(ca for ca in tenant.cas if ca.spec.id.lower() not in gone)
        return result

    def warm(self, *, gzip: bool = True) -> int:
        """Render every page now (and gzip them); returns the bytes held in the cache."""
        return self.pages.warm(self.dataset.all_cas(), gzip=gzip)

    def warm_navigation(self, select: str | None = None) -> int:
        """Encode every record for the navigation property read with this ``$select`` (a
        comma-separated field list, or None for whole records) now, so that the first
        reader is not slowed; returns the bytes held for it."""
        fields = None
        if select is not None:
            fields = tuple(f.strip() for f in select.split(",") if f.strip())
            unknown = [f for f in fields if f not in LEAF_FIELDS]
            if unknown or not fields:
                raise ValueError(
                    f"warm navigation: unknown field {unknown[0] if unknown else ''!r}"
                )
        return self.pages.warm_navigation(self.dataset.all_cas(), fields)

    def issue_federated_token(self, tenant_id: str, **kwargs: Any) -> str:
        """A workload-identity token the token endpoint accepts as ``client_assertion``."""
        return self.authority.issue_federated_token(tenant_id, **kwargs)

    def issued_tokens(self) -> list[str]:
        """Access tokens handed out so far (the last 1000): for tests that prove no token
        leaks into logs, metrics or pages. Never logged."""
        return self.authority.issued_tokens()

    # --- ground truth ----------------------------------------------------------------

    def expected_samples(
        self,
        now: datetime | float,
        windows: Iterable[int] = (7, 30, 90),
        tenant_names: Mapping[str, str] | None = None,
    ) -> dict[SampleKey, float]:
        """Every certificate metric sample the exporter should export at ``now``.

        ``tenant_names`` maps tenant ids to the ``tenant`` label (the config's names);
        tenants not in it are labelled with their spec name.
        """
        return expected_samples(self.visible_cas(), now, windows, tenant_names)

    def expected_devices_at_risk(
        self, now: datetime | float, ca_id: str, within_days: int
    ) -> list[dict[str, object]]:
        """The rows ``/certificates?ca=<ca_id>&within_days=N&format=json`` should list at
        ``now`` (the time of the exporter's refresh), soonest first, before any cap."""
        for ca in self.visible_cas():
            if ca.spec.id.lower() == ca_id.lower():
                return devices_at_risk(ca, now, within_days)
        raise KeyError(ca_id)

    def expected_crls(
        self,
        now: datetime | float,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> list[CRLTruth]:
        """Every CRL of every visible CA version at ``now`` and what the exporter should
        make of it (docs/simulator.md, "PKI and CRLs")."""
        return expected_crls(self, self.visible_cas(), now, max_size=max_size)

    def expected_crl_samples(
        self,
        now: datetime | float,
        *,
        grace: float = DEFAULT_GRACE,
        max_size: int = DEFAULT_MAX_SIZE,
        tenant_names: Mapping[str, str] | None = None,
    ) -> dict[SampleKey, float]:
        """The ``intune_cloudpki_crl_*`` samples of the CRLs the CAs name, and
        ``intune_cloudpki_leaf_certificates_revoked_unpublished`` per CA, at ``now``."""
        return crl_samples(
            self,
            self.visible_cas(),
            now,
            grace=grace,
            max_size=max_size,
            tenant_names=tenant_names,
        )

    def expected_unpublished(
        self,
        now: datetime | float,
        ca_id: str,
        *,
        grace: float = DEFAULT_GRACE,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> list[dict[str, object]]:
        """The drill-down rows of a CA's unpublished revocations at ``now``."""
        for ca in self.visible_cas():
            if ca.spec.id.lower() == ca_id.lower():
                return unpublished_rows(self, ca, now, grace=grace, max_size=max_size)
        raise KeyError(ca_id)

    @property
    def cdn_log(self) -> list[CDNLogEntry]:
        """Every request the CDN answered, with all its headers."""
        return self.cdn.entries()

    def clear_cdn_log(self) -> None:
        self.cdn.clear()

    def summary(self) -> list[dict[str, Any]]:
        """Per CA: tenant, id, name, records, pages, invalid records (for reports)."""
        return [
            {
                "tenant_id": ca.tenant.spec.tenant_id,
                "tenant": ca.tenant.spec.name,
                "ca_id": ca.spec.id,
                "ca": ca.spec.display_name,
                "certificates": ca.spec.certificates,
                "pages": ca.pages,
                "invalid": ca.facts().invalid,
            }
            for ca in self.visible_cas()
        ]

    # --- request log ------------------------------------------------------------------

    @property
    def log(self) -> list[RequestLogEntry]:
        return self._log.entries()

    def busiest_window(
        self,
        window: float = 20.0,
        *,
        tenant_id: str | None = None,
        app_id: str | None = None,
        writes: bool = False,
        include_throttled: bool = True,
    ) -> int:
        """The most Graph requests (authenticated ones: entries with an ``app_id``) the log
        holds in any sliding ``window`` seconds, by arrival (``monotonic``): of one tenant
        and/or app when given, writes (POST/PUT/PATCH/DELETE) only when ``writes``, without
        the 429s of `GraphLimits` unless ``include_throttled``."""
        times = [
            e.monotonic
            for e in self._log.entries()
            if e.app_id is not None
            and (tenant_id is None or (e.tenant_id or "").lower() == tenant_id.lower())
            and (app_id is None or e.app_id.lower() == app_id.lower())
            and (not writes or e.method in WRITE_METHODS)
            and (include_throttled or e.fault != "graph_limit")
        ]
        return max_in_window(times, window)

    def clear_log(self) -> None:
        self._log.clear()

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
        answered = time.monotonic()
        self._log.append(
            RequestLogEntry(
                time=started,
                method=request.method,
                path=request.path,
                query=request.query_string,
                status=response.status,
                endpoint=response.endpoint,
                tenant_id=response.tenant_id,
                ca_id=response.ca_id,
                page=response.page,
                client_request_id=request.client_request_id,
                request_id=request.request_id,
                user_agent=request.header("user-agent"),
                prefer=request.header("prefer"),
                accept_encoding=request.header("accept-encoding"),
                content_encoding=content_encoding,
                had_authorization=request.header("authorization") is not None,
                fault=response.fault,
                bytes_sent=bytes_sent,
                duration=answered - started_monotonic,
                answered=answered,
                monotonic=request.arrival,
                received=request.received,
                opened=request.opened,
                app_id=response.app_id,
                retry_after=next(
                    (v for k, v in response.headers if k.lower() == "retry-after"), None
                ),
            )
        )

    # --- routing ---------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path = request.path
        if path.lower().startswith("/_simulator/"):
            return handle_control(self, request)
        if is_graph_path(path):
            return self._graph(request)
        if path.lower().startswith("/metadata/"):
            return self.imds.handle(request, self._imds_with_faults)
        parts = path.strip("/").split("/")
        tail = [p.lower() for p in parts[1:]]
        if len(parts) == 4 and tail == ["v2.0", ".well-known", "openid-configuration"]:
            if request.method != "GET":
                return json_response(405, {"error": "method_not_allowed"}, endpoint="other")
            return self.authority.openid_configuration(parts[0])
        if len(parts) == 4 and tail == ["oauth2", "v2.0", "token"]:
            if request.method != "POST":
                return json_response(405, {"error": "method_not_allowed"}, endpoint="token")
            return self._token(request, parts[0])
        if len(parts) == 4 and tail == ["discovery", "v2.0", "keys"]:
            return self.authority.jwks(parts[0])
        return json_response(404, {"error": "not_found", "path": path}, endpoint="other")

    def _token(self, request: Request, tenant_id: str) -> Response:
        scope = Scope("token", tenant_id)
        response = self._with_faults(
            request, scope, _TOKEN_FAULTS, lambda: self.authority.token(request, tenant_id)
        )
        response.endpoint = "token"
        response.tenant_id = tenant_id
        return response

    def _imds_with_faults(
        self, request: Request, tenant_id: str, produce: Callable[[], Response]
    ) -> Response:
        # IMDS hands out tokens: the faults aimed at the token endpoint apply to it too.
        return self._with_faults(request, Scope("token", tenant_id), _TOKEN_FAULTS, produce)

    def _graph(self, request: Request) -> Response:
        route = resolve(request)
        auth = self.authority.validate(request.header("authorization"))
        if not isinstance(auth, TokenInfo):
            response = graph_error(
                request,
                401,
                "InvalidAuthenticationToken",
                auth,
                headers=[("WWW-Authenticate", _WWW_AUTHENTICATE)],
            )
        elif throttled := self._admit(request, auth):
            response = self._limit_response(request, throttled)
        elif route.error is not None:
            response = route.error
        else:
            token = auth
            source = _LEAF_SOURCES.get(route.endpoint)
            if source is not None:
                self._page_delay()
            scope = Scope("graph", auth.tenant_id, route.ca_id, route.page, source)
            response = self._with_faults(
                request, scope, _GRAPH_FAULTS, lambda: self.graph.handle(request, route, token)
            )
        response.endpoint = route.endpoint
        response.tenant_id = auth.tenant_id if isinstance(auth, TokenInfo) else None
        response.app_id = auth.client_id if isinstance(auth, TokenInfo) else None
        response.ca_id = route.ca_id
        response.page = route.page
        return response

    def _with_faults(
        self,
        request: Request,
        scope: Scope,
        kinds: tuple[str, ...],
        produce: Callable[[], Response],
    ) -> Response:
        slow = self.faults.take(scope, ("slow",))
        if slow is not None:
            self._stopping.wait(slow.delay)
        fault = self.faults.take_query_broker(scope) if scope.source else None
        if fault is None:
            fault = self.faults.take(scope, kinds)
        if fault is not None:
            response = self._fault_response(request, scope, fault)
        else:
            response = produce()
            if response.status == 200:
                late = self.faults.take(scope, ("malformed_json", "reset"))
                if late is not None:
                    response.fault = late.kind
                    if late.kind == "reset":
                        response.reset = True
                    else:
                        response.body = response.body[: max(1, len(response.body) // 2)]
                        response.gzip_body = None
        if slow is not None and response.fault is None:
            response.fault = "slow"
        return response

    def _admit(self, request: Request, token: TokenInfo) -> Throttled | None:
        counted, throttled = self.limiter.check(
            token.tenant_id, token.client_id, request.method, request.arrival
        )
        if counted is not None and not self.limiter.fake_clock:
            request.arrival = counted  # logged as ``monotonic``: what the windows hold
        return throttled

    def _limit_response(self, request: Request, throttled: Throttled) -> Response:
        limits = self.limiter.limits or GraphLimits()
        headers = []
        if limits.send_retry_after:
            seconds: float = throttled.retry_after_seconds
            if limits.retry_after is not None:
                seconds = limits.retry_after
            headers.append(("Retry-After", format_retry_after(seconds)))
        who = "this application" if throttled.scope == "app" else "all applications"
        what = "requests" if throttled.kind == "requests" else "write requests"
        response = graph_error(
            request,
            429,
            "TooManyRequests",
            f"Too many requests: {who} of this tenant may send at most {throttled.limit} "
            f"{what} per {limits.window:g} seconds.",
            headers=headers,
        )
        response.fault = "graph_limit"
        return response

    def _fault_response(self, request: Request, scope: Scope, fault: Fault) -> Response:
        headers = []
        if fault.retry_after is not None and fault.kind != "query_broker":
            headers.append(("Retry-After", format_retry_after(fault.retry_after)))
        kind = fault.kind
        if scope.target == "token":
            status = {"throttle": 429, "unavailable": 503, "gateway_timeout": 504}.get(
                kind, fault.status or 401
            )
            if status == 401:
                exc = AuthError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the "
                    "request is the client secret value, not the client secret ID.",
                )
            elif status == 429:
                exc = AuthError(
                    429,
                    "temporarily_unavailable",
                    90055,
                    "TenantThrottlingError - There are too many incoming requests.",
                )
            elif status >= 500:
                exc = AuthError(
                    status,
                    "temporarily_unavailable",
                    90033,
                    "A transient error has occurred. Please try again.",
                )
            else:
                exc = AuthError(status, "invalid_request", 900144, "The request is invalid.")
            response = aad_error(exc, headers)
        else:
            if kind == "throttle":
                status, code, message = 429, "TooManyRequests", "Too many requests."
            elif kind == "unavailable":
                status, code, message = (
                    503,
                    "ServiceUnavailable",
                    "The service is temporarily unavailable. Please try again later.",
                )
            elif kind == "gateway_timeout":
                status, code, message = 504, "GatewayTimeout", "The gateway timed out."
            elif kind == "query_broker":
                status, code = 500, "InternalServerError"
                message = intune_message(request, "An internal server error has occurred")
            else:
                status = fault.status or 500
                code = "InternalServerError" if status == 500 else "UnknownError"
                message = intune_message(request, "An internal server error has occurred")
            response = graph_error(request, status, code, message, headers=headers)
        response.fault = kind
        return response
