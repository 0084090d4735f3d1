"""``benchmarks/run_all.py`` (``make bench``): runs the benchmarks on the BENCH_RESULT protocol as
subprocesses, prints one table and writes the results as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import run_all  # noqa: E402


def test_runs_one_quick_benchmark_and_writes_its_results_as_json(tmp_path: Path) -> None:
    out = tmp_path / "results" / "latest.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick",
                           "--only", "landing_sensor_tick", "--output", str(out)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert payload["quick"] is True
    [entry] = payload["benchmarks"]
    assert entry["name"] == "landing_sensor_tick" and entry["error"] is None and entry["returncode"] == 0
    [result] = entry["results"]
    assert set(run_all.RESULT_FIELDS) <= set(result)
    assert result["ours"] > 0 and result["baseline"] > 0
    assert result["ratio"] == pytest.approx(result["baseline"] / result["ours"], rel=0.05)
    assert result["met"] == (result["ratio"] >= 5)
    # the table names the benchmark and its verdict
    assert "landing_sensor_tick" in proc.stdout and "target" in proc.stdout
    assert not list(out.parent.glob(".*"))  # published atomically: no temporary file left behind


def test_only_protocol_scripts_take_part_and_helpers_do_not() -> None:
    scripts = run_all.participating()
    assert "landing_sensor_tick" in scripts and "run_all" not in scripts
    assert "ham10000_quality" not in scripts  # prints no BENCH_RESULT: not on the protocol
    assert not any(name.startswith("_") for name in scripts)


def test_a_malformed_result_line_is_an_error_not_a_silent_pass() -> None:
    good = 'BENCH_RESULT {"stage": "s", "metric": "m", "ours": 1.0, "baseline": null, "ratio": null, ' \
           '"target": "< 1 GB", "met": true, "unit": "GB"}'
    results, skipped = run_all.parse_output(f"noise\n{good}\nBENCH_SKIP no data here\n")
    assert results[0]["target"] == "< 1 GB" and skipped == "no data here"
    reported = {**results[0], "target": "report", "met": None}  # a figure without a target: neither yes nor NO
    row = run_all.table([{"name": "b", "error": None, "skipped": None, "results": [reported]}]).splitlines()[-1]
    assert row.split()[-2:] == ["report", "-"]
    with pytest.raises(ValueError, match="lacks"):
        run_all.parse_output('BENCH_RESULT {"stage": "s"}')
    with pytest.raises(ValueError, match="not JSON"):
        run_all.parse_output("BENCH_RESULT {oops")


def test_a_crashing_benchmark_is_recorded_against_itself(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("import sys\nprint('BENCH_RESULT is promised but')\nsys.exit('boom: no data')\n")
    entry = run_all.run_one("broken", script, quick=True, timeout=60)
    assert entry["returncode"] == 1 and "boom: no data" in entry["error"]
    assert "ERROR" in run_all.table([entry])
