"""The status page: what a person opening the exporter in a browser wants to see first."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from pki_exporter import __version__
from pki_exporter.runtime import clock
from pki_exporter.state import Store
from pki_exporter.web.drilldown import link


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return ""
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f" ({seconds:.0f}s ago)"
    if seconds < 7200:
        return f" ({seconds / 60:.0f}m ago)"
    return f" ({seconds / 3600:.1f}h ago)"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} .ok{color:#1a7f37} .bad{color:#b42318;font-weight:600} .num{text-align:right}
code{background:#f6f6f6;padding:0 .2em}
"""


def status_page(
    store: Store,
    telemetry_path: str,
    interval: float,
    *,
    prefix: str = "/",
    windows: tuple[int, ...] = (),
) -> str:
    """The whole page as HTML; every value from Graph is escaped.

    ``prefix`` is the path of ``--web.external-url``: links are written under it, so that
    they work behind a reverse proxy that serves the exporter under a path.
    """
    now = clock.now()
    window = windows[0] if windows else None
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
            f"<td class=num>{requests}</td><td>{escape(tenant.last_error or '')}</td></tr>"
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
            earliest = (
                _when(snap.leaves.earliest_expiry) if snap and snap.leaves.earliest_expiry else "-"
            )
            devices = sum(snap.devices.devices.values()) if snap else 0
            if window is None:
                at_risk = "-"
            else:
                count = snap.devices.at_risk(window) if snap else 0
                href = link(prefix, ca=ca.ca_id, tenant=tenant.name, within_days=window)
                at_risk = f'<a class="drilldown" href="{escape(href)}">{count if snap else "-"}</a>'
            rows_cas.append(
                f"<tr><td>{escape(tenant.name)}</td><td>{escape(ca.label)}<br><code>{escape(ca.ca_id)}</code></td>"
                f"<td>{escape(snap.info.status) if snap else '-'}</td><td>{result}</td>"
                f"<td>{_when(snap.read_at if snap else None)}{_ago(snap.read_at if snap else None, now)}</td>"
                f"<td class=num>{'' if ca.last_duration is None else f'{ca.last_duration:.2f}s'}</td>"
                f"<td class=num>{total}</td><td class=num>{active}</td><td class=num>{invalid}</td>"
                f"<td>{earliest}</td><td class=num>{devices}</td><td class=num>{at_risk}</td>"
                f"<td>{escape(ca.last_error or '')}</td></tr>"
            )
    refresh = "on every scrape" if interval == 0 else f"every {interval:g}s"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pki-exporter</title><style>{_STYLE}</style></head>
<body>
<h1>pki-exporter</h1>
<p>Intune Cloud PKI exporter {escape(__version__)}. Data is read from Microsoft Graph {refresh}.
Metrics: <a id="metrics" href="{escape(prefix + telemetry_path.lstrip("/"))}">{escape(telemetry_path)}</a> ·
<a href="{escape(prefix)}ready">/ready</a> · <a href="{escape(prefix)}healthz">/healthz</a></p>
<h2>Tenants</h2>
<table id="tenants"><tr><th>tenant</th><th>state</th><th>CAs</th><th>Graph requests</th><th>last error</th></tr>
{"".join(rows_tenants)}</table>
<h2>Certification authorities</h2>
<table id="cas"><tr><th>tenant</th><th>CA</th><th>CA status</th><th>last refresh</th><th>data read at</th>
<th>duration</th><th>certificates</th><th>active</th><th>invalid</th><th>earliest active expiry</th>
<th>devices</th><th>devices at risk{f" ({window} days)" if window else ""}</th><th>last error</th></tr>
{"".join(rows_cas)}</table>
<p>Devices at risk: devices whose latest-ending active certificate ends within the window,
that is, devices that did not renew. Follow the number for the list of them.</p>
</body></html>
"""
