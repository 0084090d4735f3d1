"""``benchmarks/torch_import_memory.py``: the memory rollup it reads is the kernel's, field by field,
and importing torch shows up in it as resident pages of both kinds the script reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from torch_import_memory import rollup  # noqa: E402


def test_the_rollup_is_read_in_mib_field_by_field(tmp_path: Path) -> None:
    sample = tmp_path / "smaps_rollup"
    sample.write_text("00400000-7ffd [rollup]\nRss:              102400 kB\nPss:               51200 kB\n"
                      "Private_Clean:      20480 kB\nAnonymous:          10240 kB\nSwap:                  0 kB\n")
    assert rollup(sample) == {"Rss": 100.0, "Pss": 50.0, "Private_Clean": 20.0, "Anonymous": 10.0}


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").is_file(), reason="Linux smaps_rollup only")
def test_importing_torch_adds_library_pages_and_anonymous_memory() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "torch_import_memory.py")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    added = report["import_adds_mib"]
    # library pages are Private_Clean, or Shared_Clean when another process (a test worker) maps torch too
    clean = added["Private_Clean"] + added["Shared_Clean"]
    assert added["Rss"] > 50 and clean > 10 and added["Anonymous"] > 10, added
    after = report["after_mib"]
    assert after["Rss"] >= after["Private_Clean"] + after["Shared_Clean"] + after["Anonymous"] - 1
