"""Live model quality: captured predictions scored against ground-truth labels that arrive late.

Used by the ``model_quality_report`` monitoring asset, which joins the inference log to
the labels by inference id; the functions here only see that joined table (columns
``inference_time``, ``label``, ``predicted_class``), so they can be tested and reused
without a store or Dagster.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

QUALITY_WINDOW_COLUMNS: tuple[str, ...] = ("window", "n", "accuracy", "balanced_accuracy")
"""Columns of ``quality_by_window``'s table (also of the empty table when nothing is labelled)."""


def live_accuracy(joined: pd.DataFrame) -> tuple[float, float]:
    """``(accuracy, balanced accuracy)`` of labelled predictions (columns label, predicted_class).

    Balanced accuracy as scikit-learn computes it, the same definition as the evaluation's:
    the mean recall over the diagnoses that occur among the labels. A window in which the
    labels hold one diagnosis, or fewer diagnoses than the predictions, is normal for labels
    that arrive late and a few at a time (its balanced accuracy is then the recall of the
    diagnoses labelled so far), so scikit-learn's warnings about exactly that are silenced
    here rather than printed into every monitoring run."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    accuracy = float((joined["label"] == joined["predicted_class"]).mean())
    with warnings.catch_warnings():
        for expected in ("A single label was found", "y_pred contains classes not in y_true"):
            warnings.filterwarnings("ignore", message=expected, category=UserWarning)
        balanced = float(balanced_accuracy_score(joined["label"], joined["predicted_class"]))
    return accuracy, balanced


def quality_by_window(joined: pd.DataFrame, freq: str = "D") -> pd.DataFrame:
    """Accuracy and balanced accuracy per time window (rows need inference_time, label, predicted_class).

    One number over the whole look-back hides *when* quality fell; per window (daily by
    default, ``freq`` is a pandas offset alias) a drop shows up as the day it started."""
    out = []
    for window, grp in joined.groupby(joined["inference_time"].dt.floor(freq)):
        accuracy, balanced = live_accuracy(grp)
        out.append({"window": window, "n": len(grp), "accuracy": accuracy, "balanced_accuracy": balanced})
    return pd.DataFrame(out, columns=list(QUALITY_WINDOW_COLUMNS))


def quality_report_markdown(status: str, n_labelled: int, model_version: Any, reference: float | None,
                            table: pd.DataFrame) -> str:
    """The quality report as Markdown: status line with the reference balanced accuracy, then
    one table row per window of ``table`` (from ``quality_by_window``).

    It is what the operator reads on the ``model_quality_report`` materialization; the
    reference is the deployed package's evaluation figure, or None when it has none."""
    md = [f"**Status:** {status}: {n_labelled} labelled predictions of v{model_version}; reference "
          f"balanced accuracy {reference if reference is None else f'{reference:.3f}'}", "",
          "| window | n | accuracy | balanced accuracy |", "|---|---|---|---|"]
    md += [f"| {r.window} | {r.n} | {r.accuracy:.3f} | {r.balanced_accuracy:.3f} |" for r in table.itertuples()]
    return "\n".join(md)
