"""Classification metrics for lesion diagnosis.

What a library already computes is delegated to it: scikit-learn for the confusion
matrix, accuracy, balanced accuracy, precision/recall/F1, ROC AUC, log loss and the
calibration curve (it is what the ISIC 2018 task 3 scorer, ``isic-challenge-scoring``,
itself calls), scipy for the softmax. scikit-learn is a project dependency and is in the
AWS PyTorch framework image that runs training, evaluation and monitoring jobs (training
already fits its ``HistGradientBoostingClassifier``). Nothing under ``ml_code/package/``
(what ships inside ``model.tar.gz``) imports this module, and it must not: scikit-learn is
not guaranteed in the inference container.

Hand-written here, because no library provides them: the vectorised bootstraps (one
``bincount`` / one weighted rank sum for all resamples), test-time view averaging, the
temperature fit and the screening operating point.

Conventions follow the ISIC 2018 task 3 scoring: balanced accuracy is the mean per-class
recall of the argmax prediction over the classes present in ``y_true``; one-vs-rest AUCs
are averaged over the classes that have both positives and negatives.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special


def _skm():
    """``sklearn.metrics``, imported on first use: the Dagster code location imports this module
    (the registration gate's bootstrap, the challenger report) and its scikit-learn
    imports would otherwise be paid by every definitions load, step process and UI reload."""
    from sklearn import metrics

    return metrics

# ---------------------------------------------------------------------------------------
# Label-based metrics
# ---------------------------------------------------------------------------------------


def _labels(y: np.ndarray) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _checked(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D int labels of equal length inside ``[0, num_classes)``; scikit-learn would silently
    drop labels outside ``labels=range(num_classes)`` instead of refusing them."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{min(t.min(), p.min())}, {max(t.max(), p.max())}]")
    return t, p


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of items of true class ``i`` predicted as ``j``
    (``sklearn.metrics.confusion_matrix`` with ``labels=range(num_classes)``; all zeros
    for empty input, which scikit-learn refuses)."""
    t, p = _checked(y_true, y_pred, num_classes)
    if not t.size:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return _skm().confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.int64, copy=False)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of exact matches (``sklearn.metrics.accuracy_score``); NaN for empty input."""
    t, p = _labels(y_true), _labels(y_pred)
    return float(_skm().accuracy_score(t, p)) if t.size else float("nan")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """ISIC balanced multiclass accuracy: mean recall over the classes present in ``y_true``
    (``sklearn.metrics.balanced_accuracy_score``, whose definition this is). A class that is
    only ever predicted is no error here, so scikit-learn's warning about it is silenced.
    ``num_classes`` only bounds the labels; 0.0 for empty input."""
    t, p = _labels(y_true), _labels(y_pred)
    k = num_classes or int(max(t.max(initial=0), p.max(initial=0)) + 1)
    t, p = _checked(t, p, k)
    if not t.size:
        return 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        return float(_skm().balanced_accuracy_score(t, p))


@dataclass
class PRF:
    """Per-class precision/recall/F1 (``support`` = true count) and their averages."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> PRF:
    """Per-class and averaged P/R/F1 over all ``num_classes`` labels, 0 where undefined:
    ``sklearn.metrics.precision_recall_fscore_support(labels=range(num_classes),
    zero_division=0)``. The macro and support-weighted means are taken from those per-class
    values, as scikit-learn's ``average="macro"`` / ``"weighted"`` do."""
    t, p = _checked(y_true, y_pred, num_classes)
    if t.size:
        precision, recall, f1, support = _skm().precision_recall_fscore_support(
            t, p, labels=np.arange(num_classes), zero_division=0)
    else:
        precision = recall = f1 = np.zeros(num_classes)
        support = np.zeros(num_classes, dtype=np.int64)
    support = support.astype(np.int64)
    return PRF(
        precision, recall, f1, support,
        float(precision.mean()), float(recall.mean()), float(f1.mean()),
        float(_weighted(precision, support)), float(_weighted(recall, support)), float(_weighted(f1, support)),
    )


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest sensitivity TP/(TP+FN) and specificity TN/(TN+FP) per class, NaN when
    undefined, from ``sklearn.metrics.multilabel_confusion_matrix`` (per class
    ``[[TN, FP], [FN, TP]]``)."""
    t, p = _checked(y_true, y_pred, num_classes)
    if not t.size:
        nan = np.full(num_classes, np.nan)
        return nan, nan.copy()
    mcm = _skm().multilabel_confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.float64)
    tn, fp, fn, tp = mcm[:, 0, 0], mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn), tn / (tn + fp)


# Batched confusion-matrix arithmetic for the vectorised bootstrap below: scikit-learn takes
# one sample per call, and a call per resample and metric is ~1000x slower.


def _balanced_from_cm(cm: np.ndarray) -> np.ndarray:
    """Balanced accuracy from one ``(K, K)`` or a stack ``(B, K, K)`` of confusion matrices
    (the same definition as :func:`balanced_accuracy`)."""
    support = cm.sum(-1)
    recall = np.divide(np.diagonal(cm, axis1=-2, axis2=-1), support, out=np.zeros(support.shape), where=support > 0)
    present = support > 0
    return (recall * present).sum(-1) / np.maximum(present.sum(-1), 1)


def _fbeta_from_cm(cm: np.ndarray, beta: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F-beta (van Rijsbergen 1979: (1+b^2)PR/(b^2 P + R)) and
    support of a (stack of) confusion matrices, 0 where undefined (scikit-learn's
    ``zero_division=0``)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    pred_pos, support = cm.sum(-2).astype(np.float64), cm.sum(-1).astype(np.float64)
    precision = np.divide(tp, pred_pos, out=np.zeros_like(tp), where=pred_pos > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    b2 = beta * beta
    denom = b2 * precision + recall
    f = np.divide((1 + b2) * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f, support


def _weighted(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Support-weighted mean along the last axis (0 when there is no support at all)."""
    total = support.sum(-1)
    return np.divide((values * support).sum(-1), total, out=np.zeros(np.shape(total)), where=total > 0)


