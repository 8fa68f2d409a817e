"""``/certificates``: the devices at risk of one CA, from the alert to the names.

The renewal alert says "a fifth of the devices of CA X did not renew"; this page says which:
for a CA (``?ca=`` its id or name) and a window (``?within_days=``), the devices whose
latest-ending active certificate ends within the window, soonest first, with device name,
user, platform, serial number, thumbprint and end date. HTML for people, ``?format=json``
for scripts. The data is the CA's snapshot (docs/design.md, "Metric semantics"), as atomic
as /metrics: both come from the same refresh.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import parse_qs, quote, urlencode

from pki_exporter.aggregate.devices import DRILLDOWN_CAP, AtRiskDevice
from pki_exporter.state import CAState, Store

PARAMETERS = ("ca", "tenant", "within_days", "limit", "format")
HTML = "text/html; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str


class BadRequest(Exception):
    """A query the page cannot answer: one line for the user, and an HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Query:
    ca: str
    tenant: str | None
    within_days: int
    limit: int
    format: str


def format_time(ts: float) -> str:
    """RFC 3339 in UTC, microseconds only when there are some (as the JSON rows say it)."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 9:
        raise BadRequest(f"{name}: expected a whole number, got {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be within {low}..{high}, got {value}")
    return value


def parse_query(query: str, windows: tuple[int, ...]) -> Query:
    """The query string -> a Query; BadRequest names the first thing wrong."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except ValueError as exc:
        raise BadRequest(f"query: {exc}") from None
    for name, values in parsed.items():
        if name not in PARAMETERS:
            raise BadRequest(f"unknown parameter {name[:40]!r} (known: {', '.join(PARAMETERS)})")
        if len(values) > 1:
            raise BadRequest(f"{name}: given more than once")
    params = {name: values[0] for name, values in parsed.items()}
    ca = params.get("ca", "").strip()
    if not ca:
        raise BadRequest("ca: required (a CA id or name, as on the status page)")
    if not windows:
        raise BadRequest("within_days: no expiry_windows_days are configured")
    within_days = _int(params, "within_days", windows[0], 1, windows[-1])
    limit = _int(params, "limit", DRILLDOWN_CAP, 1, DRILLDOWN_CAP)
    fmt = params.get("format", "html")
    if fmt not in ("html", "json"):
        raise BadRequest(f"format: html or json, got {fmt[:40]!r}")
    tenant = params.get("tenant") or None
    return Query(ca, tenant, within_days, limit, fmt)


def find_ca(store: Store, ca: str, tenant: str | None) -> tuple[str, CAState]:
    """(tenant name, CA state) for an id or a name; BadRequest when none or several match."""
    wanted = ca.lower()
    found = [
        (name, state)
        for name, tenant_state in store.tenants.items()
        if tenant is None or name == tenant
        for state in tenant_state.cas.values()
        if state.ca_id == wanted or state.label == ca
    ]
    if not found:
        where = f" of tenant {tenant!r}" if tenant is not None else ""
        raise BadRequest(f"ca: no CA {ca[:80]!r}{where} (see the status page)", 404)
    if len(found) > 1:
        raise BadRequest(f"ca: {ca[:80]!r} names {len(found)} CAs; give the CA id or tenant=")
    return found[0]


def link(prefix: str, **params: str | int) -> str:
    """A link to this page under the external URL's path."""
    return f"{prefix}certificates?{urlencode(params, quote_via=quote)}"


