"""A fake Azure Instance Metadata Service (IMDS): managed-identity tokens for a VM.

On a real Azure VM, ``GET http://169.254.169.254/metadata/identity/oauth2/token`` with
``Metadata: true`` hands out an access token of the VM's system-assigned identity, or of
one of its user-assigned identities named by ``client_id`` (or ``object_id``,
``msi_res_id``). MSAL's ``ManagedIdentityClient`` asks there, or wherever the environment
variable ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` points. The simulator answers the same
request, in plain HTTP on a loopback listener of its own (``Simulator.start_imds``) as
IMDS does, and also on its HTTPS server.

Each identity belongs to one tenant; its token is issued by the simulator's authority for
that tenant (``appid`` = the identity's client id), so the simulated Graph serves that
tenant's CAs to it. By default the VM has a system-assigned identity in the first tenant
and one user-assigned identity per tenant (client ids derived from the seed). Errors are
IMDS's: 400 ``invalid_request`` "Identity not found" for an identity the VM does not have,
400 for a missing ``Metadata`` header, ``api-version`` or ``resource``, and
400 ``invalid_resource`` (AADSTS500011) for a resource other than the simulated Graph.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pki_simulator.messages import Request, Response, json_response

if TYPE_CHECKING:
    from pki_simulator.app import Simulator
    from pki_simulator.server import SimulatorServer

TOKEN_PATH = "/metadata/identity/oauth2/token"  # noqa: S105 - a path, not a password
API_VERSIONS = ("2018-02-01", "2019-08-01")


@dataclass(frozen=True)
class ManagedIdentity:
    """A managed identity of the simulated VM, living in ``tenant_id``."""

    tenant_id: str
    client_id: str
    object_id: str
    system_assigned: bool = False

    @property
    def resource_id(self) -> str:
        """The ARM id IMDS accepts as ``msi_res_id`` (user-assigned identities only)."""
        return (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/pki-exporter"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-{self.client_id[:8]}"
        )


def _derived_guid(*parts: object) -> str:
    return str(uuid.UUID(int=random.Random("|".join(map(str, parts))).getrandbits(128), version=4))


def _imds_error(status: int, error: str, description: str) -> Response:
    return json_response(
        status, {"error": error, "error_description": description}, endpoint="imds"
    )


class InstanceMetadata:
    """The identities of the simulated VM and the IMDS token endpoint."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._lock = threading.Lock()
        #: tenant id of the system-assigned identity; "" = the first tenant, None = none
        self._system_tenant: str | None = ""
        self._extra: list[ManagedIdentity] = []
        self._removed: set[str] = set()
        self._server: SimulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # --- identities ------------------------------------------------------------------

    def system_assigned(self) -> ManagedIdentity | None:
        """The VM's system-assigned identity (in the first tenant unless changed), or None."""
        with self._lock:
            wanted = self._system_tenant
        tenants = self._sim.tenants
        if wanted is None or not tenants:
            return None
        tenant = tenants[0] if wanted == "" else self._sim.tenant(wanted)
        seed = self._sim.spec.seed
        return ManagedIdentity(
            tenant_id=tenant.tenant_id,
            client_id=_derived_guid(seed, tenant.tenant_id, "system-assigned", "client"),
            object_id=_derived_guid(seed, tenant.tenant_id, "system-assigned", "object"),
            system_assigned=True,
        )

    def set_system_assigned(self, tenant: str | None) -> None:
        """Give the VM a system-assigned identity in ``tenant`` (id or name), or none."""
        if tenant is not None:
            self._sim.tenant(tenant)  # KeyError for an unknown tenant
        with self._lock:
            self._system_tenant = tenant

    def user_assigned(self, tenant: str | None = None) -> list[ManagedIdentity]:
        """The user-assigned identities assigned to the VM (of one tenant, by id or name)."""
        seed = self._sim.spec.seed
        identities = [
            ManagedIdentity(
                tenant_id=t.tenant_id,
                client_id=_derived_guid(seed, t.tenant_id, "user-assigned", "client"),
                object_id=_derived_guid(seed, t.tenant_id, "user-assigned", "object"),
            )
            for t in self._sim.tenants
        ]
        with self._lock:
            identities.extend(self._extra)
            removed = set(self._removed)
        wanted = None if tenant is None else self._sim.tenant(tenant).tenant_id.lower()
        return [
            i
            for i in identities
            if i.client_id not in removed and (wanted is None or i.tenant_id.lower() == wanted)
        ]

    def assign(self, tenant: str, client_id: str | None = None) -> ManagedIdentity:
        """Assign another user-assigned identity of ``tenant`` to the VM."""
        tenant_id = self._sim.tenant(tenant).tenant_id
        client = (client_id or str(uuid.uuid4())).lower()
        identity = ManagedIdentity(tenant_id, client, str(uuid.uuid4()))
        with self._lock:
            self._removed.discard(client)
            self._extra.append(identity)
        return identity

    def unassign(self, client_id: str) -> None:
        """Take a user-assigned identity away from the VM: IMDS answers "Identity not found"."""
        with self._lock:
            self._removed.add(client_id.lower())

    def _find(self, query: dict[str, str]) -> ManagedIdentity | None:
        selectors = [
            (key, query[key].strip().lower())
            for key in ("client_id", "object_id", "msi_res_id", "mi_res_id")
            if query.get(key, "").strip()
        ]
        if not selectors:
            return self.system_assigned()
        if len(selectors) > 1:
            return None
        key, value = selectors[0]
        for identity in self.user_assigned():
            if key == "client_id" and identity.client_id.lower() == value:
                return identity
            if key == "object_id" and identity.object_id.lower() == value:
                return identity
            if key in ("msi_res_id", "mi_res_id") and identity.resource_id.lower() == value:
                return identity
        return None

    # --- the token endpoint ------------------------------------------------------------

    def handle(self, request: Request, with_faults: Callable[..., Response]) -> Response:
        """``GET /metadata/identity/oauth2/token``; ``with_faults(request, tenant_id, produce)``
        lets the simulator apply the faults that target the token endpoint."""
        if request.path.rstrip("/").lower() != TOKEN_PATH:
            return _imds_error(404, "not_found", "The requested resource was not found.")
        if request.method != "GET":
            return _imds_error(405, "invalid_request", "Method not allowed.")
        if (request.header("metadata") or "").strip().lower() != "true":
            return _imds_error(400, "invalid_request", "Required metadata header not specified")
        if request.header("x-forwarded-for") is not None:
            return _imds_error(400, "invalid_request", "Request contains X-Forwarded-For header")
        query = request.query
        version = query.get("api-version")
        if not version:
            return _imds_error(
                400, "invalid_request", "Required query variable 'api-version' is missing"
            )
        if version not in API_VERSIONS:
            return _imds_error(400, "invalid_request", f"Invalid api-version '{version}'")
        resource = query.get("resource", "")
        if not resource:
            return _imds_error(400, "invalid_request", "Required audience parameter not specified")
        identity = self._find(query)
        if identity is None:
            return _imds_error(400, "invalid_request", "Identity not found")
        response = with_faults(request, identity.tenant_id, lambda: self._token(identity, resource))
        response.endpoint = "imds"
        response.tenant_id = identity.tenant_id
        return response

    def _token(self, identity: ManagedIdentity, resource: str) -> Response:
        base = resource.rstrip("/")
        if base not in self._sim.authority.resource_aliases():
            return _imds_error(
                400,
                "invalid_resource",
                f"AADSTS500011: The resource principal named {resource} was not found in the "
                f"tenant named {identity.tenant_id}. This can happen if the application has "
                "not been installed by the administrator of the tenant.",
            )
        token, issued_at, expires_at = self._sim.authority.issue_access_token(
            identity.tenant_id, identity.client_id
        )
        lifetime = int(expires_at - issued_at)
        body = {
            "access_token": token,
            "client_id": identity.client_id,
            "expires_in": str(lifetime),
            "expires_on": str(int(expires_at)),
            "ext_expires_in": str(lifetime),
            "not_before": str(int(issued_at)),
            "resource": resource,
            "token_type": "Bearer",
        }
        return json_response(200, body, endpoint="imds", tenant_id=identity.tenant_id)

    # --- the plain-HTTP listener -----------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve IMDS in plain HTTP on ``host:port`` (0 = any free port); returns its URL,
        the value for ``AZURE_POD_IDENTITY_AUTHORITY_HOST``."""
        from pki_simulator.server import SimulatorServer

        with self._lock:
            if self._server is not None:
                raise RuntimeError("IMDS already started")
            server = SimulatorServer((host, port), _ImdsOnly(self._sim), None, self._sim.clock)
            shown = f"[{host}]" if ":" in host else host
            self._url = f"http://{shown}:{server.server_port}"
            self._server = server
            self._thread = server.start_serving("-imds")
            return self._url

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("IMDS not started (Simulator.start_imds)")
        return self._url

    def stop(self) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            self._url = None
        if server is not None:
            server.stop_serving(thread)


class _ImdsOnly:
    """The IMDS listener's app: only the metadata paths, logged in the simulator's log."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def handle(self, request: Request) -> Response:
        if not request.path.lower().startswith("/metadata/"):
            return _imds_error(404, "not_found", "The requested resource was not found.")
        return self._sim.handle(request)

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
        self._sim.log_request(
            request,
            response,
            bytes_sent=bytes_sent,
            content_encoding=content_encoding,
            started=started,
            started_monotonic=started_monotonic,
        )
