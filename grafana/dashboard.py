#!/usr/bin/env python3
"""The Grafana dashboard, as code: grafana/pki-exporter.json is generated from this file.

    make dashboard                       # rewrite grafana/pki-exporter.json (and the ConfigMap)
    python grafana/dashboard.py --check  # exit 1 if the JSON is stale

Written with grafana-foundation-sdk, Grafana's typed builders: panel types, options, units
and enums are checked by the types (and by mypy); tests/test_dashboard.py checks what
they cannot (every query filtered by the dashboard's variables, counters read with
rate(...[$__rate_interval]), every metric one the exporter defines) and
tests/test_prometheus_e2e.py runs every query against a real Prometheus. Edit here, then
`make dashboard`; the committed JSON is what users import.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import bargauge, prometheus, statetimeline
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import stat as stat_panel
from grafana_foundation_sdk.builders import table as table_panel
from grafana_foundation_sdk.builders import timeseries as timeseries_panel
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prom_model

OUTPUT = Path(__file__).resolve().parent / "pki-exporter.json"
UID = "intune-cloudpki"
#: Grafana 10.3's: the dashboard imports unchanged into Grafana 10 and 11 (the SDK says 41).
SCHEMA_VERSION = 39
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: (color, lower bound) of each threshold step; None is the base step.
Steps = list[tuple[str, float | None]]
GREEN: Steps = [("green", None)]
#: Days left on the earliest leaf certificate: the alerting windows (7, 30) and 90.
EXPIRY_DAYS: Steps = [("red", None), ("orange", 7), ("yellow", 30), ("green", 90)]
DAY = 86400


# ------------------------------------------------------------------------------ helpers


def threshold_steps(steps: Steps) -> builders.ThresholdsConfig:
    """Absolute thresholds: (color, lower bound) in order."""
    return (
        builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for color, value in steps])
    )


def query(ref_id: str, expr: str, legend: str = "__auto") -> prometheus.Dataquery:
    """A range query (the panel's time series)."""
    return (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .expr(expr)
        .ref_id(ref_id)
        .legend_format(legend)
        .range()
        .format(prom_model.PromQueryFormat.TIME_SERIES)
    )


def instant(
    ref_id: str, expr: str, legend: str = "__auto", *, table: bool = True
) -> prometheus.Dataquery:
    """An instant query: one value per series (a table row, a bar)."""
    return (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .expr(expr)
        .ref_id(ref_id)
        .legend_format(legend)
        .instant()
        .format(
            prom_model.PromQueryFormat.TABLE if table else prom_model.PromQueryFormat.TIME_SERIES
        )
    )


def value_mappings(texts: dict[str, tuple[str, str]]) -> list[model.ValueMapping]:
    """Exact values -> (text, color), in order."""
    return [
        model.ValueMap(
            options={
                value: model.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(texts.items())
            }
        )
    ]


COLOR_TEXT = model.DynamicConfigValue(
    id_val="custom.cellOptions", value=common.TableColorTextCellOptions()
)


PanelBuilder = TypeVar("PanelBuilder")


def _common(
    panel: PanelBuilder,
    panel_id: int,
    title: str,
    description: str,
    grid: tuple[int, int, int, int],
    unit: str,
) -> PanelBuilder:
    """What every panel has: id, title, description, the datasource variable, place, unit."""
    x, y, w, h = grid
    builder: Any = panel  # every panel builder has these methods; they share no base class
    builder.id(panel_id).title(title).description(description).datasource(DATASOURCE)
    builder.grid_pos(model.GridPos(x=x, y=y, w=w, h=h)).unit(unit)
    return panel


def row(panel_id: int, title: str, *, y: int) -> builders.Row:
    return (
        builders.Row(title)
        .id(panel_id)
        .collapsed(False)
        .grid_pos(model.GridPos(x=0, y=y, w=24, h=1))
    )


def stat(
    panel_id: int,
    title: str,
    description: str,
    *,
    grid: tuple[int, int, int, int],
    unit: str,
    targets: list[Builder[Dataquery]],
    thresholds: Steps = GREEN,
    decimals: int | None = None,
) -> stat_panel.Panel:
    panel = (
        _common(stat_panel.Panel(), panel_id, title, description, grid, unit)
        .targets(targets)
        .thresholds(threshold_steps(thresholds))
        .color_scheme(builders.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .mappings([])
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
        )
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .text_mode(common.BigValueTextMode.AUTO)
    )
    if decimals is not None:
        panel.decimals(decimals)
    return panel


def timeseries(
    panel_id: int,
    title: str,
    description: str,
    *,
    grid: tuple[int, int, int, int],
    unit: str,
    targets: list[Builder[Dataquery]],
    bars: bool = False,
    stacked: bool = False,
    max_val: float | None = None,
) -> timeseries_panel.Panel:
    panel = (
        _common(timeseries_panel.Panel(), panel_id, title, description, grid, unit)
        .targets(targets)
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(80 if bars else 10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common_builders.StackingConfig()
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
            .group("A")
        )
        .color_scheme(builders.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
        .thresholds(threshold_steps(GREEN))
        .min(0)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if max_val is not None:
        panel.max(max_val)
    return panel


def state_timeline(
    panel_id: int,
    title: str,
    description: str,
    *,
    grid: tuple[int, int, int, int],
    unit: str,
    targets: list[Builder[Dataquery]],
    thresholds: Steps,
    mappings: list[model.ValueMapping],
) -> statetimeline.Panel:
    return (
        _common(statetimeline.Panel(), panel_id, title, description, grid, unit)
        .targets(targets)
        .mappings(mappings)
        .color_scheme(builders.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .thresholds(threshold_steps(thresholds))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.SINGLE)
            .sort(common.SortOrder.NONE)
        )
    )


def bar_gauge(
    panel_id: int,
    title: str,
    description: str,
    *,
    grid: tuple[int, int, int, int],
    unit: str,
    targets: list[Builder[Dataquery]],
    thresholds: Steps,
) -> bargauge.Panel:
    return (
        _common(bargauge.Panel(), panel_id, title, description, grid, unit)
        .targets(targets)
        .min(0)
        .color_scheme(builders.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .thresholds(threshold_steps(thresholds))
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .orientation(common.VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
        )
    )


def table(
    panel_id: int,
    title: str,
    description: str,
    *,
    grid: tuple[int, int, int, int],
    unit: str,
    targets: list[Builder[Dataquery]],
    columns: list[tuple[str, str]],
    hidden: list[str],
    overrides: dict[str, list[model.DynamicConfigValue]] | None = None,
    sort_by: str | None = None,
) -> table_panel.Panel:
    """Instant queries merged into one row per series: `columns` (field, shown as) in order,
    `hidden` fields dropped, `overrides` per shown column."""
    panel = (
        _common(table_panel.Panel(), panel_id, title, description, grid, unit)
        .targets(targets)
        .align(common.FieldTextAlignment.AUTO)
        .cell_options(common.TableAutoCellOptions())
        .thresholds(threshold_steps(GREEN))
        .color_scheme(builders.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(common_builders.TableFooterOptions().show(False).reducer(["sum"]))
        .transformations(
            [
                model.DataTransformerConfig(id_val="merge", options={}),
                model.DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": dict.fromkeys(hidden, True),
                        "indexByName": {name: index for index, (name, _) in enumerate(columns)},
                        "renameByName": dict(columns),
                    },
                ),
            ]
        )
    )
    for name, properties in (overrides or {}).items():
        panel.override_by_name(name, properties)
    if sort_by is not None:
        panel.sort_by([common_builders.TableSortByFieldState().display_name(sort_by).desc(False)])
    return panel


# ------------------------------------------------------------------------------ overrides

UP_DOWN = {"0": ("down", "red"), "1": ("up", "green")}

#: Devices at risk per CA: each CA links to the exporter's drill-down of its devices at risk.
DEVICES_AT_RISK_OVERRIDES = {
    "CA": [
        model.DynamicConfigValue(
            id_val="links",
            value=[
                {
                    "title": "Devices at risk (exporter drill-down)",
                    "url": "${__data.fields.external_url}certificates?ca=${__data.fields.ca_id}"
                    "&tenant=${__data.fields.tenant}&within_days=7",
                    "targetBlank": True,
                }
            ],
        )
    ]
}

#: Certification authorities: status colored, expiry in days with the alerting thresholds.
CA_TABLE_OVERRIDES = {
    "Status": [
        model.DynamicConfigValue(
            id_val="mappings",
            value=[
                model.ValueMap(
                    options={
                        "active": model.ValueMappingResult(text="active", color="green", index=0)
                    }
                ),
                model.RegexMap(
                    options=model.DashboardRegexMapOptions(
                        pattern=".+", result=model.ValueMappingResult(color="red", index=1)
                    )
                ),
            ],
        ),
        COLOR_TEXT,
    ],
    "Earliest leaf expiry": [
        model.DynamicConfigValue(id_val="unit", value="d"),
        model.DynamicConfigValue(id_val="decimals", value=1),
        model.DynamicConfigValue(id_val="thresholds", value=threshold_steps(EXPIRY_DAYS).build()),
        COLOR_TEXT,
    ],
    "CA certificate expiry": [model.DynamicConfigValue(id_val="unit", value="dateTimeAsIso")],
    "Last successful refresh": [model.DynamicConfigValue(id_val="unit", value="dateTimeFromNow")],
}

#: CRLs: time left with the revocation alerts' thresholds, sizes in bytes, read as ok/failed.
CRL_TABLE_OVERRIDES = {
    "Time left": [
        model.DynamicConfigValue(id_val="unit", value="s"),
        model.DynamicConfigValue(
            id_val="thresholds",
            value=threshold_steps(
                [("red", None), ("orange", 1 * DAY), ("yellow", 3 * DAY), ("green", 3.5 * DAY)]
            ).build(),
        ),
        COLOR_TEXT,
    ],
    "Size": [model.DynamicConfigValue(id_val="unit", value="bytes")],
    "Published": [model.DynamicConfigValue(id_val="unit", value="dateTimeFromNow")],
    "Last read": [
        model.DynamicConfigValue(
            id_val="mappings", value=value_mappings({"0": ("failed", "red"), "1": ("ok", "green")})
        ),
        COLOR_TEXT,
    ],
}

#: Exporter instances: Prometheus' `up`, as up/down.
INSTANCES_OVERRIDES = {
    "Scrape": [
        model.DynamicConfigValue(id_val="mappings", value=value_mappings(UP_DOWN)),
        COLOR_TEXT,
    ]
}


# ------------------------------------------------------------------------------ panels

PANELS: list[Builder[Any]] = [
    row(1, "Overview", y=0),
    stat(
        2,
        "Active certificates",
        "Leaf certificates whose Graph status is active, summed over the selected CAs. Read from Graph every refresh.interval, not at scrape time.",
        grid=(0, 1, 3, 4),
        unit="short",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_leaf_certificates{status="active", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
    ),
    stat(
        3,
        "CAs monitored",
        "Certification authorities the exporter reads (one intune_cloudpki_ca_info series each).",
        grid=(3, 1, 3, 4),
        unit="short",
        targets=[
            query(
                "A",
                'count(intune_cloudpki_ca_info{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
    ),
    stat(
        4,
        "Earliest leaf expiry",
        "Days until the earliest end of validity among active, unexpired leaf certificates of the selected CAs. Red under 7 days, orange under 30, yellow under 90. Retired devices let certificates lapse, so a low value alone is not an incident: compare with the expiring counts.",
        grid=(6, 1, 3, 4),
        unit="d",
        targets=[
            query(
                "A",
                'min(intune_cloudpki_leaf_certificate_earliest_expiry_days{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
        decimals=1,
        thresholds=EXPIRY_DAYS,
    ),
    stat(
        5,
        "Expiring within 7 days",
        'Active certificates that end within the next 7 days, renewed devices\' old certificates included: see "Devices that did not renew" for the devices at risk.',
        grid=(9, 1, 3, 4),
        unit="short",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_leaf_certificates_expiring{within_days="7", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
    ),
    stat(
        6,
        "Expiring within 30 days",
        "Active certificates that end within the next 30 days.",
        grid=(12, 1, 3, 4),
        unit="short",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_leaf_certificates_expiring{within_days="30", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
    ),
    stat(
        7,
        "CA certificates expiring within a year",
        "Selected CAs whose own certificate ends within 365 days. Renewing a CA takes planning: every leaf certificate it issued stops working when it expires.",
        grid=(15, 1, 3, 4),
        unit="short",
        targets=[
            query(
                "A",
                'count((intune_cloudpki_ca_certificate_expiry_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"} - time()) < 365 * 86400) or vector(0)',
            ),
        ],
        thresholds=[("green", None), ("orange", 1)],
    ),
    stat(
        8,
        "CA refresh health",
        "Share of the selected CAs whose last refresh from Graph succeeded (intune_cloudpki_refresh_success).",
        grid=(18, 1, 3, 4),
        unit="percentunit",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_refresh_success{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) / count(intune_cloudpki_refresh_success{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
        thresholds=[("red", None), ("orange", 0.5), ("green", 1)],
    ),
    stat(
        9,
        "Tenants up",
        "Share of the selected tenants for which the last token request and CA discovery succeeded (intune_cloudpki_tenant_up).",
        grid=(21, 1, 3, 4),
        unit="percentunit",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_tenant_up{job=~"$job", instance=~"$instance", tenant=~"$tenant"}) / count(intune_cloudpki_tenant_up{job=~"$job", instance=~"$instance", tenant=~"$tenant"})',
            ),
        ],
        thresholds=[("red", None), ("orange", 0.5), ("green", 1)],
    ),
    row(28, "Devices and renewal", y=5),
    stat(
        29,
        "Devices",
        "Distinct devices (deviceId) holding at least one active, unexpired certificate of the selected CAs. A device renewed keeps counting once.",
        grid=(0, 6, 3, 4),
        unit="short",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_devices{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
    ),
    stat(
        30,
        "Devices that did not renew (7 days)",
        "Devices whose latest-ending active certificate ends within 7 days: they have no newer certificate and lose access when it expires. The table beside it links to the list of them.",
        grid=(3, 6, 3, 4),
        unit="short",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_devices_expiring{within_days="7", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
        thresholds=[("green", None), ("orange", 1)],
    ),
    stat(
        31,
        "Renewal failing share (7 days)",
        "Of the devices with a certificate ending within 7 days, the share without a newer one. Retired devices keep it above 0; above 50 % (and at least 5 devices) alert IntuneCloudPKIRenewalFailing fires.",
        grid=(6, 6, 3, 4),
        unit="percentunit",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_devices_expiring{within_days="7", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) / sum(intune_cloudpki_devices_renewal_due{within_days="7", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
        thresholds=[("green", None), ("orange", 0.25), ("red", 0.5)],
    ),
    stat(
        32,
        "Certificates without a device",
        "Valid leaf certificates whose deviceId is null, missing or empty, whatever their status: they count in no device figure.",
        grid=(9, 6, 3, 4),
        unit="short",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_leaf_certificates_without_device{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
    ),
    timeseries(
        33,
        "Devices that did not renew",
        "Devices whose latest-ending active certificate ends within each configured window (expiry_windows_days), beside the devices with any certificate ending in the 7-day window. Renewed devices leave the first line; a line that keeps rising is renewal failing.",
        grid=(0, 10, 12, 8),
        unit="short",
        targets=[
            query(
                "A",
                'sum by (within_days) (intune_cloudpki_devices_expiring{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="did not renew, within {{within_days}} days",
            ),
            query(
                "B",
                'sum(intune_cloudpki_devices_renewal_due{within_days="7", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="renewal due within 7 days",
            ),
        ],
    ),
    table(
        34,
        "Devices at risk per CA",
        "Per CA: its devices, those whose latest certificate ends within 7 days (did not renew) and those with any certificate ending then (renewal due). Click a CA for the exporter's list of the devices at risk (/certificates, under the URL given by --web.external-url).",
        grid=(12, 6, 12, 12),
        unit="short",
        targets=[
            instant(
                "A",
                'max by (tenant, ca, ca_id, external_url) (sum without (platform) (intune_cloudpki_devices{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) * on (job, instance) group_left (external_url) intune_cloudpki_exporter_web_info{job=~"$job", instance=~"$instance"})',
            ),
            instant(
                "B",
                'max by (tenant, ca, ca_id, external_url) (sum without (platform, within_days) (intune_cloudpki_devices_expiring{within_days="7", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) * on (job, instance) group_left (external_url) intune_cloudpki_exporter_web_info{job=~"$job", instance=~"$instance"})',
            ),
            instant(
                "C",
                'max by (tenant, ca, ca_id, external_url) (sum without (platform, within_days) (intune_cloudpki_devices_renewal_due{within_days="7", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) * on (job, instance) group_left (external_url) intune_cloudpki_exporter_web_info{job=~"$job", instance=~"$instance"})',
            ),
        ],
        columns=[
            ("tenant", "Tenant"),
            ("ca", "CA"),
            ("Value #A", "Devices"),
            ("Value #B", "Did not renew (7 d)"),
            ("Value #C", "Renewal due (7 d)"),
        ],
        hidden=["Time", "ca_id", "external_url"],
        overrides=DEVICES_AT_RISK_OVERRIDES,
    ),
    row(10, "Per certification authority", y=18),
    table(
        11,
        "Certification authorities",
        "One row per CA: its status and type from Graph, its leaf certificates by status, the earliest end of validity among its active certificates, the end of its own certificate, and when the exporter last read it successfully.",
        grid=(0, 19, 24, 8),
        unit="short",
        targets=[
            instant(
                "A",
                'max by (tenant, ca, status, type) (intune_cloudpki_ca_info{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
            instant(
                "B",
                'sum by (tenant, ca) (intune_cloudpki_leaf_certificates{status="active", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
            instant(
                "C",
                'sum by (tenant, ca) (intune_cloudpki_leaf_certificates{status="revoked", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
            instant(
                "D",
                'sum by (tenant, ca) (intune_cloudpki_leaf_certificates{status="expired", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
            instant(
                "E",
                'min by (tenant, ca) (intune_cloudpki_leaf_certificate_earliest_expiry_days{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
            instant(
                "F",
                'max by (tenant, ca) (intune_cloudpki_ca_certificate_expiry_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) * 1000',
            ),
            instant(
                "G",
                'max by (tenant, ca) (intune_cloudpki_refresh_last_success_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) * 1000',
            ),
        ],
        columns=[
            ("tenant", "Tenant"),
            ("ca", "CA"),
            ("status", "Status"),
            ("type", "Type"),
            ("Value #B", "Active"),
            ("Value #C", "Revoked"),
            ("Value #D", "Expired"),
            ("Value #E", "Earliest leaf expiry"),
            ("Value #F", "CA certificate expiry"),
            ("Value #G", "Last successful refresh"),
        ],
        hidden=["Time", "Value #A"],
        overrides=CA_TABLE_OVERRIDES,
        sort_by="Earliest leaf expiry",
    ),
    row(35, "Revocation", y=27),
    stat(
        36,
        "Revocations missing from the CRL",
        "Certificates revoked in Intune more than crl.publication_grace ago, not yet expired, whose serial number is not on the CRL they name: every RADIUS server and VPN gateway still accepts them (alert IntuneCloudPKIRevocationsUnpublished). The exporter's drill-down lists them.",
        grid=(0, 28, 6, 8),
        unit="short",
        targets=[
            query(
                "A",
                'sum(intune_cloudpki_leaf_certificates_revoked_unpublished{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
        thresholds=[("green", None), ("red", 1)],
    ),
    stat(
        37,
        "Shortest CRL time left",
        "Time until the first of the selected CRLs passes its nextUpdate. Cloud PKI republishes every 3.5 days, so a healthy CRL keeps more than 3.5 days; under 3 days a publication was missed, and when it reaches 0 relying parties refuse every certificate of the CA.",
        grid=(6, 28, 6, 8),
        unit="s",
        targets=[
            query(
                "A",
                'min(intune_cloudpki_crl_next_update_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) - time()',
            ),
        ],
        thresholds=[("red", None), ("orange", 1 * DAY), ("yellow", 3 * DAY), ("green", 3.5 * DAY)],
    ),
    table(
        38,
        "CRLs",
        "Every CRL the CAs' certificates name (a renewed CA keeps its older version's CRL): time left to nextUpdate, entries, size as served, when it was published (thisUpdate), and whether the exporter's last read gave a CRL that verifies against the CA.",
        grid=(12, 28, 12, 8),
        unit="short",
        targets=[
            instant(
                "A",
                'max by (tenant, ca, url) (intune_cloudpki_crl_next_update_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) - time()',
            ),
            instant(
                "B",
                'max by (tenant, ca, url) (intune_cloudpki_crl_revoked_certificates{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
            instant(
                "C",
                'max by (tenant, ca, url) (intune_cloudpki_crl_size_bytes{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
            instant(
                "D",
                'max by (tenant, ca, url) (intune_cloudpki_crl_last_update_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) * 1000',
            ),
            instant(
                "E",
                'min by (tenant, ca, url) (intune_cloudpki_crl_fetch_success{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
            ),
        ],
        columns=[
            ("tenant", "Tenant"),
            ("ca", "CA"),
            ("url", "CRL"),
            ("Value #A", "Time left"),
            ("Value #B", "Entries"),
            ("Value #C", "Size"),
            ("Value #D", "Published"),
            ("Value #E", "Last read"),
        ],
        hidden=["Time"],
        overrides=CRL_TABLE_OVERRIDES,
        sort_by="Time left",
    ),
    timeseries(
        39,
        "CRL time left",
        "Time until each CRL's nextUpdate. A healthy CRL saws between 7 and 3.5 days; a line that keeps falling past 3 days is a missed publication.",
        grid=(0, 36, 12, 8),
        unit="s",
        targets=[
            query(
                "A",
                'min by (tenant, ca, url) (intune_cloudpki_crl_next_update_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) - time()',
                legend="{{ca}} {{url}}",
            ),
        ],
    ),
    timeseries(
        40,
        "CRL read failures by reason",
        "Failed CRL reads per second by reason: network, timeout, http_4xx, http_5xx, too_large, invalid (not a CRL), signature (does not verify or another issuer), refused (host not in crl.allowed_hosts).",
        grid=(12, 36, 12, 8),
        unit="ops",
        targets=[
            query(
                "A",
                'sum by (reason) (rate(intune_cloudpki_crl_fetch_failures_total{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}[$__rate_interval]))',
                legend="{{reason}}",
            ),
        ],
        bars=True,
        stacked=True,
    ),
    row(12, "Certificates over time", y=44),
    timeseries(
        13,
        "Certificates by status",
        "Leaf certificates of the selected CAs by Graph status (active, revoked, expired, ...). Expired and revoked certificates stay in Graph's list.",
        grid=(0, 45, 12, 8),
        unit="short",
        targets=[
            query(
                "A",
                'sum by (status) (intune_cloudpki_leaf_certificates{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="{{status}}",
            ),
        ],
    ),
    timeseries(
        14,
        "Active certificates by platform",
        "Active leaf certificates of the selected CAs by device platform as reported by Graph (Unknown when Graph leaves it empty).",
        grid=(12, 45, 12, 8),
        unit="short",
        targets=[
            query(
                "A",
                'sum by (platform) (intune_cloudpki_leaf_certificates{status="active", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="{{platform}}",
            ),
        ],
    ),
    timeseries(
        15,
        "Certificates expiring",
        "Active certificates of the selected CAs ending within each configured window (expiry_windows_days). The 7-day line rising with the active count flat is renewal failing.",
        grid=(0, 53, 8, 8),
        unit="short",
        targets=[
            query(
                "A",
                'sum by (within_days) (intune_cloudpki_leaf_certificates_expiring{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="within {{within_days}} days",
            ),
        ],
    ),
    timeseries(
        16,
        "Time since the latest issuance",
        "Time since the newest validityStartDateTime of each CA. It grows steadily when issuance has stalled (alert IntuneCloudPKIIssuanceStalled).",
        grid=(8, 53, 8, 8),
        unit="s",
        targets=[
            query(
                "A",
                'time() - max by (tenant, ca) (intune_cloudpki_leaf_certificate_latest_issuance_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="{{tenant}} / {{ca}}",
            ),
        ],
    ),
    timeseries(
        17,
        "Revocations",
        "Certificates revoked per interval: the increase of the revoked count of each CA since the previous point (a drop, when Graph purges old revoked certificates, shows as 0).",
        grid=(16, 53, 8, 8),
        unit="short",
        targets=[
            query(
                "A",
                'clamp_min(sum by (tenant, ca) (intune_cloudpki_leaf_certificates{status="revoked", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) - sum by (tenant, ca) (intune_cloudpki_leaf_certificates{status="revoked", job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"} offset $__interval), 0)',
                legend="{{tenant}} / {{ca}}",
            ),
        ],
        bars=True,
    ),
    bar_gauge(
        18,
        "Time left on CA certificates",
        "Time until each CA's own certificate ends. Orange under 180 days and red under 30 days, as the alerts IntuneCloudPKICACertificateExpiringSoon and ...Critical.",
        grid=(0, 61, 24, 8),
        unit="s",
        targets=[
            instant(
                "A",
                'min by (tenant, ca) (intune_cloudpki_ca_certificate_expiry_timestamp_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}) - time()',
                legend="{{tenant}} / {{ca}}",
                table=False,
            ),
        ],
        thresholds=[("red", None), ("orange", 30 * DAY), ("green", 180 * DAY)],
    ),
    row(19, "Exporter health", y=69),
    state_timeline(
        20,
        "Refresh success per CA",
        "Whether the last refresh of each CA from Graph succeeded. A failed refresh keeps the previous figures in place.",
        grid=(0, 70, 12, 8),
        unit="none",
        targets=[
            query(
                "A",
                'min by (tenant, ca) (intune_cloudpki_refresh_success{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="{{tenant}} / {{ca}}",
            ),
        ],
        thresholds=[("red", None), ("green", 1)],
        mappings=value_mappings({"0": ("failed", "red"), "1": ("ok", "green")}),
    ),
    timeseries(
        21,
        "Refresh duration per CA",
        "How long the last refresh of each CA took (token, CA record and every page of leaf certificates).",
        grid=(12, 70, 12, 8),
        unit="s",
        targets=[
            query(
                "A",
                'max by (tenant, ca) (intune_cloudpki_refresh_duration_seconds{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="{{tenant}} / {{ca}}",
            ),
        ],
    ),
    timeseries(
        22,
        "Refresh failures by reason",
        "Failed refreshes per minute by reason (auth, throttled, http_4xx, http_5xx, timeout, network, invalid_response).",
        grid=(0, 78, 8, 8),
        unit="opm",
        targets=[
            query(
                "A",
                '60 * sum by (reason) (rate(intune_cloudpki_refresh_failures_total{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"}[$__rate_interval]))',
                legend="{{reason}}",
            ),
        ],
    ),
    timeseries(
        23,
        "Graph requests by status code",
        "Requests the exporter sent to Microsoft Graph per second, by HTTP status code.",
        grid=(8, 78, 8, 8),
        unit="reqps",
        targets=[
            query(
                "A",
                'sum by (code) (rate(intune_cloudpki_graph_requests_total{job=~"$job", instance=~"$instance", tenant=~"$tenant"}[$__rate_interval]))',
                legend="{{code}}",
            ),
        ],
        stacked=True,
    ),
    timeseries(
        24,
        "Graph throttling",
        "Share of the Graph requests of each tenant answered 429 Too Many Requests. The exporter backs off by itself; sustained throttling raises IntuneCloudPKIGraphThrottling.",
        grid=(16, 78, 8, 8),
        unit="percentunit",
        targets=[
            query(
                "A",
                '(sum by (tenant) (rate(intune_cloudpki_graph_requests_total{code="429", job=~"$job", instance=~"$instance", tenant=~"$tenant"}[$__rate_interval])) or 0 * sum by (tenant) (rate(intune_cloudpki_graph_requests_total{job=~"$job", instance=~"$instance", tenant=~"$tenant"}[$__rate_interval]))) / sum by (tenant) (rate(intune_cloudpki_graph_requests_total{job=~"$job", instance=~"$instance", tenant=~"$tenant"}[$__rate_interval]))',
                legend="{{tenant}}",
            ),
        ],
        max_val=1,
    ),
    state_timeline(
        25,
        "Tenant authentication and discovery",
        "Whether the last token request and CA discovery of each tenant succeeded (intune_cloudpki_tenant_up).",
        grid=(0, 86, 8, 8),
        unit="none",
        targets=[
            query(
                "A",
                'min by (tenant) (intune_cloudpki_tenant_up{job=~"$job", instance=~"$instance", tenant=~"$tenant"})',
                legend="{{tenant}}",
            ),
        ],
        thresholds=[("red", None), ("green", 1)],
        mappings=value_mappings(UP_DOWN),
    ),
    timeseries(
        26,
        "Invalid records",
        "Leaf certificate records of the last refresh that could not be read (bad dates, wrong types) and were left out of every figure.",
        grid=(8, 86, 8, 8),
        unit="short",
        targets=[
            query(
                "A",
                'sum by (tenant, ca) (intune_cloudpki_leaf_certificates_invalid{job=~"$job", instance=~"$instance", tenant=~"$tenant", ca=~"$ca"})',
                legend="{{tenant}} / {{ca}}",
            ),
        ],
    ),
    table(
        27,
        "Exporter instances",
        "Each scraped pki-exporter: its version and whether Prometheus' last scrape of it succeeded.",
        grid=(16, 86, 8, 8),
        unit="short",
        targets=[
            instant(
                "A",
                'max by (job, instance, version) (intune_cloudpki_exporter_build_info{job=~"$job", instance=~"$instance"})',
            ),
            instant("B", 'max by (job, instance) (up{job=~"$job", instance=~"$instance"})'),
        ],
        columns=[
            ("job", "Job"),
            ("instance", "Instance"),
            ("version", "Version"),
            ("Value #B", "Scrape"),
        ],
        hidden=["Time", "Value #A"],
        overrides=INSTANCES_OVERRIDES,
    ),
]


# ------------------------------------------------------------------------------ variables


def query_variable(name: str, label: str, query: str) -> builders.QueryVariable:
    """Multi-value with All (as `.+`), refreshed when the time range changes."""
    return (
        builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
        .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .options([])
        .regex("")
        .hide(model.VariableHide.DONT_HIDE)
    )


VARIABLES: list[Builder[model.VariableModel]] = [
    builders.DatasourceVariable("datasource")
    .label("Data source")
    .type("prometheus")
    .multi(False)
    .include_all(False)
    .regex("")
    .hide(model.VariableHide.DONT_HIDE),
    query_variable("job", "Job", "label_values(intune_cloudpki_exporter_build_info, job)"),
    query_variable(
        "instance",
        "Instance",
        'label_values(intune_cloudpki_exporter_build_info{job=~"$job"}, instance)',
    ),
    query_variable(
        "tenant",
        "Tenant",
        'label_values(intune_cloudpki_tenant_up{job=~"$job", instance=~"$instance"}, tenant)',
    ),
    query_variable(
        "ca",
        "CA",
        'label_values(intune_cloudpki_ca_info{job=~"$job", instance=~"$instance", tenant=~"$tenant"}, ca)',
    ),
]


# ------------------------------------------------------------------------------ dashboard


def build() -> builders.Dashboard:
    dash = (
        builders.Dashboard("Intune Cloud PKI")
        .uid(UID)
        .description(
            "Microsoft Intune Cloud PKI certificates and CAs, from pki-exporter. "
            "Alerts and thresholds: docs/dashboards-and-alerts.md."
        )
        .tags(["pki-exporter", "intune", "cloud-pki", "certificates"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .time("now-24h", "now")
        .timezone("")
        .refresh("1m")
        .fiscal_year_start_month(0)
        .live_now(False)
        .version(1)
        .links([])
        .annotations([])
        .variables(VARIABLES)
    )
    for panel in PANELS:
        if isinstance(panel, builders.Row):
            dash.with_row(panel)
        else:
            dash.with_panel(panel)
    return dash


def render() -> str:
    """The dashboard's JSON as committed: two-space indentation, final newline."""
    built = build().build()
    built.schema_version = SCHEMA_VERSION
    data = json.loads(json.dumps(built, cls=JSONEncoder))
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT.name} is stale: run `make dashboard`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
