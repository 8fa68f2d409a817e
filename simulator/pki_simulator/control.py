"""The control API under ``/_simulator/``: faults, log and ground truth over HTTP.

Benchmarks and the ``simulate`` command drive a simulator in another process; this is
their handle on it. No bearer is needed: the server listens on loopback only, and nothing
here returns a secret or a token.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pki_simulator.crltruth import DEFAULT_GRACE, DEFAULT_MAX_SIZE
from pki_simulator.faults import Fault
from pki_simulator.limits import GraphLimits
from pki_simulator.messages import Request, Response, json_response

if TYPE_CHECKING:
    from pki_simulator.app import Simulator


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message}, endpoint="control")


def _ok(value: Any, status: int = 200) -> Response:
    return json_response(status, value, endpoint="control")


def _parse_now(text: str | None, default: float) -> float:
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("now: needs an offset (Z or +HH:MM)")
    return parsed.timestamp()


def _limits(sim: Simulator) -> dict[str, Any] | None:
    limits = sim.limits
    return None if limits is None else limits.to_dict()


def _latency(sim: Simulator) -> list[float] | None:
    latency = sim.page_latency
    return None if latency is None else list(latency)


def _crls(sim: Simulator, request: Request) -> Response:
    """The revocation ground truth: every CRL, the samples, the unpublished rows per CA."""
    try:
        now = _parse_now(request.query.get("now"), sim.clock())
        grace = float(request.query.get("grace", DEFAULT_GRACE))
        max_size = int(request.query.get("max_size", DEFAULT_MAX_SIZE))
        if grace < 0 or max_size < 0:
            raise ValueError("grace and max_size: must be >= 0")
    except ValueError as exc:
        return _error(400, str(exc))
    samples = sim.expected_crl_samples(now, grace=grace, max_size=max_size)
    return _ok(
        {
            "now": now,
            "grace": grace,
            "max_size": max_size,
            "crls": [t.to_dict() for t in sim.expected_crls(now, max_size=max_size)],
            "unpublished": {
                ca.spec.id: sim.expected_unpublished(
                    now, ca.spec.id, grace=grace, max_size=max_size
                )
                for ca in sim.visible_cas()
            },
            "samples": [
                {"name": name, "labels": dict(labels), "value": value}
                for (name, labels), value in sorted(samples.items())
            ],
        }
    )


def handle_control(sim: Simulator, request: Request) -> Response:
    parts = [p for p in request.path.split("/")[2:] if p]
    method = request.method
    if not parts and method == "GET":  # the URL `simulate` prints: what is here
        return _ok(
            {
                "endpoints": [
                    "GET|POST|DELETE /_simulator/faults",
                    "DELETE /_simulator/faults/{id}",
                    "GET|DELETE /_simulator/log",
                    "GET /_simulator/ground-truth?now=&windows=7,30,90",
                    "GET /_simulator/crls?now=&grace=&max_size=",
                    "GET|DELETE /_simulator/cdn-log",
                    "GET /_simulator/info",
                ]
            }
        )
    if parts == ["faults"]:
        if method == "GET":
            return _ok({"faults": [f.to_dict() for f in sim.faults.active()]})
        if method == "POST":
            try:
                data = json.loads(request.body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("fault: expected a JSON object")
                fault = sim.faults.add(Fault.from_mapping(data))
            except ValueError as exc:
                return _error(400, str(exc))
            return _ok({"id": fault.id, "fault": fault.to_dict()}, 201)
        if method == "DELETE":
            sim.faults.clear()
            return _ok({"cleared": True})
    if len(parts) == 2 and parts[0] == "faults" and method == "DELETE":
        if sim.faults.remove(parts[1]):
            return _ok({"removed": parts[1]})
        return _error(404, f"no active fault {parts[1]}")
    if parts == ["log"]:
        if method == "GET":
            return _ok({"entries": [e.to_dict() for e in sim.log]})
        if method == "DELETE":
            sim.clear_log()
            return _ok({"cleared": True})
    if parts == ["limits"]:
        if method in ("PUT", "POST"):
            try:
                data = json.loads(request.body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("graph limits: expected a JSON object")
                sim.set_limits(GraphLimits.from_mapping(data))
            except ValueError as exc:
                return _error(400, str(exc))
        elif method == "DELETE":
            sim.set_limits(None)
        elif method != "GET":
            return _error(405, f"method {method} not allowed on {request.path}")
        return _ok({"limits": _limits(sim)})
    if parts == ["page-latency"]:
        if method in ("PUT", "POST"):
            try:
                data = json.loads(request.body or b"{}")
                if not isinstance(data, dict) or set(data) != {"page_latency"}:
                    raise ValueError('page latency: expected {"page_latency": ...}')
                sim.set_page_latency(data["page_latency"])
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc))
        elif method == "DELETE":
            sim.set_page_latency(None)
        elif method != "GET":
            return _error(405, f"method {method} not allowed on {request.path}")
        return _ok({"page_latency": _latency(sim)})
    if parts == ["ground-truth"] and method == "GET":
        try:
            now = _parse_now(request.query.get("now"), sim.clock())
            windows = [int(w) for w in request.query.get("windows", "7,30,90").split(",") if w]
        except ValueError as exc:
            return _error(400, str(exc))
        samples = sim.expected_samples(now, windows)
        return _ok(
            {
                "now": now,
                "windows": windows,
                "samples": [
                    {"name": name, "labels": dict(labels), "value": value}
                    for (name, labels), value in sorted(samples.items())
                ],
            }
        )
    if parts == ["crls"] and method == "GET":
        return _crls(sim, request)
    if parts == ["cdn-log"]:
        if method == "GET":
            return _ok({"entries": [e.to_dict() for e in sim.cdn_log]})
        if method == "DELETE":
            sim.clear_cdn_log()
            return _ok({"cleared": True})
    if parts == ["info"] and method == "GET":
        return _ok(
            {
                "url": sim.url,
                "cdn_url": sim.cdn.url,
                "ca_bundle": str(sim.ca_bundle_path),
                "seed": sim.spec.seed,
                "anchor": sim.spec.anchor.isoformat(),
                "tenants": [
                    {"tenant_id": t.tenant_id, "client_id": t.client_id, "name": t.name}
                    for t in sim.tenants
                ],
                "cas": sim.summary(),
                "limits": _limits(sim),
                "page_latency": _latency(sim),
            }
        )
    if parts == ["oidc", ".well-known", "openid-configuration"] and method == "GET":
        return sim.authority.federated_issuer_configuration()
    if parts == ["oidc", "keys"] and method == "GET":
        return sim.authority.jwks(None)
    return _error(404, f"no control endpoint {method} {request.path}")
