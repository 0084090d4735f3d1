"""``benchmarks/tta_latency.py`` on a small trained 8-view package and real JPEG files: it
times both network paths and the whole request, and checks that they agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.monitoring_synth import lesion_images
from tests.support.synth_splits import make_splits
from tests.support.train_job import run_train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tta")
    splits = make_splits(root / "splits", seed=5)
    proc = run_train(root / "train", splits, {"arch": "dermanet", "epochs": 1, "batch_size": 32, "num_threads": 1,
                                              "tta_views": 8})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "train" / "model"


def run_latency(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "tta_latency.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_times_both_paths_and_they_agree(package: Path, tmp_path: Path) -> None:
    for i, img in enumerate(lesion_images(12, size=90, seed=2)):
        Image.fromarray(img).save(tmp_path / f"ISIC_{i:07d}.jpg", quality=90)
    proc = run_latency("--model", str(package), "--images", str(tmp_path), "--requests", "10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith(f"10 single-image requests from {tmp_path}; package serves 8 test-time views")
    assert float(re.search(r"ratio baseline/served p50: ([\d.]+)", out)[1]) > 0
    assert float(re.search(r"max \|probability difference\| between the two: ([\d.e+-]+)", out)[1]) < 1e-4
    assert "whole request (input_fn + predict_fn) at 8 view(s)" in out
    assert "whole request (input_fn + predict_fn) at 1 view(s)" in out


def test_no_images_is_a_clear_error(package: Path, tmp_path: Path) -> None:
    proc = run_latency("--model", str(package), "--images", str(tmp_path))
    assert proc.returncode == 2 and f"no .jpg/.png images in {tmp_path}" in proc.stderr
