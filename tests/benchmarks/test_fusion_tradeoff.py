"""``benchmarks/fusion_tradeoff.py`` on a small trained package: it prints each half of the
fused model and the stacker's trade-off, and refitting at the package's own
``fusion_balance`` on the package's own views reproduces the served figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.synth_splits import make_splits
from tests.support.train_job import run_train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tradeoff")
    splits = make_splits(root / "splits", seed=11)
    proc = run_train(root / "train", splits, {"arch": "dermanet", "epochs": 2, "batch_size": 32, "num_threads": 1,
                                              "tta_views": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "train" / "model", splits


def run_tradeoff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "fusion_tradeoff.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_prints_each_half_and_the_balance_sweep(package):
    model_dir, splits = package
    proc = run_tradeoff("--model", str(model_dir), "--splits", str(splits))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "2 test-time views; served fusion_balance 0.5" in out
    figures = {m[0].strip(): (float(m[1]), float(m[2])) for m in
               re.findall(r"^\s*([\w .]+?): macro_auc ([\d.]+).*?balanced_accuracy ([\d.]+)", out, re.M)}
    assert {"network alone", "descriptor model alone", "served fusion"} <= set(figures)
    assert {f"fusion_balance {b:.2f}" for b in (0, 0.25, 0.5, 0.75, 1)} <= set(figures)
    assert all(0.0 <= v <= 1.0 for pair in figures.values() for v in pair)
    out_of_fold = re.findall(r"validation out-of-fold: macro_auc ([\d.]+)  balanced_accuracy ([\d.]+)", out)
    assert len(out_of_fold) == 5 and all(0.0 <= float(v) <= 1.0 for pair in out_of_fold for v in pair)
    corrected = re.findall(r"^fusion_balance (0\.00|0\.50), prior correction gamma ([\d.]+) \(chosen on validation\): "
                           r"test macro_auc ([\d.]+)  balanced_accuracy ([\d.]+)$", out, re.M)
    assert [c[0] for c in corrected] == ["0.00", "0.50"] and all(0 <= float(c[1]) <= 1.5 for c in corrected)
    # Same val predictions, same balance: the refit is the served stacker (to LBFGS tolerance).
    assert figures["fusion_balance 0.50"] == pytest.approx(figures["served fusion"], abs=2e-3)


def test_a_package_without_descriptor_model_says_so(package, tmp_path):
    _, splits = package
    proc = run_train(tmp_path, splits, {"arch": "dermanet", "epochs": 1, "num_threads": 1, "descriptor_model": False})
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_tradeoff("--model", str(tmp_path / "model"), "--splits", str(splits))
    assert proc.returncode == 2 and "has no descriptor model: nothing to compare" in proc.stderr
