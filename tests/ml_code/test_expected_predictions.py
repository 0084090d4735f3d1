"""The prediction-drift baseline expects the dataset's case mix, not a small split's."""

import numpy as np

from ml_code.monitoring.baseline import expected_prediction_distribution


def test_a_skewed_held_out_split_still_gives_the_datasets_prediction_mix() -> None:
    # A perfect classifier: whatever the held-out split's class mix, the expected prediction
    # mix is the dataset prior (3 classes, uniform), not the split's 8:1:1.
    true = np.array([0] * 8 + [1] + [2])
    prior = np.full(3, 1 / 3)
    np.testing.assert_allclose(expected_prediction_distribution(true, true, prior), prior)
    # The raw proportions would have been 0.8 / 0.1 / 0.1.


def test_confusion_rows_are_weighted_by_the_prior_and_missing_classes_predict_themselves() -> None:
    true = np.array([0, 0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 0, 1, 1, 0])  # class 0: 75% right; class 1: 50%; class 2: no image
    prior = np.array([0.5, 0.3, 0.2])
    got = expected_prediction_distribution(predicted, true, prior)
    want = 0.5 * np.array([0.75, 0.25, 0]) + 0.3 * np.array([0.5, 0.5, 0]) + 0.2 * np.array([0, 0, 1])
    np.testing.assert_allclose(got, want)
    assert abs(got.sum() - 1) < 1e-12
