"""``/certificates``: the devices at risk of one CA, from the alert to the names.

The renewal alert says "a fifth of the devices of CA X did not renew"; this page says which:
for a CA (``?ca=`` its id or name) and a window (``?within_days=``), the devices whose
latest-ending active certificate ends within the window, soonest first, with device name,
user, platform, serial number, thumbprint and end date. HTML for people, ``?format=json``
for scripts. The data is the CA's snapshot (docs/design.md, "Metric semantics"), as atomic
as /metrics: both come from the same refresh.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import parse_qs, quote, urlencode

from pki_exporter.aggregate.devices import DRILLDOWN_CAP, AtRiskDevice
from pki_exporter.state import CAState, Store

PARAMETERS = ("ca", "tenant", "within_days", "limit", "format", "view")
VIEWS = ("devices", "unpublished")
"""``?view=``: the devices at risk (default), or ``unpublished``: the CA's revocations that
are missing from the CRL they name (spec, "Revocation (CRL)")."""
HTML = "text/html; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

MODES = ("off", "devices", "full")
"""``--web.drilldown``: what /certificates shows. ``off``: nothing (404); ``devices``: no
personal data (no user, no device name: Intune's naming templates and iOS put people's
names there), the device id, platform, certificate serial, thumbprint and end; ``full``:
everything Graph gives, user principal names included."""
DEFAULT_MODE = "devices"


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
    ca: str | None
    """None: the devices at risk of every CA (of ``tenant``, when given)."""
    tenant: str | None
    within_days: int
    limit: int
    format: str
    view: str = "devices"


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
    ca = params.get("ca", "").strip() or None
    if not windows:
        raise BadRequest("within_days: no expiry_windows_days are configured")
    within_days = _int(params, "within_days", windows[0], 1, windows[-1])
    limit = _int(params, "limit", DRILLDOWN_CAP, 1, DRILLDOWN_CAP)
    fmt = params.get("format", "html")
    if fmt not in ("html", "json"):
        raise BadRequest(f"format: html or json, got {fmt[:40]!r}")
    tenant = params.get("tenant") or None
    view = params.get("view", "devices")
    if view not in VIEWS:
        raise BadRequest(f"view: devices or unpublished, got {view[:40]!r}")
    return Query(ca, tenant, within_days, limit, fmt, view)


def wants_json(query: str, accept: str) -> bool:
    """A script's request: ``format=json`` (even in a query that is otherwise wrong), or an
    Accept header that asks for JSON and not HTML."""
    try:
        formats = parse_qs(query, max_num_fields=20).get("format", [])
    except ValueError:
        formats = []
    if formats:
        return "json" in formats
    accept = accept.lower()
    return "application/json" in accept and "text/html" not in accept


def _error(status: int, message: str, as_json: bool) -> Answer:
    if as_json:
        body = json.dumps({"status": status, "error": message}, ensure_ascii=False) + "\n"
        return Answer(status, body.encode(), JSON)
    return Answer(status, f"{message}\n".encode(), TEXT)


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


@dataclass(frozen=True, slots=True)
class _Row:
    tenant: str
    ca: CAState
    device: AtRiskDevice
    read_at: float


def _tenants_known(store: Store, tenant: str | None) -> None:
    if tenant is not None and tenant not in store.tenants:
        raise BadRequest(f"tenant: no tenant {tenant[:80]!r} (see the status page)", 404)


def certificates_page(
    store: Store,
    query: str,
    windows: tuple[int, ...],
    *,
    prefix: str = "/",
    telemetry_path: str = "/metrics",
    mode: str = "full",
    accept: str = "",
) -> Answer:
    """The answer to ``GET /certificates?<query>``: one CA's devices at risk with ``ca=``,
    else those of every CA (of ``tenant=``, when given), soonest first."""
    as_json = wants_json(query, accept)
    if mode == "off":
        return _error(404, "the drill-down is off (--web.drilldown=off)", as_json)
    try:
        q = parse_query(query, windows)
        _tenants_known(store, q.tenant)
        if q.ca is not None:
            tenant, one = find_ca(store, q.ca, q.tenant)
            cas = [(tenant, one)]
        else:
            cas = [
                (name, state)
                for name, tenant_state in store.tenants.items()
                if q.tenant is None or name == q.tenant
                for state in tenant_state.cas.values()
            ]
    except BadRequest as exc:
        return _error(exc.status, str(exc), as_json)
    if accept and not as_json and q.format == "json":
        as_json = True
    if q.view == "unpublished":
        return _unpublished(cas, q, as_json, prefix)
    full = mode == "full"
    single = q.ca is not None
    document: dict[str, object] = {
        "tenant": cas[0][0] if single else q.tenant,
        "ca_id": cas[0][1].ca_id if single else None,
        "ca": cas[0][1].label if single else None,
        "within_days": q.within_days,
        "limit": q.limit,
        "cap": DRILLDOWN_CAP,
        "personal_data": full,
        "read_at": None,
        "read_at_timestamp": None,
        "devices": None,
        "devices_at_risk": None,
        "complete": False,
        "complete_until": None,
        "rows": [],
        "message": None,
    }
    with_data = [(t, ca, ca.snapshot) for t, ca in cas if ca.snapshot is not None]
    without = [(t, ca) for t, ca in cas if ca.snapshot is None]
    if without:
        if single:
            ca = without[0][1]
            document["message"] = (
                "No data for this CA yet: no refresh of it has succeeded"
                + (f" (last error: {ca.last_error})" if ca.last_error else "")
                + "."
            )
        else:
            names = ", ".join(f"{t}/{ca.label}" for t, ca in without[:20])
            document["message"] = f"No data yet (no successful refresh) for: {names}."
    rows: list[_Row] = []
    if with_data or not single:
        per_ca = []
        for tenant, ca, snap in with_data:
            bound = snap.devices.bound(q.within_days)
            per_ca.append(
                [
                    _Row(tenant, ca, row, snap.read_at)
                    for row in snap.devices.rows
                    if row.end <= bound
                ]
            )
        rows = list(heapq.merge(*per_ca, key=lambda r: r.device.end))[: q.limit]
        until = [s.devices.complete_until for _, _, s in with_data]
        document.update(
            read_at=format_time(min(s.read_at for _, _, s in with_data)) if with_data else None,
            read_at_timestamp=min(s.read_at for _, _, s in with_data) if with_data else None,
            devices=sum(sum(s.devices.devices.values()) for _, _, s in with_data),
            devices_at_risk=sum(s.devices.at_risk(q.within_days) for _, _, s in with_data),
            complete=all(s.devices.complete(q.within_days) for _, _, s in with_data),
            complete_until=(
                None if None in until or not until else format_time(min(u for u in until if u))
            ),
            rows=[_json_row(r, single, full) for r in rows],
        )
        if not with_data:
            document["read_at"] = None
    if as_json:
        body = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
        return Answer(200, body.encode(), JSON)
    page = _html(document, rows, q, windows, prefix, telemetry_path, full)
    return Answer(200, page.encode(), HTML)


def _json_row(r: _Row, single: bool, full: bool) -> dict[str, object]:
    row = r.device
    out: dict[str, object] = (
        {} if single else {"tenant": r.tenant, "ca_id": r.ca.ca_id, "ca": r.ca.label}
    )
    out.update(
        device_id=row.device_id,
        device_name=row.device_name if full else None,
        user=row.user if full else None,
        platform=row.platform,
        serial_number=row.serial_number,
        thumbprint=row.thumbprint,
        end=format_time(row.end),
        end_timestamp=row.end,
    )
    return out


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;font-size:14px}
table{border-collapse:collapse;margin:1em 0;width:100%}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3} .num{text-align:right} .bad{color:#b42318;font-weight:600}
.warn{color:#b54708;font-weight:600}
code{background:#f6f6f6;padding:0 .2em;font-size:.85em} nav a{margin-right:.8em}
#devices code{word-break:break-all;font-size:.8em} #devices .when,#devices .num{white-space:nowrap}
#devices .name{overflow-wrap:anywhere}
.note{background:#fff8e1;border:1px solid #f0d060;padding:.5em .8em}
.muted{color:#666}
"""


