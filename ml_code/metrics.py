"""Classification metrics for lesion diagnosis, in pure NumPy.

Pure NumPy so the same numbers come out in the training container, the evaluation job
and the monitoring code without scikit-learn at run time (tests check each against
scikit-learn). Conventions follow the ISIC 2018 task 3 scoring: balanced accuracy is the
mean per-class recall of the argmax prediction over the classes present in ``y_true``;
one-vs-rest AUCs are averaged over classes that have both positives and negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# ---------------------------------------------------------------------------------------
# Label-based metrics
# ---------------------------------------------------------------------------------------


def _labels(y: np.ndarray) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of items of true class ``i`` predicted as ``j``."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{min(t.min(), p.min())}, {max(t.max(), p.max())}]")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    t, p = _labels(y_true), _labels(y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def _balanced_from_cm(cm: np.ndarray) -> np.ndarray:
    """Balanced accuracy from one ``(K, K)`` or a stack ``(B, K, K)`` of confusion matrices."""
    support = cm.sum(-1)
    recall = np.divide(np.diagonal(cm, axis1=-2, axis2=-1), support, out=np.zeros(support.shape), where=support > 0)
    present = support > 0
    return (recall * present).sum(-1) / np.maximum(present.sum(-1), 1)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """ISIC balanced multiclass accuracy: mean recall over the classes present in ``y_true``."""
    t, p = _labels(y_true), _labels(y_pred)
    k = num_classes or int(max(t.max(initial=0), p.max(initial=0)) + 1)
    return float(_balanced_from_cm(confusion_matrix(t, p, k)))


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


def _fbeta_from_cm(cm: np.ndarray, beta: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    pred_pos, support = cm.sum(-2).astype(np.float64), cm.sum(-1).astype(np.float64)
    precision = np.divide(tp, pred_pos, out=np.zeros_like(tp), where=pred_pos > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    b2 = beta * beta
    denom = b2 * precision + recall
    f = np.divide((1 + b2) * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f, support


def _weighted(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    total = support.sum(-1)
    return np.divide((values * support).sum(-1), total, out=np.zeros(np.shape(total)), where=total > 0)


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> PRF:
    """Per-class and averaged P/R/F1 over all ``num_classes`` labels (0 where undefined,
    as scikit-learn with ``zero_division=0`` and ``labels=range(num_classes)``)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    precision, recall, f1, support = _fbeta_from_cm(cm)
    return PRF(
        precision, recall, f1, support.astype(np.int64),
        float(precision.mean()), float(recall.mean()), float(f1.mean()),
        float(_weighted(precision, support)), float(_weighted(recall, support)), float(_weighted(f1, support)),
    )


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest sensitivity (recall) and specificity per class (NaN when undefined)."""
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp = np.diag(cm)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn), tn / (tn + fp)


# ---------------------------------------------------------------------------------------
# Score-based metrics
# ---------------------------------------------------------------------------------------


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties sharing their average rank."""
    order = np.argsort(x, axis=-1, kind="mergesort")
    sx = np.take_along_axis(x, order, -1)
    n = x.shape[-1]
    ranks_sorted = np.empty(x.shape, dtype=np.float64)
    flat_sx = sx.reshape(-1, n)
    flat_r = ranks_sorted.reshape(-1, n)
    for row in range(flat_sx.shape[0]):
        v = flat_sx[row]
        new_group = np.r_[True, v[1:] != v[:-1]]
        starts = np.flatnonzero(new_group)
        ends = np.r_[starts[1:], n]
        group_rank = (starts + ends + 1) / 2.0  # average of 1-based positions start+1..end
        flat_r[row] = np.repeat(group_rank, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, -1)
    return ranks


def binary_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic (ties count one half). NaN if one class is absent."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class one-vs-rest AUCs and their macro mean (over classes with an AUC)."""
    t = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    per_class = np.array([binary_auc(t == k, p[:, k]) for k in range(p.shape[1])])
    valid = ~np.isnan(per_class)
    return per_class, float(per_class[valid].mean()) if valid.any() else float("nan")


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    t = _labels(y_true)
    p = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(t.size), t], 1e-12, 1.0)
    return float(-np.log(p).mean())


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
    """Top-label calibration (Guo et al. 2017): ECE = sum_b |acc_b - conf_b| * n_b / N,
    with bins ``(lo, hi]`` over the max probability."""
    t = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(1)
    correct = (p.argmax(1) == t).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bin_idx, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(bin_idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(bin_idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, mean_acc = sum_conf / count, sum_acc / count
    ece = float(np.abs(sum_acc - sum_conf).sum() / max(t.size, 1))
    return Reliability(edges, mean_conf, mean_acc, count, ece)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    return reliability(y_true, probs, n_bins).ece


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def view_probs(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` averaged over test-time views: ``view_logits`` is ``(V, N, C)``
    (or ``(N, C)``, one view). The average of probabilities, as the endpoint serves it."""
    z = np.asarray(view_logits, dtype=np.float64)
    if z.ndim == 2:
        return softmax(z, temperature)
    return np.mean([softmax(v, temperature) for v in z], axis=0)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """Temperature minimising validation NLL (golden-section search on log T).

    ``logits`` is ``(N, C)``, or ``(V, N, C)`` for test-time views: then the NLL is that of
    the view-averaged probabilities (:func:`view_probs`), the calibration actually served.
    For one view NLL is convex in 1/T, hence unimodal in log T, so a 1-D search finds the
    optimum without an optimiser dependency; an average of views carries no such guarantee,
    and the search then returns a local optimum inside ``[lo, hi]``."""
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
    """Percentile bootstrap CI of ``metric(y_true, probs)`` resampling test items with replacement.

    Seeded, so reports are reproducible. Resamples where the metric is undefined (NaN) are dropped.
    """
    t = _labels(y_true)
    p = np.asarray(probs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, t.size, size=(n_resamples, t.size))
    values = np.array([metric(t[i], p[i]) for i in idx], dtype=np.float64)
    return _interval(metric(t, p), values, alpha)


def _interval(estimate: float, values: np.ndarray, alpha: float) -> Interval:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(float(estimate), float("nan"), float("nan"), float("nan"))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(lo), float(hi), float(values.std(ddof=1)) if values.size > 1 else 0.0)


def bootstrap_label_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, Interval]:
    """Vectorised bootstrap of every confusion-matrix metric (accuracy, balanced accuracy,
    macro/weighted P/R/F1, weighted F0.5/F2) - one ``bincount`` for all resamples."""
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
