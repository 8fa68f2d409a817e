"""Which kind each test is: the one table `make unit`, `make e2e` and `make system` select by.

Three kinds, as markers (registered in pyproject.toml):

- ``unit``: in this process and fast. The simulator may run in-process on 127.0.0.1; no
  subprocess of the exporter or the simulator, no external binary.
- ``e2e``: real exporter (or simulator) processes over loopback.
- ``system``: what needs the machine's system packages (scripts/install-system-deps.sh)
  or builds an artifact: the podman image, the wheel and sdist, Chromium, promtool, a real
  Prometheus and Alertmanager, and the soak.

A module gets its kind from ``MODULES``; a test that differs from its module is named in
``TESTS`` (by function name, every parametrization included). tests/conftest.py applies
them; tests/test_kinds.py fails when a test module is in neither, so a new module is
classified when it lands rather than silently left out of every `make` target.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("unit", "e2e", "system")
TESTS_DIR = Path(__file__).resolve().parent

#: test module (relative to tests/) -> kind
MODULES: dict[str, str] = {
    "test_alert_rules.py": "unit",
    "test_browser.py": "system",
    "test_budget.py": "unit",
    "test_collector.py": "unit",
    "test_config.py": "unit",
    "test_config_fuzz.py": "unit",
    "test_config_yaml.py": "unit",
    "test_credentials.py": "unit",
    "test_dashboard.py": "unit",
    "test_deploy.py": "unit",
    "test_devices.py": "unit",
    "test_dist.py": "system",
    "test_drilldown.py": "unit",
    "test_exporter_e2e.py": "e2e",
    "test_exposition.py": "unit",
    "test_faults_e2e.py": "e2e",
    "test_first_hour.py": "e2e",
    "test_graph_budget_e2e.py": "e2e",
    "test_graph_client.py": "unit",
    "test_hostile_clients.py": "e2e",
    "test_ids.py": "unit",
    "test_image.py": "system",
    "test_kinds.py": "unit",
    "test_harness.py": "unit",
    "test_layers.py": "unit",
    "test_lifecycle.py": "e2e",
    "test_lock.py": "unit",
    "test_managed_identity.py": "e2e",
    "test_pages_fuzz.py": "e2e",
    "test_personal_data.py": "e2e",
    "test_prometheus_e2e.py": "system",
    "test_promtool_lint.py": "system",
    "test_records_fold.py": "unit",
    "test_records_fuzz.py": "unit",
    "test_refresher.py": "unit",
    "test_retry.py": "unit",
    "test_secrets.py": "e2e",
    "test_server.py": "unit",
    "test_sharding.py": "e2e",
    "test_soak.py": "system",
    "test_state.py": "unit",
    "test_storage.py": "unit",
    "test_storage_e2e.py": "e2e",
    "test_toolkit_files.py": "unit",
    "test_turns.py": "unit",
    "test_web_e2e.py": "e2e",
    "test_webconfig.py": "unit",
    "test_workers.py": "unit",
    "simulator/test_sim_auth.py": "unit",
    "simulator/test_sim_broker_latency.py": "unit",
    "simulator/test_sim_control.py": "unit",
    "simulator/test_sim_dataset.py": "unit",
    "simulator/test_sim_faults.py": "unit",
    "simulator/test_sim_graph.py": "unit",
    "simulator/test_sim_pki.py": "unit",
    # issue 19: revocation
    "test_crl.py": "unit",
    "test_crl_coverage.py": "unit",
    "test_crl_fuzz.py": "unit",
    "test_crl_web.py": "unit",
    "test_crl_proxy.py": "unit",
    "test_crl_e2e.py": "e2e",
    "test_prometheus_crl_e2e.py": "system",
    # issue 20: proxies (a real Squid: a Debian binary, like promtool)
    "test_proxy_route.py": "unit",
    "test_proxy_e2e.py": "system",
    # issue 21/22: the command line as a process
    "test_cli.py": "e2e",
    "simulator/test_sim_limits.py": "unit",
    "simulator/test_sim_navigation.py": "unit",
    "simulator/test_sim_truth.py": "unit",
}

#: "module::test function" -> kind, where a test is not of its module's kind
TESTS: dict[str, str] = {
    # promtool (Debian's prometheus package)
    "test_alert_rules.py::test_promtool_check_rules": "system",
    "test_alert_rules.py::test_promtool_unit_tests_pass": "system",
    "test_alert_rules.py::test_promtool_cases_kill_the_mutant": "system",
    "test_dashboard.py::test_every_query_is_valid_promql": "system",
    # external binaries: hadolint, systemd-analyze; a wheel built and run in a venv
    "test_deploy.py::test_dockerfile_passes_hadolint": "system",
    "test_deploy.py::test_systemd_analyze_verifies_the_unit_and_scores_it_ok": "system",
    "test_deploy.py::test_image_steps_run_unprivileged_on_a_read_only_root": "system",
    # the shipped manifests against Kubernetes' and the operator's schemas (kubernetes-validate,
    # jsonschema: seconds of CPU each, an artifact check like hadolint's)
    "test_deploy.py::test_manifests_validate_offline": "system",
    "test_deploy.py::test_validation_catches_mistakes": "system",
    # the simulator's command line, as a process
    "simulator/test_sim_broker_latency.py::test_the_command_takes_limits_and_latency": "e2e",
    "simulator/test_sim_broker_latency.py::test_the_command_refuses_bad_values": "e2e",
    "simulator/test_sim_control.py::test_the_command_prints_a_working_setup": "e2e",
    "simulator/test_sim_control.py::test_the_command_refuses_a_bad_fault": "e2e",
    "simulator/test_sim_pki.py::test_the_command_serves_the_demo_preset_on_a_named_cdn_host": "e2e",
    # a pytest process of its own
    "test_harness.py::test_the_suite_runs_without_xdist": "e2e",
    # --config.check as a process
    "test_proxy_route.py::test_config_check_validates_no_proxy_and_finds_the_proxy_credentials": (
        "e2e"
    ),
}

WHERE = "tests/kinds.py (MODULES, or TESTS for one test)"

#: Tests that must share one pytest-xdist worker (`--dist loadgroup`, scheduled by
#: tests/conftest.py), by module or by "module::test function": a module whose expensive
#: module-scoped fixture (a Prometheus stack, Chromium, an exporter) would otherwise be set
#: up once per worker, and the artifact builds, which write the same build directories in
#: the checkout and keep both cores busy for a minute, so run one at a time. Every other
#: test goes to whichever worker is free.
GROUPS: dict[str, str] = {
    "test_browser.py": "browser",
    "test_prometheus_e2e.py": "prometheus",
    "test_prometheus_crl_e2e.py": "prometheus-crl",
    "test_proxy_e2e.py": "squid",
    "test_dist.py": "artifacts",
    "test_image.py": "artifacts",
    "test_deploy.py::test_image_steps_run_unprivileged_on_a_read_only_root": "artifacts",
}


#: Where `make test` starts: the tests (or groups) that take longest, longest first, so
#: that one pytest session can run them beside everything else instead of last and alone
#: (tests/conftest.py moves them to the front; the short ones, unit tests last, fill the
#: gaps). "module" or "module::test function", with the seconds each took on 2 cores.
LONG_FIRST: tuple[str, ...] = (
    "test_dist.py",  # the "artifacts" group, about 120 s in all
    "test_image.py",
    "test_deploy.py::test_image_steps_run_unprivileged_on_a_read_only_root",
    "test_soak.py",  # 60 s (PKI_EXPORTER_SOAK_SECONDS)
    "test_hostile_clients.py::test_eight_hostile_clients_held_for_a_minute",  # 3 x 60 s
    "test_prometheus_e2e.py",  # the "prometheus" group, about 70 s
    "test_prometheus_crl_e2e.py",
    "test_browser.py",  # 40 s
    "test_proxy_e2e.py",  # 25 s
    "test_graph_budget_e2e.py",  # 20 s windows
    "test_first_hour.py::test_editable_installs_print_no_setuptools_warning_boxes",  # 20 s
    "test_faults_e2e.py::test_token_endpoint_throttled",  # 15 s
    "test_hostile_clients.py::test_idle_and_trickling_connections_do_not_starve_scrapes",
    "test_hostile_clients.py::test_idle_and_stalled_tls_handshakes_do_not_starve_scrapes",
    # the unit modules that wait most (deadlines, timeouts) or compute most, so that
    # `make unit` overlaps them with the rest instead of ending on them
    "test_server.py",
    "test_refresher.py",
    "test_crl.py",
    "test_graph_client.py",
    "test_records_fuzz.py",
    "simulator/test_sim_truth.py",
    "simulator/test_sim_limits.py",
    "test_config_fuzz.py",
)
ORDER_OF_KINDS = ("system", "e2e", "unit")
"""After LONG_FIRST: the other tests by kind, in this order (stable within a kind)."""


def rank(module: str, function: str, kind: str | None) -> tuple[int, int]:
    """Where a test goes in the session: sort key (lower runs first)."""
    for i, entry in enumerate(LONG_FIRST):
        if entry in (module, f"{module}::{function}"):
            return (0, i)
    return (1, ORDER_OF_KINDS.index(kind) if kind in ORDER_OF_KINDS else len(ORDER_OF_KINDS))


def group_of(module: str, function: str) -> str | None:
    """The xdist group of one test, if it has one."""
    return GROUPS.get(f"{module}::{function}") or GROUPS.get(module)


def module_name(path: Path) -> str:
    """The table's key of a test file: its path relative to tests/."""
    return path.resolve().relative_to(TESTS_DIR).as_posix()


def kind_of(module: str, function: str) -> str | None:
    """The kind of one test, or None if its module is not classified."""
    return TESTS.get(f"{module}::{function}") or MODULES.get(module)


def unclassified_message(module: str) -> str:
    choices = " or ".join(f'"{kind}"' for kind in KINDS)
    return (
        f'tests/{module} is not classified: add "{module}": {choices} to MODULES in '
        "tests/kinds.py (its docstring says which kind)"
    )