def _cell(value: str | None) -> str:
    return escape(value) if value else '<span title="not given by Graph">-</span>'


def relative(seconds: float) -> str:
    """``in 3 h``, ``2 d ago``: a duration a person reads at a glance."""
    ahead = seconds >= 0
    s = abs(seconds)
    if s < 1:
        return "now"
    if s < 90:
        text = f"{s:.0f} s"
    elif s < 5400:
        text = f"{s / 60:.0f} min"
    elif s < 172800:
        text = f"{s / 3600:.0f} h"
    else:
        text = f"{s / 86400:.0f} d"
    return f"in {text}" if ahead else f"{text} ago"


def _short_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _days_class(days: float) -> str:
    return "bad" if days < 1 else ("warn" if days < 7 else "")


def _html(
    document: Mapping[str, object],
    rows: list[_Row],
    q: Query,
    windows: tuple[int, ...],
    prefix: str,
    telemetry_path: str,
    full: bool,
) -> str:
    single = q.ca is not None
    if single:
        title = f"Devices at risk: {document['ca']}"
        here = {"ca": str(document["ca_id"]), "tenant": str(document["tenant"])}
    else:
        title = "Devices at risk" + (f": tenant {q.tenant}" if q.tenant else ": every CA")
        here = {"tenant": q.tenant} if q.tenant else {}
    choices = sorted({*windows, q.within_days})
    nav = " ".join(
        f"<strong>{days} days</strong>"
        if days == q.within_days
        else f'<a href="{escape(link(prefix, **here, within_days=days))}">{days} days</a>'
        for days in choices
    )
    json_link = link(prefix, **here, within_days=q.within_days, limit=q.limit, format="json")
    parts = [f"<h1>{escape(title)}</h1>"]
    if single:
        parts.append(
            f"<p>Tenant <strong>{escape(str(document['tenant']))}</strong>, CA "
            f"<strong>{escape(str(document['ca']))}</strong> <code>{escape(str(document['ca_id']))}</code></p>"
        )
    parts += [
        f'<nav><a href="{escape(prefix)}">Status page</a>'
        f'<a href="{escape(prefix + telemetry_path.lstrip("/"))}">Metrics</a>'
        + (
            ""
            if not single
            else f'<a id="all" href="{escape(link(prefix, within_days=q.within_days))}">Every CA</a>'
        )
        + f'<a id="json" href="{escape(json_link)}">JSON</a></nav>',
        f'<p id="windows">Window: {nav}</p>',
    ]
    if not full:
        parts.append(
            '<p id="privacy" class="muted">User names and device names are not shown '
            "(<code>--web.drilldown=devices</code>); find a device in Intune by its id.</p>"
        )
    if document["message"] is not None:
        parts.append(f'<p id="message" class="bad">{escape(str(document["message"]))}</p>')
    if document["read_at"] is not None:
        at_risk = int(str(document["devices_at_risk"]))
        shown = len(rows)
        whose = "of this CA" if single else "of these CAs"
        parts.append(
            f'<p id="summary"><strong>{at_risk}</strong> of {document["devices"]} devices {whose} '
            f"have no active certificate ending later than {q.within_days} days after "
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
                f'<p id="{"message" if document["message"] is None else "empty"}">'
                f"No device {whose} is at risk within {q.within_days} days.</p>"
            )
        else:
            parts.append(_table(rows, single, full))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - pki-exporter</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{''.join(parts)}\n</body></html>\n"
    )


