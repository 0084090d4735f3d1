"""Per-subgroup metrics: sizes, figures, and "too few" where a subgroup cannot support one."""

import numpy as np
import pandas as pd

from ml_code import CLASSES
from ml_code.evaluation.subgroups import subgroup_metrics


def test_a_subgroup_the_model_fails_on_is_visible():
    rng = np.random.default_rng(0)
    n = 200
    index = pd.DataFrame({"age": rng.choice([25, 50, 70], n), "sex": rng.choice(["male", "female"], n),
                          "localization": np.where(np.arange(n) < 60, "acral", "back")})
    y = rng.integers(0, len(CLASSES), n)
    probs = np.eye(len(CLASSES))[y] * 0.9 + 0.1 / len(CLASSES)  # right everywhere ...
    wrong = np.arange(n) < 60
    probs[wrong] = np.eye(len(CLASSES))[(y[wrong] + 1) % len(CLASSES)]  # ... except on palms and soles
    rows = {r["subgroup"]: r for r in subgroup_metrics(index, y, probs, CLASSES)}
    assert rows["site palms_soles"]["n"] == 60 and rows["site palms_soles"]["balanced_accuracy"] == 0.0
    assert rows["site torso"]["balanced_accuracy"] == 1.0
    assert sum(rows[f"sex {s}"]["n"] for s in ("male", "female")) == n


def test_small_subgroups_are_marked_too_few_without_figures():
    index = pd.DataFrame({"age": [8] * 5 + [50] * 40, "sex": ["female"] * 45, "localization": ["back"] * 45})
    y = np.arange(45) % len(CLASSES)
    rows = {r["subgroup"]: r for r in subgroup_metrics(index, y, np.eye(len(CLASSES))[y], CLASSES)}
    assert rows["age <30"]["n"] == 5 and rows["age <30"]["note"].startswith("too few")
    assert rows["age <30"]["balanced_accuracy"] is None
    assert rows["age 45-59"]["balanced_accuracy"] == 1.0 and rows["age 45-59"]["melanoma_sensitivity"] == 1.0
    assert "age unknown" not in rows  # empty subgroups are left out
