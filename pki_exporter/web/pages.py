"""The status page: what a person opening the exporter in a browser wants to see first."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import escape

from pki_exporter import __version__
from pki_exporter.runtime import clock
from pki_exporter.state import Store
from pki_exporter.web.drilldown import link, relative


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _date(ts: float) -> str:
    """Minutes are enough at a glance; the title holds the seconds (all times are UTC)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _at(ts: float | None, now: float, css: str = "") -> str:
    """An absolute time on one line and the relative one beside it (``in 3 h``)."""
    if ts is None:
        return '<span class="muted">-</span>'
    cls = f' class="{css}"' if css else ""
    return (
        f'<span{cls} title="{_when(ts)}"><span class="when">{_date(ts)}</span> '
        f'<span class="rel">{escape(relative(ts - now))}</span></span>'
    )


def _urgency(ts: float | None, now: float, soon: float) -> str:
    """The colour of a point in time: past or within a day red, within ``soon`` amber."""
    if ts is None:
        return ""
    if ts - now < 86400:
        return "bad"
    return "warn" if ts - now < soon else ""


_HTTP_ERROR = re.compile(r"HTTP (\d{3}) (.*?)(?: \(request-id [^)]*\))?$", re.DOTALL)
_NESTED_MESSAGE = re.compile(r'"[Mm]essage"\s*:\s*"((?:[^"\\]|\\.)*)')


def short_error(text: str) -> str:
    """A refresh error as one readable line: the HTTP status, Graph's code and message (the
    message out of the JSON that Intune nests in it), without request ids."""
    line = " ".join(text.split())
    match = _HTTP_ERROR.search(line)
    if match:
        status, detail = match.groups()
        nested = _NESTED_MESSAGE.search(detail)
        if nested:
            code = detail.split(":", 1)[0] if ":" in detail else ""
            message = nested.group(1).split(" - Operation ID", 1)[0]
            detail = f"{code}: {message}" if code and "{" not in code else message
        line = f"HTTP {status} {detail}"
    return line if len(line) <= 160 else line[:157] + "..."


def _error_line(text: str | None) -> str:
    """The last error under the refresh it belongs to: one line, the full text on hover."""
    if not text:
        return ""
    return (
        f'<div class="oneline bad error" title="{escape(text)}">{escape(short_error(text))}</div>'
    )