def _table(rows: list[_Row], single: bool, full: bool) -> str:
    tenants = len({r.tenant for r in rows}) > 1
    head = ["#"]
    if not single:
        head += ["tenant", "CA"] if tenants else ["CA"]
    head += ["device", "user"] if full else ["device id"]
    head += ["platform", "serial number", "thumbprint", "ends (UTC)", "days left"]
    body = []
    for n, r in enumerate(rows, 1):
        row = r.device
        days = (row.end - r.read_at) / 86400
        cells = [f"<td class=num>{n}</td>"]
        if not single:
            if tenants:
                cells.append(f"<td>{escape(r.tenant)}</td>")
            cells.append(f'<td title="{escape(r.ca.ca_id)}">{escape(r.ca.label)}</td>')
        if full:
            cells.append(
                f'<td class="name" title="{escape(row.device_id)}">{_cell(row.device_name)}</td>'
            )
            cells.append(f'<td class="name">{_cell(row.user)}</td>')
        else:
            cells.append(f"<td><code>{_cell(row.device_id)}</code></td>")
        cells += [
            f"<td>{escape(row.platform)}</td>",
            f"<td><code>{_cell(row.serial_number)}</code></td>",
            f"<td><code>{_cell(row.thumbprint)}</code></td>",
            f'<td class="when" title="{escape(format_time(row.end))}">{_short_time(row.end)}</td>',
            f'<td class="num {_days_class(days)}" title="{escape(relative(row.end - r.read_at))}">'
            f"{days:.1f}</td>",
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f'<table id="devices"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# -- ?view=unpublished: revocations missing from their CRL ---------------------------------


def _unpublished(cas: list[tuple[str, CAState]], q: Query, as_json: bool, prefix: str) -> Answer:
    """Revoked in Intune, missing from the CRL they name: serial, thumbprint, device id,
    revocation time, CRL. No user or device name is kept for these rows (any mode)."""
    single = q.ca is not None
    rows = sorted(
        ((t, ca, row) for t, ca in cas for row in ca.coverage.rows),
        key=lambda r: (r[2].revoked_at, r[2].serial),
    )[: q.limit]
    checked = [ca for _, ca in cas if ca.crls]
    document: dict[str, object] = {
        "view": "unpublished",
        "tenant": cas[0][0] if single else q.tenant,
        "ca_id": cas[0][1].ca_id if single else None,
        "ca": cas[0][1].label if single else None,
        "limit": q.limit,
        "unpublished": sum(ca.coverage.unpublished for ca in checked),
        "checked": bool(checked),
        "rows": [
            {
                **({} if single else {"tenant": t, "ca_id": ca.ca_id, "ca": ca.label}),
                "serial_number": row.serial,
                "thumbprint": row.thumbprint,
                "device_id": row.device_id,
                "revoked_at": format_time(row.revoked_at),
                "revoked_at_timestamp": row.revoked_at,
                "crl_url": row.crl_url,
            }
            for t, ca, row in rows
        ],
    }
    if as_json:
        return Answer(200, (json.dumps(document, indent=1) + "\n").encode(), JSON)
    title = "Unpublished revocations" + (f": {document['ca']}" if single else "")
    here = {"ca": str(document["ca_id"]), "tenant": str(document["tenant"])} if single else {}
    json_link = link(prefix, **here, view="unpublished", limit=q.limit, format="json")
    parts = [
        f"<h1>{escape(title)}</h1>",
        f'<nav><a href="{escape(prefix)}">Status page</a>'
        f'<a id="json" href="{escape(json_link)}">JSON</a></nav>',
    ]
    if not checked:
        parts.append('<p id="message">No CRL of this CA has been read yet.</p>')
    else:
        parts.append(
            f'<p id="summary"><strong>{document["unpublished"]}</strong> certificates were '
            "revoked in Intune more than crl.publication_grace ago, have not expired, and are "
            "missing from the CRL they name: every relying party (RADIUS, VPN) still accepts "
            f"them. Listed: {len(rows)}, oldest revocation first.</p>"
        )
        body = "".join(
            "<tr>"
            + ("" if single else f"<td>{escape(ca.label)}</td>")
            + f"<td><code>{escape(row.serial)}</code></td><td><code>{_cell(row.thumbprint)}</code></td>"
            f"<td><code>{_cell(row.device_id)}</code></td>"
            f'<td class="when">{escape(format_time(row.revoked_at))}</td>'
            f"<td><code>{_cell(row.crl_url)}</code></td></tr>"
            for _, ca, row in rows
        )
        head = "" if single else "<th>CA</th>"
        parts.append(
            f'<table id="unpublished"><thead><tr>{head}<th>serial number</th><th>thumbprint</th>'
            "<th>device id</th><th>revoked (UTC)</th><th>CRL</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} - pki-exporter</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{''.join(parts)}\n</body></html>\n"
    )
    return Answer(200, page.encode(), HTML)