def certificates_page(
    store: Store,
    query: str,
    windows: tuple[int, ...],
    *,
    prefix: str = "/",
    telemetry_path: str = "/metrics",
) -> Answer:
    """The answer to ``GET /certificates?<query>``."""
    try:
        q = parse_query(query, windows)
        tenant, ca = find_ca(store, q.ca, q.tenant)
    except BadRequest as exc:
        return Answer(exc.status, f"{exc}\n".encode(), TEXT)
    snapshot = ca.snapshot
    document: dict[str, object] = {
        "tenant": tenant,
        "ca_id": ca.ca_id,
        "ca": ca.label,
        "within_days": q.within_days,
        "limit": q.limit,
        "cap": DRILLDOWN_CAP,
        "read_at": None,
        "read_at_timestamp": None,
        "devices": None,
        "devices_at_risk": None,
        "complete": False,
        "complete_until": None,
        "rows": [],
        "message": None,
    }
    rows: list[AtRiskDevice] = []
    if snapshot is None:
        document["message"] = (
            "No data for this CA yet: no refresh of it has succeeded"
            + (f" (last error: {ca.last_error})" if ca.last_error else "")
            + "."
        )
    else:
        devices = snapshot.devices
        bound = devices.bound(q.within_days)
        rows = [row for row in devices.rows if row.end <= bound][: q.limit]
        document.update(
            read_at=format_time(snapshot.read_at),
            read_at_timestamp=snapshot.read_at,
            devices=sum(devices.devices.values()),
            devices_at_risk=devices.at_risk(q.within_days),
            complete=devices.complete(q.within_days),
            complete_until=(
                None if devices.complete_until is None else format_time(devices.complete_until)
            ),
            rows=[
                {
                    "device_id": row.device_id,
                    "device_name": row.device_name,
                    "user": row.user,
                    "platform": row.platform,
                    "serial_number": row.serial_number,
                    "thumbprint": row.thumbprint,
                    "end": format_time(row.end),
                    "end_timestamp": row.end,
                }
                for row in rows
            ],
        )
    if q.format == "json":
        body = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
        return Answer(200, body.encode(), JSON)
    read_at = snapshot.read_at if snapshot is not None else 0.0
    page = _html(document, rows, q, windows, prefix, telemetry_path, read_at)
    return Answer(200, page.encode(), HTML)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} .num{text-align:right} .bad{color:#b42318;font-weight:600}
code{background:#f6f6f6;padding:0 .2em;font-size:.9em} nav a{margin-right:.8em}
#devices td{white-space:nowrap}
.note{background:#fff8e1;border:1px solid #f0d060;padding:.5em .8em}
"""


def _cell(value: str | None) -> str:
    return escape(value) if value else '<span title="not given by Graph">-</span>'


def _html(
    document: Mapping[str, object],
    rows: list[AtRiskDevice],
    q: Query,
    windows: tuple[int, ...],
    prefix: str,
    telemetry_path: str,
    read_at: float,
) -> str:
    title = f"Devices at risk: {document['ca']}"
    here = {"ca": str(document["ca_id"]), "tenant": str(document["tenant"])}
    choices = sorted({*windows, q.within_days})
    nav = " ".join(
        f"<strong>{days} days</strong>"
        if days == q.within_days
        else f'<a href="{escape(link(prefix, **here, within_days=days))}">{days} days</a>'
        for days in choices
    )
    json_link = link(prefix, **here, within_days=q.within_days, limit=q.limit, format="json")
    parts = [
        f"<h1>{escape(title)}</h1>",
        f"<p>Tenant <strong>{escape(str(document['tenant']))}</strong>, CA "
        f"<strong>{escape(str(document['ca']))}</strong> <code>{escape(str(document['ca_id']))}</code></p>",
        f'<nav><a href="{escape(prefix)}">Status page</a>'
        f'<a href="{escape(prefix + telemetry_path.lstrip("/"))}">Metrics</a>'
        f'<a id="json" href="{escape(json_link)}">JSON</a></nav>',
        f'<p id="windows">Window: {nav}</p>',
    ]
    if document["read_at"] is None:
        parts.append(f'<p id="message" class="bad">{escape(str(document["message"]))}</p>')
    else:
        at_risk = int(str(document["devices_at_risk"]))
        shown = len(rows)
        parts.append(
            f'<p id="summary"><strong>{at_risk}</strong> of {document["devices"]} devices of this '
            f"CA have no active certificate ending later than {q.within_days} days after "
            f"{escape(str(document['read_at']))} (when the data was read from Graph): they did "
            f"not renew. Listed: {shown}, soonest first; the list holds at most "
            f"{q.limit} devices (<code>?limit=</code>, up to {DRILLDOWN_CAP}).</p>"
        )
        if not document["complete"]:
            parts.append(
                '<p id="incomplete" class="note">The exporter keeps the details of a bounded '
                "number of devices per CA: this list is complete only for certificates ending "
                f"before {escape(str(document['complete_until']))}.</p>"
            )
        if not rows:
            parts.append(
                f'<p id="message">No device of this CA is at risk within {q.within_days} days.</p>'
            )
        else:
            body = "".join(
                f"<tr><td class=num>{n}</td><td>{_cell(row.device_name)}</td>"
                f"<td>{_cell(row.user)}</td><td>{escape(row.platform)}</td>"
                f"<td><code>{_cell(row.serial_number)}</code></td>"
                f"<td><code>{_cell(row.thumbprint)}</code></td>"
                f"<td>{escape(format_time(row.end))}</td>"
                f"<td class=num>{(row.end - read_at) / 86400:.1f}</td></tr>"
                for n, row in enumerate(rows, 1)
            )
            parts.append(
                '<table id="devices"><thead><tr><th>#</th><th>device</th><th>user</th>'
                "<th>platform</th><th>serial number</th><th>thumbprint</th><th>ends (UTC)</th>"
                f"<th>days left</th></tr></thead><tbody>{body}</tbody></table>"
            )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} - pki-exporter</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{''.join(parts)}\n</body></html>\n"
    )