def _error_cell(text: str | None) -> str:
    if not text:
        return "<td></td>"
    return (
        f'<td class="error"><div class="oneline bad" title="{escape(text)}">'
        f"{escape(short_error(text))}</div></td>"
    )


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;font-size:14px}
table{border-collapse:collapse;margin-bottom:1.5em;max-width:100%}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3} .ok{color:#1a7f37} .bad{color:#b42318;font-weight:600}
.warn{color:#b54708;font-weight:600} .num{text-align:right} .muted{color:#666}
code{background:#f6f6f6;padding:0 .2em} .id{font-size:.78em;white-space:nowrap}
.when{white-space:nowrap} .rel{white-space:nowrap;font-size:.9em}
.oneline{max-width:16em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
tr.failed td:first-child,tr.expired td:first-child{box-shadow:inset 4px 0 #b42318}
"""


def _crl_table(store: Store, now: float, prefix: str, drilldown: bool) -> str:
    """Revocation (CRL): each CRL a CA's certificates name, its time left, entries, last
    error, and the CA's revocations missing from it. Empty when no CRL is read."""
    rows = []
    for tenant in store.tenants.values():
        for ca in tenant.cas.values():
            count = ca.coverage.unpublished
            unpublished = str(count)
            if drilldown:
                href = link(prefix, ca=ca.ca_id, tenant=tenant.name, view="unpublished")
                unpublished = f'<a class="{"bad " if count else ""}drilldown" href="{escape(href)}">{count}</a>'
            for n, (url, crl) in enumerate(sorted(ca.crls.items())):
                info = crl.info
                if not crl.attempted:
                    result = "pending"
                elif crl.success:
                    result = '<span class="ok">ok</span>'
                else:
                    result = '<span class="bad">failed</span>'
                nxt = info.next_update if info else None
                # a healthy CRL has more than 3.5 days left (Cloud PKI republishes then)
                urgency = "bad" if nxt is not None and nxt - now < 86400 else ""
                urgency = urgency or ("warn" if nxt is not None and nxt - now < 3 * 86400 else "")
                first = n == 0
                rows.append(
                    f'<tr data-ca-id="{escape(ca.ca_id)}"><td>{escape(ca.label) if first else ""}</td>'
                    f'<td><code class="id">{escape(url)}</code></td><td>{result}</td>'
                    f'<td class="next-update">{_at(nxt, now, urgency)}</td>'
                    f"<td class=num>{info.entries if info else '-'}</td>"
                    f"<td class=num>{info.size if info else '-'}</td>"
                    f"{_error_cell(crl.last_error)}"
                    f"<td class=num>{unpublished if first else ''}</td></tr>"
                )
    if not rows:
        return ""
    return (
        "<h2>Revocation (CRLs)</h2>\n"
        '<table id="crls"><tr><th>CA</th><th>CRL</th><th>last read</th><th>next update (UTC)</th>'
        "<th>entries</th><th>bytes</th><th>last error</th><th>unpublished revocations</th></tr>\n"
        + "".join(rows)
        + "</table>\n"
    )


def status_page(
    store: Store,
    telemetry_path: str,
    interval: float,
    *,
    prefix: str = "/",
    windows: tuple[int, ...] = (),
    drilldown: bool = True,
) -> str:
    """The whole page as HTML; every value from Graph is escaped.

    ``prefix`` is the path of ``--web.external-url``: links are written under it, so that
    they work behind a reverse proxy that serves the exporter under a path.
    """
    now = clock.now()
    window = windows[0] if windows else None
    soon = (window or 7) * 86400.0
    several = len(store.tenants) > 1
    rows_tenants: list[str] = []
    rows_cas: list[str] = []
    for tenant in store.tenants.values():
        state = (
            '<span class="ok">up</span>'
            if tenant.up
            else ('<span class="bad">down</span>' if tenant.attempted else "pending")
        )
        requests = sum(tenant.graph_requests.values())
        rows_tenants.append(
            f"<tr><td>{escape(tenant.name)}</td><td>{state}</td><td class=num>{len(tenant.cas)}</td>"
            f"<td class=num>{requests}</td>{_error_cell(tenant.last_error)}</tr>"
        )
        for ca in tenant.cas.values():
            snap = ca.snapshot
            if not ca.attempted:
                result = "pending"
            elif ca.last_success:
                result = '<span class="ok">ok</span>'
            else:
                result = '<span class="bad">failed</span>'
            counts = snap.leaves.counts if snap else {}
            active = sum(n for (status, _), n in counts.items() if status == "active")
            total = snap.leaves.total if snap else 0
            invalid = snap.leaves.invalid if snap else 0
            earliest = snap.leaves.earliest_expiry if snap else None
            ca_expiry = snap.info.expiry if snap else None
            expired = ca_expiry is not None and ca_expiry <= now
            ca_status = escape(snap.info.status) if snap else "-"
            if expired or (snap and snap.info.status == "expired"):
                ca_status = f'<span class="bad">{ca_status}</span>'
            devices = sum(snap.devices.devices.values()) if snap else 0
            if window is None:
                at_risk = "-"
            elif not drilldown or snap is None:
                at_risk = str(snap.devices.at_risk(window)) if snap else "-"
            else:
                count = snap.devices.at_risk(window)
                href = link(prefix, ca=ca.ca_id, tenant=tenant.name, within_days=window)
                css = "drilldown warn" if count else "drilldown"
                at_risk = f'<a class="{css}" href="{escape(href)}">{count}</a>'
            classes = [
                c
                for c in (
                    "failed" if ca.attempted and not ca.last_success else "",
                    "expired" if expired else "",
                )
                if c
            ]
            row_class = f' class="{" ".join(classes)}"' if classes else ""
            duration = "" if ca.last_duration is None else f" in {ca.last_duration:.2f}s"
            tenant_cell = f"<td>{escape(tenant.name)}</td>" if several else ""
            rows_cas.append(
                f'<tr{row_class} data-ca-id="{escape(ca.ca_id)}">{tenant_cell}'
                f'<td>{escape(ca.label)}<br><code class="id">{escape(ca.ca_id)}</code></td>'
                f"<td>{ca_status}</td>"
                f'<td class="ca-expiry">{_at(ca_expiry, now, _urgency(ca_expiry, now, 90 * 86400.0))}</td>'
                f'<td class="refresh">{result}{duration}<br><span class="muted">read</span> '
                f"{_at(snap.read_at if snap else None, now)}{_error_line(ca.last_error)}</td>"
                f"<td class=num>{total}</td><td class=num>{active}</td>"
                f'<td class="num{" bad" if invalid else ""}">{invalid}</td>'
                f'<td class="earliest">{_at(earliest, now, _urgency(earliest, now, soon))}</td>'
                f"<td class=num>{devices}</td><td class=num>{at_risk}</td></tr>"
            )
    refresh = "on every scrape" if interval == 0 else f"every {interval:g}s"
    every = (
        f' · <a id="at-risk" href="{escape(link(prefix, within_days=window))}">every device at risk</a>'
        if drilldown and window is not None
        else ""
    )
    tenant_head = "<th>tenant</th>" if several else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>pki-exporter</title><style>{_STYLE}</style></head>
<body>
<h1>pki-exporter</h1>
<p>Intune Cloud PKI exporter {escape(__version__)}. Data is read from Microsoft Graph {refresh}.
Now: <span class="when">{_date(now)}</span>.
Metrics: <a id="metrics" href="{escape(prefix + telemetry_path.lstrip("/"))}">{escape(telemetry_path)}</a> ·
<a href="{escape(prefix)}ready">/ready</a> · <a href="{escape(prefix)}healthz">/healthz</a>{every}</p>
<h2>Tenants</h2>
<table id="tenants"><tr><th>tenant</th><th>state</th><th>CAs</th><th>Graph requests</th><th>last error</th></tr>
{"".join(rows_tenants)}</table>
<h2>Certification authorities</h2>
<table id="cas"><tr>{tenant_head}<th>CA</th><th>status</th><th>CA expires (UTC)</th><th>last refresh (UTC)</th>
<th>certificates</th><th>active</th><th>invalid</th><th>earliest active expiry (UTC)</th>
<th>devices</th><th>at risk{f" ({window} d)" if window else ""}</th></tr>
{"".join(rows_cas)}</table>
{_crl_table(store, now, prefix, drilldown)}<p>Devices at risk: devices whose latest-ending active certificate ends within the window,
that is, devices that did not renew. Follow the number for the list of them. Red: expired,
failed or due within a day; amber: due within {window or 7} days (a CA: within 90 days).
Hover over an error for its full text.</p>
</body></html>
"""
