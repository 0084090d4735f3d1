"""``benchmarks/split_scale.py``: one BENCH_RESULT line per target, in the runner's format, and the
stability row shows what the benchmark is for: our split moves no old lesion, the old one does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_prints_one_result_per_target_and_ours_moves_no_old_lesion():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "split_scale.py"), "--rows", "20000"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["stage"]: r for r in (json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
                                    if line.startswith("BENCH_RESULT "))}
    assert set(rows) == {"split", "manifest_hash", "split_and_manifest_hash", "split_stability"}
    for row in rows.values():
        assert set(row) == {"stage", "metric", "ours", "baseline", "ratio", "target", "met", "unit"}
    assert rows["split"]["baseline"] > 0 and rows["split"]["target"] == "< 60 s"
    assert rows["manifest_hash"]["baseline"] is None and rows["manifest_hash"]["ratio"] is None
    stability = rows["split_stability"]
    assert stability["ours"] == 0.0 and stability["met"] is True
    assert stability["baseline"] > 0.3  # the permutation split reshuffles about half the old lesions
