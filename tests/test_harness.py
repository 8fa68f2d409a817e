"""The test harness's own parts that the end-to-end tests trust: the exposition parser,
the shared SSL context, the fuzz depth and the session's order."""

from __future__ import annotations

import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pki_simulator import tls
from prometheus_client.parser import text_string_to_metric_families

from tests import fuzzing, kinds, rsakeys
from tests.exporter_proc import parse_samples

EXPOSITION = r"""# HELP intune_cloudpki_leaf_certificates Leaf certificates.
# TYPE intune_cloudpki_leaf_certificates gauge
intune_cloudpki_leaf_certificates{ca="Contoso \"Issuing\" CA",status="active",tenant="a\\b"} 12
intune_cloudpki_leaf_certificates{ca="line\nbreak",status="revoked",tenant="t",} 3.0
# a comment
up 1
x_total{} -Inf
y NaN
z{a="1"} 1.5e-3 1700000000000
process_start_time_seconds 1.7646e+09
"""


def _reference(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_parse_samples_reads_what_prometheus_clients_parser_reads() -> None:
    ours, theirs = parse_samples(EXPOSITION), _reference(EXPOSITION)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == value or (math.isnan(ours[key]) and math.isnan(value)), key
    assert (
        ours[
            (
                "intune_cloudpki_leaf_certificates",
                (("ca", 'Contoso "Issuing" CA'), ("status", "active"), ("tenant", "a\\b")),
            )
        ]
        == 12
    )


@pytest.mark.parametrize(
    "line",
    [
        'x{a="1"b="2"} 1',  # no comma between labels
        "x 1_0",  # Python's float() would read it
        'x{a="\\q"} 1',  # an escape the format does not have
        "x{a=1} 1",  # an unquoted value
        "1x 1",  # a name starting with a digit
        'x{a="1"} ',  # no value
        "x 1 2 3",
    ],
)
def test_parse_samples_refuses_a_line_that_is_no_sample(line: str) -> None:
    with pytest.raises(AssertionError, match="line 2 of the exposition is no sample"):
        parse_samples(f"up 1\n{line}\n")


def test_parse_samples_refuses_a_sample_given_twice() -> None:
    with pytest.raises(AssertionError, match="line 2 of the exposition repeats a sample"):
        parse_samples('x{a="1",b="2"} 1\nx{b="2",a="1"} 1\n')


def test_default_clients_share_one_ssl_context_and_others_do_not() -> None:
    with httpx.Client() as one, httpx.Client() as two, httpx.Client(verify=False) as other:
        contexts = [c._transport._pool._ssl_context for c in (one, two, other)]
    assert contexts[0] is contexts[1]
    assert contexts[2] is not contexts[0]


def test_the_everyday_fuzz_run_takes_an_eighth_and_make_fuzz_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PKI_EXPORTER_FUZZ", raising=False)
    assert fuzzing.fuzz_settings(250).max_examples == 31
    assert fuzzing.fuzz_settings(60).max_examples == 10
    monkeypatch.setenv("PKI_EXPORTER_FUZZ", "deep")
    assert fuzzing.fuzz_settings(250).max_examples == 250
    monkeypatch.setenv("PKI_EXPORTER_FUZZ", "4")
    assert fuzzing.fuzz_settings(250).max_examples == 1000


def test_the_longest_tests_go_first_and_unit_tests_last() -> None:
    held = "test_eight_hostile_clients_held_for_a_minute"
    assert kinds.rank("test_dist.py", "test_the_installed_wheel_runs", "system") == (0, 0)
    assert kinds.rank("test_hostile_clients.py", held, "e2e")[0] == 0
    assert kinds.rank(
        "test_hostile_clients.py", "test_security_headers_on_every_answer", "e2e"
    ) == (1, 1)
    assert kinds.rank("test_config.py", "test_x", "unit") == (1, 2)
    for entry in kinds.LONG_FIRST:
        module = entry.split("::")[0]
        assert module in kinds.MODULES, f"LONG_FIRST names {entry}, which is in no module"


def test_the_rsa_keys_are_made_once_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rsakeys, "COUNT", 3)
    path = tmp_path / "cache" / rsakeys.FILE_NAME
    assert rsakeys.read(path) is None
    made = rsakeys.make(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [rsakeys.FILE_NAME]
    numbers = [key.private_numbers() for key in made]
    assert len({n.public_numbers.n for n in numbers}) == 3
    again = rsakeys.make(path)  # read back, not made again
    assert [key.private_numbers() for key in again] == numbers
    blob = path.read_bytes()
    for broken in (blob[: len(blob) // 2], b"", blob.replace(b"MII", b"XII", 1)):
        path.write_bytes(broken)
        assert rsakeys.read(path) is None
    path.write_bytes(blob * 2)  # six keys, two of each
    assert rsakeys.read(path) is None
    remade = rsakeys.make(path)
    assert len(remade) == 3 and [k.private_numbers() for k in remade] != numbers
    parsed = rsakeys.parse(rsakeys.pem(remade))  # as a worker gets them
    assert [k.private_numbers() for k in parsed or []] == [k.private_numbers() for k in remade]
    # A cache that cannot be written: keys all the same, nothing left behind.
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")
    assert len(rsakeys.make(blocked / "cache" / rsakeys.FILE_NAME)) == 3
    assert len(rsakeys.make(None)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "cache"]


def test_the_simulators_hand_out_the_shared_keys_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = list(tls._rsa_keys)
    monkeypatch.setattr(tls, "RSA_POOL", 4)
    try:
        shared = [tls.new_rsa_key(), tls.new_rsa_key()]  # two turns: two keys
        tls.share_rsa_keys(shared)
        handed = [tls.new_rsa_key() for _ in range(8)]
        assert sum(key is shared[0] for key in handed) == 2
        assert sum(key is shared[1] for key in handed) == 2
        assert len({id(key) for key in handed}) == 4  # two made, then all four again
        assert handed[:4] == handed[4:]
        with pytest.raises(ValueError, match="must differ"):
            tls.share_rsa_keys([shared[0], shared[0]])
    finally:
        tls._rsa_keys[:] = kept  # the pool of 16 again, for the other tests of this process


def test_the_suite_runs_without_xdist() -> None:
    """`pytest -p no:xdist` (a debugger, a profiler) runs: the xdist hooks of
    tests/conftest.py are optional, which pluggy refused before."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # -n would fail
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q",
         "-m", "unit", "tests/test_ids.py"],
        cwd=Path(__file__).resolve().parent.parent, env=environ, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"^\d+ passed in ", done.stdout, re.MULTILINE), done.stdout[-2000:]
