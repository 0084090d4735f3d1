"""Challenger against champion on the same test images, with the bootstrap of the difference.

A retrain's registration gate asks "is the new model at least as good as the Approved one?".
Comparing the challenger's figure on its test split with the champion's figure from an older
evaluation compares two different image sets; here both models' probabilities are for the SAME
images, and the interval of the difference comes from a paired bootstrap (one resample of
images, both models scored on it; Efron & Tibshirani 1993, ch. 13), so a difference inside the
noise of this test set shows as an interval straddling 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml_code import metrics

PROBABILITIES = "test_probabilities.npy"
"""Written by the evaluation job: float32 (N, C), the served probabilities of each test image in
the split's order; what the champion comparison reads for both models."""

HELD_OUT_IMAGE_ONLY = "held_out_image_only_probabilities.npz"
"""Written by the evaluation job: float32 (N, C) per held-out split (``"val"``, ``"test"``), the
served image-only probabilities (what a bare image gets); what the monitoring baseline reads for
its expected prediction distribution (``ml_code.monitoring.baseline``)."""


def _recalls(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = metrics.confusion_matrix(y, pred, k)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def compare_on_same_images(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, classes: Sequence[str],
                           n_bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Both models on one test set: ``y`` (N,) labels, ``challenger``/``champion`` (N, C) probabilities.

    Returns balanced accuracy of each, their difference (challenger - champion) with its paired
    bootstrap ``1 - alpha`` interval, per-class recall of each (the "no class falls N points"
    gate), and melanoma sensitivity of each (argmax) when the classes include ``mel``."""
    y = np.asarray(y)
    if challenger.shape != champion.shape or len(y) != len(challenger):
        raise ValueError(f"the two models must be scored on the same images: labels {y.shape}, "
                         f"challenger {challenger.shape}, champion {champion.shape}")
    k = len(classes)
    new_pred, old_pred = challenger.argmax(1), champion.argmax(1)
    new_ba, old_ba = metrics.balanced_accuracy(y, new_pred, k), metrics.balanced_accuracy(y, old_pred, k)
    # One paired percentile bootstrap (metrics.bootstrap_ci): both models' columns side by side,
    # so every resample scores the challenger and the champion on the same images.
    k2 = challenger.shape[1]

    def difference(labels: np.ndarray, both: np.ndarray) -> float:
        return (metrics.balanced_accuracy(labels, both[:, :k2].argmax(1), k)
                - metrics.balanced_accuracy(labels, both[:, k2:].argmax(1), k))

    interval = metrics.bootstrap_ci(y, np.concatenate([challenger, champion], axis=1), difference,
                                    int(n_bootstrap), alpha, seed)
    low, high = interval.low, interval.high
    new_rec, old_rec = _recalls(y, new_pred, k), _recalls(y, old_pred, k)
    out: dict[str, Any] = {
        "n_images": int(len(y)),
        "balanced_accuracy": {"challenger": float(new_ba), "champion": float(old_ba),
                              "difference": float(new_ba - old_ba), "ci_low": float(low), "ci_high": float(high),
                              "n_bootstrap": int(n_bootstrap)},
        "recall": {c: {"challenger": None if np.isnan(a) else float(a), "champion": None if np.isnan(b) else float(b)}
                   for c, a, b in zip(classes, new_rec, old_rec)},
    }
    if "mel" in classes:
        out["melanoma_sensitivity"] = dict(out["recall"]["mel"])
    return out
