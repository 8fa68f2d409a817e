#!/usr/bin/env python3
"""Generate the Kubernetes copies of the alert rules and the Grafana dashboards.

    python scripts/generate_kubernetes_monitoring.py          # rewrite them
    python scripts/generate_kubernetes_monitoring.py --check  # exit 1 if they are stale

``prometheus/alerts.yml`` and ``grafana/*.json`` stay the sources (promtool tests the first,
the dashboard tests the second; the JSON is itself generated from grafana/dashboard.py by
``make dashboard``, which then runs this script); ``deploy/kubernetes/base/prometheusrule.yaml`` (a
PrometheusRule for the Prometheus Operator) and ``deploy/kubernetes/base/
dashboard-configmap.yaml`` (a ConfigMap for Grafana's dashboard sidecar) are copies. The
copies embed the sources' text unchanged (comments included), and this script proves after
rendering that each copy loads to exactly its source. tests/test_deploy.py renders them in
memory and compares them with the committed files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = Path("prometheus/alerts.yml")
DASHBOARDS = Path("grafana")
RULE_OUT = Path("deploy/kubernetes/base/prometheusrule.yaml")
DASHBOARD_OUT = Path("deploy/kubernetes/base/dashboard-configmap.yaml")
#: `kubectl apply` (client side) stores the object in an annotation of at most 256 KiB
MAX_CONFIGMAP_BYTES = 256 * 1024 - 4096
LABELS = "    app.kubernetes.io/name: pki-exporter\n    app.kubernetes.io/component: monitoring\n"


def _header(source: str) -> str:
    return (
        f"# Generated from {source} by scripts/generate_kubernetes_monitoring.py: do not edit.\n"
        "# Edit the source, then run: python scripts/generate_kubernetes_monitoring.py\n"
    )


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


def render_prometheus_rule(alerts_text: str) -> str:
    """alerts.yml -> a PrometheusRule whose ``spec.groups`` is the file's ``groups``."""
    lines = alerts_text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip() == "groups:"]
    if len(starts) != 1:
        raise ValueError(f"{ALERTS}: expected one top-level 'groups:' line")
    body = "".join(lines[starts[0] :])
    text = (
        _header(str(ALERTS))
        + "apiVersion: monitoring.coreos.com/v1\n"
        + "kind: PrometheusRule\n"
        + "metadata:\n"
        + "  name: pki-exporter\n"
        + "  labels:\n"
        + LABELS
        + "spec:\n"
        + _indent(body if body.endswith("\n") else body + "\n", 2)
    )
    source = yaml.safe_load(alerts_text)
    if yaml.safe_load(text)["spec"] != {"groups": source["groups"]} or set(source) != {"groups"}:
        raise ValueError(f"{RULE_OUT}: would not hold exactly the groups of {ALERTS}")
    return text


def render_dashboard_configmap(dashboards: dict[str, str]) -> str:
    """grafana/*.json (name -> text) -> one ConfigMap labelled for Grafana's sidecar."""
    if not dashboards:
        raise ValueError(f"{DASHBOARDS}: no dashboard")
    data = ""
    for name in sorted(dashboards):
        content = dashboards[name]
        json.loads(content)  # a broken dashboard fails here, not in Grafana
        chomp = "" if content.endswith("\n") else "-"
        if content.endswith("\n\n") or any(line != line.rstrip() for line in content.splitlines()):
            raise ValueError(f"{DASHBOARDS / name}: trailing whitespace cannot be kept in YAML")
        data += f"  {name}: |{chomp}\n" + _indent(content, 4)
        if not content.endswith("\n"):
            data += "\n"
    text = (
        _header(f"{DASHBOARDS}/*.json")
        + "apiVersion: v1\n"
        + "kind: ConfigMap\n"
        + "metadata:\n"
        + "  name: pki-exporter-dashboards\n"
        + "  labels:\n"
        + LABELS
        + '    grafana_dashboard: "1"\n'
        + "data:\n"
        + data
    )
    if yaml.safe_load(text)["data"] != dashboards:
        raise ValueError(f"{DASHBOARD_OUT}: would not hold exactly {DASHBOARDS}/*.json")
    if len(text.encode()) > MAX_CONFIGMAP_BYTES:
        raise ValueError(f"{DASHBOARD_OUT}: too large for `kubectl apply` (split the ConfigMap)")
    return text


def render_all(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file (path relative to ``root``) and its content."""
    dashboards = {p.name: p.read_text(encoding="utf-8") for p in (root / DASHBOARDS).glob("*.json")}
    return {
        RULE_OUT: render_prometheus_rule((root / ALERTS).read_text(encoding="utf-8")),
        DASHBOARD_OUT: render_dashboard_configmap(dashboards),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a copy is stale")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the repository (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in render_all(args.root).items():
        target = args.root / path
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        names = ", ".join(map(str, stale))
        print(
            f"stale: {names}; run python scripts/generate_kubernetes_monitoring.py", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
