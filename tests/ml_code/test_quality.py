"""Live quality per time window, and its Markdown report."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from ml_code.monitoring.quality import QUALITY_WINDOW_COLUMNS, live_accuracy, quality_by_window, quality_report_markdown


def _joined() -> pd.DataFrame:
    return pd.DataFrame({
        "inference_time": pd.to_datetime(["2024-05-01T01:00Z", "2024-05-01T23:00Z", "2024-05-01T12:00Z",
                                          "2024-05-02T08:00Z", "2024-05-02T09:00Z"]),
        "label": ["mel", "nv", "nv", "bcc", "mel"],
        "predicted_class": ["mel", "nv", "mel", "bcc", "bcc"],
    })


def test_quality_by_window_per_day() -> None:
    table = quality_by_window(_joined())
    assert list(table.columns) == list(QUALITY_WINDOW_COLUMNS)
    assert [str(w.date()) for w in table["window"]] == ["2024-05-01", "2024-05-02"]
    assert table["n"].tolist() == [3, 2]
    assert table["accuracy"].tolist() == [2 / 3, 0.5]
    day1 = _joined().iloc[:3]
    assert table["balanced_accuracy"].iloc[0] == balanced_accuracy_score(day1["label"], day1["predicted_class"])


def test_a_window_of_one_diagnosis_is_that_diagnosis_recall_without_a_warning() -> None:
    """Late labels often come one diagnosis at a time: balanced accuracy is then that
    diagnosis's recall, and the run log is not filled with scikit-learn's warnings about it."""
    one = pd.DataFrame({"label": ["mel"] * 4, "predicted_class": ["mel", "mel", "nv", "mel"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert live_accuracy(one) == (0.75, 0.75)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):  # what the helper silences
        balanced_accuracy_score(one["label"], one["predicted_class"])


def test_quality_report_markdown() -> None:
    table = quality_by_window(_joined())
    md = quality_report_markdown("ok", 5, 3, 0.8123, table).splitlines()
    assert md[0] == "**Status:** ok: 5 labelled predictions of v3; reference balanced accuracy 0.812"
    assert md[2:4] == ["| window | n | accuracy | balanced accuracy |", "|---|---|---|---|"]
    assert len(md) == 4 + len(table) and md[-1].startswith("| 2024-05-02 00:00:00+00:00 | 2 | 0.500 |")
    empty = pd.DataFrame(columns=list(QUALITY_WINDOW_COLUMNS))
    assert "reference balanced accuracy None" in quality_report_markdown("insufficient_data", 0, 3, None, empty)
