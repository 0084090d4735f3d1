"""``benchmarks/demo_recipe.py`` on small demo splits: it trains and evaluates each recipe through the
real job entry points, and the ``synthetic_demo`` recipe does train resnet18 with its own stem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.demo_splits import make_demo_splits

REPO = Path(__file__).resolve().parents[2]


def test_trains_and_evaluates_each_recipe(tmp_path: Path) -> None:
    splits = make_demo_splits(tmp_path / "splits", size=32, lesions_per_class=10, seed=3)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_recipe.py"), "--splits", str(splits),
                           "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r["recipe"]: r for r in map(json.loads, (line for line in proc.stdout.splitlines()
                                                      if line.startswith("{")))}
    assert set(rows) == {"default", "synthetic_demo"}
    # the job defaults keep the small-image stem at 32 px; the demo's recipe uses resnet18's own
    assert rows["default"]["small_input"] is True and rows["synthetic_demo"]["small_input"] is False
    for row in rows.values():
        assert row["epochs"] == 1 and row["train_images_per_s"] > 0
        assert 0.0 <= row["test_balanced_accuracy"] <= 1.0 and 0.0 <= row["test_macro_auc"] <= 1.0
    assert "images/second, synthetic_demo / default:" in proc.stdout


def test_compares_a_recipe_with_a_variant_of_itself(tmp_path: Path) -> None:
    """``recipe:option=value,...`` trains the recipe with those options on top: here the variant's
    two epochs show in its row, next to the recipe's one (``--quick``)."""
    splits = make_demo_splits(tmp_path / "splits", size=32, lesions_per_class=10, seed=3)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_recipe.py"), "--splits", str(splits),
                           "--quick", "--recipes", "synthetic_demo;synthetic_demo:epochs=2,seed=5"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r["recipe"]: r for r in map(json.loads, (line for line in proc.stdout.splitlines()
                                                      if line.startswith("{")))}
    assert [rows[name]["epochs"] for name in ("synthetic_demo", "synthetic_demo:epochs=2,seed=5")] == [1, 2]
    for row in rows.values():
        assert row["small_input"] is False and row["test_log_loss"] >= 0.0


def test_a_variant_option_without_a_value_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_recipe.py"), "--splits", str(tmp_path),
                           "--recipes", "synthetic_demo:epochs"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "override 'epochs' of 'synthetic_demo' is not option=value" in proc.stderr


def test_says_how_to_get_splits_when_there_are_none(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_recipe.py")], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={"DERMAOPS_HOME": str(tmp_path),
                                                                           "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "run `make demo` first or pass --splits DIR" in proc.stderr