# ---------------------------------------------------------------------------------------
# Score-based metrics
# ---------------------------------------------------------------------------------------


def binary_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (``sklearn.metrics.roc_auc_score``; tied scores count one half, i.e. the
    Mann-Whitney U statistic / (n_pos * n_neg)). NaN if one class is absent, where
    scikit-learn raises."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if t.all() or not t.any():
        return float("nan")
    return float(_skm().roc_auc_score(t, s))


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class one-vs-rest AUCs and their macro mean over the classes that have an AUC.

    One binary ``roc_auc_score`` per column, as the ISIC 2018 scorer does, rather than
    ``roc_auc_score(multi_class="ovr")``: that one refuses a class absent from ``y_true``
    and rows that do not sum to 1, where the ISIC convention averages over the classes
    present and AUC only needs each column's order."""
    t = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    per_class = np.array([binary_auc(t == k, p[:, k]) for k in range(p.shape[1])])
    valid = ~np.isnan(per_class)
    return per_class, float(per_class[valid].mean()) if valid.any() else float("nan")


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class, probabilities clipped to
    ``[1e-12, 1]`` (``sklearn.metrics.log_loss`` with ``labels=range(C)``; the clip is done
    here because scikit-learn's own is at machine epsilon, which would change reported
    values of confidently wrong items). Rows are taken as given, not renormalised, so
    scikit-learn's warning about rows not summing to 1 is silenced."""
    t = _labels(y_true)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    if not t.size:
        return float("nan")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one", category=UserWarning)
        return float(_skm().log_loss(t, p, labels=np.arange(p.shape[1])))


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------


