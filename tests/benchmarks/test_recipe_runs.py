"""``benchmarks/recipe_runs.sh``: named runs on one splits folder, one line of test
metrics each, a failed run reported without stopping the others."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.synth_splits import make_splits

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "recipe_runs.sh"


@pytest.mark.slow
def test_runs_each_configuration_and_reports_its_test_metrics(tmp_path):
    splits = make_splits(tmp_path / "splits", seed=3)
    quick = '"epochs":1,"batch_size":32,"num_threads":1'
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(splits), str(tmp_path / "runs"), f'plain={{"arch":"dermanet",{quick}}}',
         f'broken={{"arch":"no-such-net",{quick}}}', f'd4={{"arch":"dermanet_d4",{quick}}}'],
        capture_output=True, text=True, timeout=900, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["plain", "d4"], proc.stdout
    pattern = (r"test balanced_accuracy (0\.\d{4}|1\.0000) \[[\d.]+, [\d.]+\] macro_auc [\d.]+ \[[\d.]+, [\d.]+\]; "
               r"network alone [\d.]+ / [\d.]+; training [\d.]+ min, 1 epochs; package (\S+)")
    for line in lines:
        match = re.search(pattern, line)
        assert match, line
        assert Path(match.group(2)).is_file()
    assert "broken: training failed" in proc.stderr and "Unknown arch 'no-such-net'" in \
        (tmp_path / "runs" / "broken" / "output" / "failure").read_text()


def test_refuses_a_folder_that_is_not_a_splits_folder(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path), str(tmp_path / "runs"), "a={}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "has no train split" in proc.stderr
