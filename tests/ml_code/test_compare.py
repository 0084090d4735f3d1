"""Challenger vs champion on the same images: figures and the paired bootstrap of the difference."""

import numpy as np
import pytest

from ml_code import CLASSES
from ml_code.evaluation.compare import compare_on_same_images


def _probs(pred: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES))[pred] * 0.8 + 0.2 / len(CLASSES)


def test_a_better_challenger_has_a_positive_difference_whose_interval_excludes_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(CLASSES), 600)
    good = np.where(rng.random(600) < 0.9, y, (y + 1) % len(CLASSES))
    worse = np.where(rng.random(600) < 0.6, y, (y + 1) % len(CLASSES))
    out = compare_on_same_images(y, _probs(good), _probs(worse), CLASSES, n_bootstrap=300)
    ba = out["balanced_accuracy"]
    assert ba["difference"] == pytest.approx(ba["challenger"] - ba["champion"]) and ba["difference"] > 0.2
    assert 0 < ba["ci_low"] < ba["difference"] < ba["ci_high"]
    assert out["n_images"] == 600 and set(out["recall"]) == set(CLASSES)
    assert out["melanoma_sensitivity"]["challenger"] > out["melanoma_sensitivity"]["champion"]


def test_identical_models_differ_by_exactly_zero():
    y = np.arange(70) % len(CLASSES)
    p = _probs(y)
    ba = compare_on_same_images(y, p, p, CLASSES, n_bootstrap=50)["balanced_accuracy"]
    assert ba["difference"] == 0 and ba["ci_low"] == 0 and ba["ci_high"] == 0


def test_different_image_sets_are_refused():
    with pytest.raises(ValueError, match="same images"):
        compare_on_same_images(np.zeros(5), np.zeros((5, 7)), np.zeros((4, 7)), CLASSES)