@dataclass
class Reliability:
    """Equal-width confidence bins: mean confidence, accuracy and count per bin."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    ece: float


def reliability(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> Reliability:
    """Top-label calibration (Guo et al. 2017, "On Calibration of Modern Neural Networks",
    eq. 3): ECE = sum_b |acc_b - conf_b| * n_b / N over equal-width bins ``(lo, hi]`` of the
    max probability.

    The per-bin means come from ``sklearn.calibration.calibration_curve(correct, confidence,
    strategy="uniform")``, whose binning (``searchsorted`` on the inner edges) is exactly
    ``(lo, hi]`` with 0 in the first bin; it returns non-empty bins only, so the counts are
    taken here with the same binning and empty bins report NaN."""
    t = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    mean_conf, mean_acc = np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    if not t.size:
        return Reliability(edges, mean_conf, mean_acc, np.zeros(n_bins, dtype=np.int64), 0.0)
    conf = p.max(1)
    correct = (p.argmax(1) == t).astype(np.float64)
    count = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=n_bins).astype(np.int64)
    used = count > 0
    from sklearn.calibration import calibration_curve

    mean_acc[used], mean_conf[used] = calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
    ece = float((count[used] * np.abs(mean_acc[used] - mean_conf[used])).sum() / t.size)
    return Reliability(edges, mean_conf, mean_acc, count, ece)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / T)`` (``scipy.special.softmax``, max-shifted)."""
    return special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def view_probs(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` averaged over test-time views: ``view_logits`` is ``(V, N, C)``
    (or ``(N, C)``, one view). The average of probabilities, as the endpoint serves it
    (the endpoint computes it in torch, ``ml_code/package/model.py``, as the package cannot
    import this module)."""
    z = np.asarray(view_logits, dtype=np.float64)
    if z.ndim == 2:
        return softmax(z, temperature)
    return np.mean([softmax(v, temperature) for v in z], axis=0)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """Temperature minimising validation NLL (temperature scaling, Guo et al. 2017, sec. 4.2),
    by golden-section search on log T (Kiefer 1953).

    ``logits`` is ``(N, C)``, or ``(V, N, C)`` for test-time views: then the NLL is that of
    the view-averaged probabilities (:func:`view_probs`), the calibration actually served.
    For one view NLL is convex in 1/T, hence unimodal in log T, so a 1-D search finds the
    optimum without an optimiser dependency; an average of views carries no such guarantee,
    and the search then returns a local optimum inside ``[lo, hi]``. Kept hand-written (not
    ``scipy.optimize.minimize_scalar``) so fitted temperatures of existing packages are
    reproduced to the digit; it is the views-averaged objective no library offers."""
    t = _labels(y_true)
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[-2] == 0:
        return 1.0

    def nll(log_temp: float) -> float:
        return log_loss(t, view_probs(z, float(np.exp(log_temp))))

    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5.0) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
        if b - a < 1e-6:
            break
    return float(np.exp((a + b) / 2))


# ---------------------------------------------------------------------------------------
# Uncertainty and operating points
# ---------------------------------------------------------------------------------------


@dataclass
class Interval:
    """A point estimate with its percentile-bootstrap interval and the bootstrap standard error."""

    estimate: float
    low: float
    high: float
    std: float


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap CI (Efron & Tibshirani 1993, ch. 13) of ``metric(y_true, probs)``,
    resampling test items (rows of both arrays together) with replacement.

    Seeded, so reports are reproducible. Resamples where the metric is undefined (NaN) are
    dropped. Not ``scipy.stats.bootstrap``: it draws the same resamples
    (``default_rng(seed).integers(0, n, (n_resamples, n))``) and takes the same
    linearly interpolated percentiles (``tests/ml_code/test_metrics.py`` checks this), but it
    returns a NaN interval as soon as one resample's metric is undefined (a rare class
    absent from a resample: a per-class AUC) and refuses samples of one item, so the
    intervals this module publishes would change; the vectorised variants below also need
    the resample indices themselves.
    """
    t = _labels(y_true)
    p = np.asarray(probs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, t.size, size=(n_resamples, t.size))
    values = np.array([metric(t[i], p[i]) for i in idx], dtype=np.float64)
    return _interval(metric(t, p), values, alpha)


def _interval(estimate: float, values: np.ndarray, alpha: float) -> Interval:
    """Percentile interval ``[alpha/2, 1 - alpha/2]`` (``np.quantile``, linear) of the defined
    bootstrap values, and their standard deviation (ddof=1) as the standard error."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(float(estimate), float("nan"), float("nan"), float("nan"))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(lo), float(hi), float(values.std(ddof=1)) if values.size > 1 else 0.0)


def bootstrap_label_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, Interval]:
    """Vectorised bootstrap of every confusion-matrix metric (accuracy, balanced accuracy,
    macro/weighted P/R/F1, weighted F0.5/F2) - one ``bincount`` for all resamples.

    The same resamples and percentiles as :func:`bootstrap_ci` (so as ``scipy.stats.bootstrap``
    with ``method="percentile"``), without a scikit-learn call per resample and metric."""
    t, p = _labels(y_true), _labels(y_pred)
    n, k = t.size, num_classes
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    cell = t[idx] * k + p[idx] + (np.arange(n_resamples) * k * k)[:, None]
    cms = np.bincount(cell.ravel(), minlength=n_resamples * k * k).reshape(n_resamples, k, k)
    full = confusion_matrix(t, p, k)[None]

    def all_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        total = cm.sum((-1, -2)).astype(np.float64)
        out["accuracy"] = np.trace(cm, axis1=-2, axis2=-1) / np.maximum(total, 1)
        out["balanced_accuracy"] = _balanced_from_cm(cm)
        for beta, suffix in ((1.0, "f1"), (0.5, "f0_5"), (2.0, "f2")):
            prec, rec, f, support = _fbeta_from_cm(cm, beta)
            out[f"weighted_{suffix}"] = _weighted(f, support)
            if suffix == "f1":
                out["macro_f1"] = f.mean(-1)
                out["macro_precision"], out["macro_recall"] = prec.mean(-1), rec.mean(-1)
                out["weighted_precision"], out["weighted_recall"] = _weighted(prec, support), _weighted(rec, support)
        return out

    point, boot = all_metrics(full), all_metrics(cms)
    return {name: _interval(float(point[name][0]), boot[name], alpha) for name in point}


def bootstrap_macro_auc(
    y_true: np.ndarray, probs: np.ndarray, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> Interval:
    """Bootstrap CI of the macro one-vs-rest AUC; uses the ranks of the full sample, so each
    resample costs a weighted sum instead of a sort (ranks within a resample are the
    full-sample ranks compressed, and AUC depends only on their order and ties)."""
    t = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    # Multiplicity of each item in each resample: AUC over a multiset via counts.
    counts = np.bincount((idx + (np.arange(n_resamples) * n)[:, None]).ravel(), minlength=n_resamples * n)
    counts = counts.reshape(n_resamples, n).astype(np.float64)
    aucs = np.full((n_resamples, k), np.nan)
    for c in range(k):
        pos = t == c
        if pos.all() or not pos.any():
            continue
        order = np.argsort(p[:, c], kind="mergesort")
        s = p[order, c]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups in sorted order
        w = counts[:, order]
        gp = np.add.reduceat(w * pos[order], starts, axis=1)
        gn = np.add.reduceat(w * ~pos[order], starts, axis=1)
        neg_below = np.cumsum(gn, axis=1) - gn
        u = (gp * (neg_below + 0.5 * gn)).sum(1)
        npos, nneg = gp.sum(1), gn.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs[:, c] = np.where((npos > 0) & (nneg > 0), u / (npos * nneg), np.nan)
    with np.errstate(invalid="ignore"):
        macro = np.nanmean(np.where(np.isnan(aucs).all(1, keepdims=True), 0.0, aucs), axis=1)
    macro[np.isnan(aucs).all(1)] = np.nan
    return _interval(roc_auc_ovr(t, p)[1], macro, alpha)


@dataclass
class OperatingPoint:
    """A one-vs-rest decision threshold chosen on validation, measured on test."""

    class_index: int
    target_sensitivity: float
    threshold: float
    val_sensitivity: float
    val_specificity: float
    test_sensitivity: float
    test_specificity: float


def operating_point(
    class_index: int,
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    target_sensitivity: float = 0.9,
) -> OperatingPoint:
    """Highest threshold on ``P(class)`` whose validation sensitivity reaches the target
    (the most specific screening rule that still catches that share), then apply it to test."""
    yv = _labels(y_val) == class_index
    sv = np.asarray(p_val, dtype=np.float64)[:, class_index]
    if not yv.any():
        raise ValueError(f"validation split has no items of class {class_index}; cannot pick an operating point")
    pos_scores = np.sort(sv[yv])[::-1]
    need = int(np.ceil(target_sensitivity * pos_scores.size))
    threshold = float(pos_scores[max(need, 1) - 1])

    def rates(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
        pred = s >= threshold
        sens = float(pred[y].mean()) if y.any() else float("nan")
        spec = float((~pred[~y]).mean()) if (~y).any() else float("nan")
        return sens, spec

    vs, vsp = rates(yv, sv)
    ts, tsp = rates(_labels(y_test) == class_index, np.asarray(p_test, dtype=np.float64)[:, class_index])
    return OperatingPoint(class_index, target_sensitivity, threshold, vs, vsp, ts, tsp)
