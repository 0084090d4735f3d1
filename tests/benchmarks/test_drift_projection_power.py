"""``benchmarks/drift_projection_power.py`` runs on a package and prints a row per shift for both ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.monitoring_world import model_package

REPO = Path(__file__).resolve().parents[2]


def test_prints_both_ways_for_every_shift(tmp_path: Path):
    from benchmarks.drift_projection_power import SHIFTS

    tar = model_package(tmp_path, 32)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "drift_projection_power.py"), "--model", str(tar),
                           "--repeats", "1", "--permutations", "99", "--baseline", "20", "--traffic", "10",
                           "--demo-lesions", "3"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if "flagged: full embedding" in line]
    assert [row.split(" flagged")[0].strip() for row in rows] == [name for name, _, _ in SHIFTS]
    assert all("projection" in row for row in rows)
    assert "projected to 32" in proc.stdout
