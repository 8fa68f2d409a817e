"""`promtool check metrics` on a real scrape: the days gauge is the only warning.

`intune_cloudpki_leaf_certificate_earliest_expiry_days` stays on purpose (README, Metrics:
why it exists beside `_timestamp_seconds`), so promtool's base-unit warning on it is
expected; any other lint warning is a bug.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

PROMTOOL = shutil.which("promtool")
EXPECTED = 'intune_cloudpki_leaf_certificate_earliest_expiry_days use base unit "seconds" instead of "days"'


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_the_days_gauge_is_promtools_only_warning(start_exporter: Any) -> None:
    assert PROMTOOL is not None
    exporter = start_exporter("--demo")

    def refreshed(samples: Any) -> bool:
        ok = [v for k, v in samples.items() if k[0] == "intune_cloudpki_refresh_success"]
        crls = [v for k, v in samples.items() if k[0] == "intune_cloudpki_crl_fetch_success"]
        # the demo's four CAs, and their five CRLs (so that the CRL families are linted too)
        return len(ok) == 4 and all(v == 1 for v in ok) and len(crls) == 5 and all(crls)

    exporter.wait_for(refreshed, what="demo refreshed")
    scrape = exporter.get("/metrics")
    assert scrape.status_code == 200
    assert "process_resident_memory_bytes" in scrape.text  # the whole scrape, not --once's
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=scrape.content,
        capture_output=True,
        timeout=60,
    )
    output = (lint.stdout + lint.stderr).decode()
    assert [line for line in output.splitlines() if line.strip()] == [EXPECTED]
    assert lint.returncode == 3  # promtool's "lint problems found"
