"""ml_code.metrics agrees with scikit-learn and with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from ml_code import metrics as M

K = 7


@pytest.fixture
def scored():
    """Fixed, imbalanced 7-class predictions with ties in the scores (rounded to 0.05)."""
    rng = np.random.default_rng(7)
    y = rng.choice(K, size=400, p=[0.05, 0.08, 0.12, 0.04, 0.12, 0.55, 0.04])
    logits = rng.normal(size=(400, K)) + 2.0 * np.eye(K)[y]
    probs = M.softmax(logits)
    probs = np.round(probs * 20) / 20 + 1e-9
    probs /= probs.sum(1, keepdims=True)
    return y, probs


def test_confusion_accuracy_balanced(scored):
    y, p = scored
    pred = p.argmax(1)
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, K), skm.confusion_matrix(y, pred, labels=range(K)))
    assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert M.balanced_accuracy(y, pred, K) == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_balanced_accuracy_ignores_classes_absent_from_truth():
    # Class 2 is only ever predicted, never true: ISIC (and sklearn) average recall over true classes.
    y = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 2, 1, 1, 2])
    assert M.balanced_accuracy(y, pred, 3) == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.warns(UserWarning):
        assert M.balanced_accuracy(y, pred, 3) == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_precision_recall_f1_macro_weighted(scored):
    y, p = scored
    pred = p.argmax(1)
    prf = M.precision_recall_f1(y, pred, K)
    sp, sr, sf, ss = skm.precision_recall_fscore_support(y, pred, labels=range(K), zero_division=0)
    np.testing.assert_allclose(prf.precision, sp)
    np.testing.assert_allclose(prf.recall, sr)
    np.testing.assert_allclose(prf.f1, sf)
    np.testing.assert_array_equal(prf.support, ss)
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(y, pred, labels=range(K), average=avg, zero_division=0)
        assert getattr(prf, f"{avg}_precision") == pytest.approx(ap)
        assert getattr(prf, f"{avg}_recall") == pytest.approx(ar)
        assert getattr(prf, f"{avg}_f1") == pytest.approx(af)


def test_sensitivity_specificity(scored):
    y, p = scored
    pred = p.argmax(1)
    sens, spec = M.sensitivity_specificity(y, pred, K)
    for k in range(K):
        tn, fp, fn, tp = skm.confusion_matrix(y == k, pred == k, labels=[False, True]).ravel()
        assert sens[k] == pytest.approx(tp / (tp + fn))
        assert spec[k] == pytest.approx(tn / (tn + fp))


def test_auc_matches_sklearn_with_ties(scored):
    y, p = scored
    per_class, macro = M.roc_auc_ovr(y, p)
    assert macro == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    for k in range(K):
        assert per_class[k] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
    assert M.binary_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(M.binary_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_log_loss(scored):
    y, p = scored
    assert M.log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=range(K)))


def test_ece_hand_computed():
    # Two bins used (width 0.5): (0.5, 1] holds confidences 0.9, 0.9, 0.6 -> conf mean 0.8, two
    # correct -> acc 2/3; (0, 0.5] holds 0.4 -> conf 0.4, correct -> acc 1.
    # ECE = 3/4 * |2/3 - 0.8| + 1/4 * |1 - 0.4| = 0.1 + 0.15 = 0.25.
    probs = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.4, 0.3, 0.3]])
    y = np.array([0, 1, 0, 0])
    rel = M.reliability(y, probs, n_bins=2)
    assert rel.ece == pytest.approx(0.25)
    np.testing.assert_array_equal(rel.count, [1, 3])
    np.testing.assert_allclose(rel.accuracy, [1.0, 2 / 3])


def test_temperature_scaling_recovers_known_temperature():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(4000, 5)) * 2
    y = np.array([rng.choice(5, p=row) for row in M.softmax(true_logits)])
    overconfident = true_logits * 3.0  # a model 3x too sharp: the fitted T should be ~3
    t = M.fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert M.log_loss(y, M.softmax(overconfident, t)) < M.log_loss(y, M.softmax(overconfident))


def test_bootstrap_ci_contains_estimate_and_is_deterministic(scored):
    y, p = scored
    pred = p.argmax(1)
    a = M.bootstrap_label_metrics(y, pred, K, n_resamples=1000, seed=3)
    b = M.bootstrap_label_metrics(y, pred, K, n_resamples=1000, seed=3)
    ba = a["balanced_accuracy"]
    assert ba.estimate == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert ba.low < ba.estimate < ba.high
    assert (ba.low, ba.high) == (b["balanced_accuracy"].low, b["balanced_accuracy"].high)
    # The vectorised bootstrap equals the generic one on the same resamples.
    generic = M.bootstrap_ci(y, pred, lambda t, q: M.balanced_accuracy(t, q, K), 1000, seed=3)
    assert (generic.low, generic.high) == pytest.approx((ba.low, ba.high))
    auc = M.bootstrap_macro_auc(y, p, n_resamples=1000, seed=3)
    assert auc.low < auc.estimate < auc.high
    assert auc == M.bootstrap_macro_auc(y, p, n_resamples=1000, seed=3)
    generic_auc = M.bootstrap_ci(y, p, lambda t, q: M.roc_auc_ovr(t, q)[1], 200, seed=5)
    fast_auc = M.bootstrap_macro_auc(y, p, n_resamples=200, seed=5)
    assert (fast_auc.low, fast_auc.high) == pytest.approx((generic_auc.low, generic_auc.high))
    assert M.bootstrap_label_metrics(y, pred, K, 1000, seed=4)["balanced_accuracy"].low != ba.low


def test_operating_point_reaches_target_sensitivity_on_val(scored):
    y, p = scored
    op = M.operating_point(4, y[:200], p[:200], y[200:], p[200:], target_sensitivity=0.9)
    assert op.val_sensitivity >= 0.9
    pos = y[:200] == 4
    # It is the highest such threshold: nudging it up loses sensitivity.
    assert np.mean(p[:200][pos, 4] > op.threshold) < 0.9
    pred = p[200:, 4] >= op.threshold
    assert op.test_sensitivity == pytest.approx(np.mean(pred[y[200:] == 4]))
    with pytest.raises(ValueError, match="no items of class"):
        M.operating_point(4, np.zeros(5, int), p[:5], y, p)


def test_auc_over_present_classes_only():
    # Class 2 never occurs in y_true: no AUC for it, the macro mean is over classes 0 and 1
    # (the ISIC scorer's convention), where sklearn's multi_class="ovr" refuses the input.
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    per_class, macro = M.roc_auc_ovr(y, p)
    assert np.isnan(per_class[2])
    expected = [skm.roc_auc_score(y == k, p[:, k]) for k in (0, 1)]
    np.testing.assert_allclose(per_class[:2], expected)
    assert macro == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError):
        skm.roc_auc_score(y, p, multi_class="ovr")


def test_single_class_inputs():
    y = np.zeros(6, dtype=int)
    p = np.tile([0.7, 0.2, 0.1], (6, 1))
    p[1] = [0.2, 0.7, 0.1]
    per_class, macro = M.roc_auc_ovr(y, p)
    assert np.isnan(per_class).all() and np.isnan(macro)
    pred = p.argmax(1)
    assert M.balanced_accuracy(y, pred, 3) == pytest.approx(5 / 6)
    assert M.accuracy(y, pred) == pytest.approx(5 / 6)
    sens, spec = M.sensitivity_specificity(y, pred, 3)
    assert sens[0] == pytest.approx(5 / 6) and np.isnan(sens[1]) and np.isnan(spec[0])
    assert M.precision_recall_f1(y, pred, 3).support.tolist() == [6, 0, 0]
    assert np.isnan(M.bootstrap_macro_auc(y, p, n_resamples=20).low)


def test_probabilities_not_summing_to_one(scored):
    y, p = scored
    scaled = p * 0.5  # AUC depends on each column's order only; log loss takes p[true] as given
    _, macro = M.roc_auc_ovr(y, scaled)
    assert macro == pytest.approx(M.roc_auc_ovr(y, p)[1])
    assert M.log_loss(y, scaled) == pytest.approx(M.log_loss(y, p) + np.log(2))
    assert M.reliability(y, scaled, 10).count.sum() == len(y)
    # A zero probability for the true class is clipped at 1e-12, not at machine epsilon.
    assert M.log_loss(np.array([0]), np.array([[0.0, 1.0]])) == pytest.approx(-np.log(1e-12))


def test_empty_inputs():
    e = np.array([], dtype=int)
    assert M.confusion_matrix(e, e, 3).tolist() == [[0] * 3] * 3
    assert np.isnan(M.accuracy(e, e))
    assert M.balanced_accuracy(e, e, 3) == 0.0
    assert M.precision_recall_f1(e, e, 3).macro_f1 == 0.0
    assert M.reliability(e, np.zeros((0, 3)), 4).ece == 0.0


def test_labels_out_of_range_are_refused():
    with pytest.raises(ValueError, match="labels must lie"):
        M.confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="labels must lie"):
        M.precision_recall_f1([0, 1], [0, -1], 3)


def test_reliability_matches_sklearn_calibration_curve(scored):
    from sklearn.calibration import calibration_curve

    y, p = scored
    rel = M.reliability(y, p, 15)
    acc, conf = calibration_curve(p.argmax(1) == y, p.max(1), n_bins=15, strategy="uniform")
    used = rel.count > 0
    np.testing.assert_allclose(rel.accuracy[used], acc)
    np.testing.assert_allclose(rel.confidence[used], conf)
    assert rel.ece == pytest.approx(np.sum(rel.count[used] * np.abs(acc - conf)) / len(y))


def test_bootstrap_matches_scipy_percentile_bootstrap(scored):
    """Same resamples and percentiles as scipy.stats.bootstrap(method="percentile") where every
    resample's metric is defined (scipy would return NaN otherwise; ours drops those resamples)."""
    from scipy import stats

    y, p = scored
    pred = p.argmax(1)

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.array([skm.balanced_accuracy_score(y[i], pred[i]) for i in idx.reshape(-1, len(y))])

    res = stats.bootstrap((np.arange(len(y)),), stat, n_resamples=300, vectorized=True, method="percentile",
                          rng=np.random.default_rng(11))
    ours = M.bootstrap_label_metrics(y, pred, K, n_resamples=300, seed=11)["balanced_accuracy"]
    assert (ours.low, ours.high) == pytest.approx(tuple(res.confidence_interval), rel=1e-12)
    assert ours.std == pytest.approx(res.standard_error, rel=1e-12)


def test_model_package_does_not_import_metrics_or_sklearn():
    """ml_code/package ships inside model.tar.gz; the inference container need not have scikit-learn."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "ml_code" / "package"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.col_offset == 0:
                assert not (node.module or "").startswith(("ml_code", "sklearn")), f"{path.name}: {node.module}"
                assert "metrics" not in {a.name for a in node.names}, path.name
            if isinstance(node, ast.Import) and node.col_offset == 0:
                assert not any(a.name.startswith(("ml_code", "sklearn")) for a in node.names), path.name
