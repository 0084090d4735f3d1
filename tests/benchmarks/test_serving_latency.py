"""``benchmarks/serving_latency.py --quick``: a real server, real HAM10000 JPEGs over HTTP; it
prints one well-formed BENCH_RESULT line per target and the server fails no request.
Timings are the benchmark's business, not this test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = {"stage", "metric", "ours", "baseline", "ratio", "target", "met", "unit"}


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_run_reports_every_target_and_no_errors() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serving_latency.py"), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.startswith("BENCH_SKIP"):
        pytest.skip(proc.stdout.strip())
    results = {r["metric"]: r for r in (json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
                                        if line.startswith("BENCH_RESULT "))}
    assert set(results) == {"p50_latency_c1", "p99_latency_c1", "throughput_c8_vs_c1", "errors",
                            "throughput_per_core_c8", "usd_per_1000_inferences_m5_large"}
    assert all(set(r) == KEYS and r["stage"] == "serving" for r in results.values())
    assert results["errors"] == {**results["errors"], "ours": 0.0, "met": True}
    for name in ("p50_latency_c1", "throughput_c8_vs_c1"):
        r = results[name]
        assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["baseline"], rel=1e-2)
    assert results["usd_per_1000_inferences_m5_large"]["ours"] > 0
