"""``benchmarks/near_duplicate_flood.py``: both ways find the same pairs of one shared hash, the shipped
way counting them (the search per distinct hash) and the other listing them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_both_ways_agree_on_the_pairs_of_one_shared_hash():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "near_duplicate_flood.py"), "--images", "400"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for way in ("shipped ", "every pair "):  # 400 * 399 / 2 pairs, counted by one way and listed by the other
        assert any(line.startswith(way) and " 79,800 " in line for line in proc.stdout.splitlines()), proc.stdout
    assert "400 pictures with one hash: shipped" in proc.stdout
