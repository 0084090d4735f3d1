"""Per-subgroup metrics of the test split: age band, sex and body region.

A dermatology model that fails on one body site or age band must be seen before it is
approved (the HAM10000 population is mostly adults with light skin, photographed on the
back and legs), so the evaluation reports each subgroup's size and metrics, and marks one with
fewer than ``MIN_IMAGES`` images "too few" instead of printing a figure its size cannot support.
The case mix comes from ``ml_code.monitoring.casemix`` (age capped at 90, six body regions), the
same coarse scale drift monitoring uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ml_code import metrics
from ml_code.monitoring.casemix import case_mix_frame

MIN_IMAGES = 30
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("age <30", 0, 30), ("age 30-44", 30, 45), ("age 45-59", 45, 60), ("age 60-74", 60, 75), ("age 75+", 75, 200))
SUBGROUP_COLUMNS = ("subgroup", "n", "balanced_accuracy", "macro_auc", "melanoma_sensitivity", "note")


def subgroup_labels(index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean masks per subgroup name from a split index (``age``, ``sex``, ``localization``)."""
    mix = case_mix_frame(index.get("age", pd.Series([None] * len(index))).tolist(),
                         index.get("sex", pd.Series([None] * len(index))).tolist(),
                         index.get("localization", pd.Series([None] * len(index))).tolist())
    age = mix["age"].to_numpy()
    masks = {name: (age >= lo) & (age < hi) for name, lo, hi in AGE_BANDS}
    masks["age unknown"] = np.isnan(age)
    for column, prefix in (("sex", "sex"), ("body_region", "site")):
        for value in sorted(mix[column].unique()):
            masks[f"{prefix} {value}"] = (mix[column] == value).to_numpy()
    return masks


def subgroup_metrics(index: pd.DataFrame, y: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                     min_images: int = MIN_IMAGES) -> list[dict[str, Any]]:
    """One row per non-empty subgroup: its size, balanced accuracy, macro one-vs-rest AUC (over
    the classes present in it) and melanoma sensitivity; "too few" (and no figures) under
    ``min_images``. ``index`` rows align with ``y`` (N,) and ``probs`` (N, C)."""
    if len(index) != len(y):
        raise ValueError(f"the split index has {len(index)} rows for {len(y)} labels; re-run preprocessing")
    k, mel = len(classes), list(classes).index("mel") if "mel" in classes else None
    rows: list[dict[str, Any]] = []
    for name, mask in subgroup_labels(index).items():
        n = int(mask.sum())
        if n == 0:
            continue
        row: dict[str, Any] = {"subgroup": name, "n": n, "balanced_accuracy": None, "macro_auc": None,
                               "melanoma_sensitivity": None, "note": ""}
        if n < min_images:
            row["note"] = f"too few (< {min_images})"
        else:
            ys, ps = y[mask], probs[mask]
            row["balanced_accuracy"] = round(metrics.balanced_accuracy(ys, ps.argmax(1), k), 4)
            present = np.unique(ys)
            row["macro_auc"] = round(metrics.roc_auc_ovr(ys, ps)[1], 4) if len(present) > 1 else None
            if mel is not None and (ys == mel).any():
                row["melanoma_sensitivity"] = round(float((ps[ys == mel].argmax(1) == mel).mean()), 4)
        rows.append(row)
    return rows
