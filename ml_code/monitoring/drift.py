"""Drift statistics between a model's baseline and the traffic it now serves.

Five complementary tests, each answering a different question:

* **PSI** (population stability index) per image feature: *how much* did the
  distribution move? Bins come from baseline quantiles, so every bin is equally likely
  under the baseline; open outer bins catch values beyond the baseline's range.
* **Kolmogorov-Smirnov** per feature: *is* the move more than sampling noise? PSI alone
  is noisy at ~100 requests (its null mean is about (bins-1)/n), so a feature counts as
  drifted only when both agree.
* **MMD** (maximum mean discrepancy, RBF kernel, median-heuristic bandwidth) on the
  model's penultimate-layer embeddings, with a seeded permutation test: catches shifts the
  hand-made features miss, in the space the classifier actually uses. The embeddings are
  compared under a fixed random projection to 32 numbers (``ml_code.package.drift_embedding``),
  which the endpoint returns with each answer, so the monitor never runs the network.
* **Prediction drift**: PSI and a chi-square test of predicted-class counts against the
  baseline's predicted-class distribution (label-free early warning of prior shift).
* **Case mix** (``ml_code.monitoring.casemix``): the clinical context requests carry - age (PSI and
  KS, the feature thresholds), sex and body region (PSI and chi-square, the prediction
  thresholds) - against the training split's, among the requests that sent each field.
  The share of requests that send any context is reported too: a fall below the
  baseline's by more than ``context_share_drop`` is a ``completeness_check`` violation
  (the model is less accurate without context), not drift.

``drift_verdict`` combines them with the thresholds below and refuses to conclude
("insufficient_data") on fewer than ``min_requests`` captured requests.

Thresholds (``DriftThresholds``, stored in ``constraints.json`` so a baseline carries its own):

=========================  =======  ===========================================
``min_requests``            50       fewer requests -> status ``insufficient_data``
``psi``                     0.2      industry-standard "significant shift" PSI
``ks_alpha``                0.001    KS p-value below which a PSI shift is real
``min_drifted_features``    3        features needed (PSI and KS) for data drift
``mmd_alpha``               0.001    embedding MMD permutation p-value (1999 permutations)
``prediction_psi``          0.2      predicted-class PSI ...
``prediction_alpha``        0.001    ... and chi-square p-value, both needed
``context_share_drop``      0.2      fall in the share of requests with clinical context
=========================  =======  ===========================================

Why such small alphas: with ~11 features, a 0.01 KS alpha flags one feature in roughly
one of ten in-distribution windows, and the monitor runs hourly; tuned on synthetic
lesion images (tests/ml_code/test_drift.py), alpha 0.001 with three features gives no
false alarm at 60-200 requests while colour-normalised or contrast-stretched traffic
still shows PSI of 1-16 on 6-10 features.

``drift_score`` is in [0, 1] and is >= 0.5 exactly when ``drift_detected``: each test maps
to a score that reaches 0.5 at its threshold, and the report takes the maximum.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml_code.atomic import write_json_atomic
from ml_code.monitoring.casemix import UNKNOWN, with_context

PSI_EPS = 1e-4
DEFAULT_BINS = 10


@dataclass(frozen=True)
class DriftThresholds:
    """Documented decision thresholds (see the module docstring for why each value)."""

    min_requests: int = 50
    psi: float = 0.2
    ks_alpha: float = 0.001
    min_drifted_features: int = 3
    mmd_alpha: float = 0.001
    prediction_psi: float = 0.2
    prediction_alpha: float = 0.001
    context_share_drop: float = 0.2

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "DriftThresholds":
        values = dict(values or {})
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)


# -- PSI --------------------------------------------------------------------------------

def psi_edges(baseline: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Bin edges from baseline quantiles, for ``np.searchsorted(edges, x, side="right")``.

    Edges are the unique quantiles at 0, 1/B, ..., (B-1)/B plus one just above the
    baseline maximum, giving buckets ``x < min`` | quantile bins | ``x > max``. Duplicate
    quantiles (discrete or constant features, e.g. image width) collapse, so a constant
    baseline still yields three meaningful buckets: below, equal, above.
    """
    values = np.asarray(baseline, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("psi_edges: the baseline has no finite values; recompute the baseline "
                         "(python -m ml_code.monitoring.baseline) on a non-empty training split.")
    qs = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)[:-1])
    top = np.nextafter(values.max(), np.inf)
    return np.unique(np.append(qs, top))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bucket (``len(edges) + 1`` buckets); non-finite values are ignored."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return np.bincount(idx, minlength=len(edges) + 1)


def psi_from_counts(expected: Sequence[float], actual: Sequence[float], eps: float = PSI_EPS) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bucket proportions.

    Empty buckets would make the log infinite, so proportions are floored at ``eps``:
    a bucket the baseline never saw but traffic fills then contributes about
    ``a * ln(a / eps)`` - large, as it should be, but finite.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"psi_from_counts: {e.shape} expected buckets vs {a.shape} actual buckets")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi_from_counts: both distributions need at least one observation")
    pe = np.maximum(e / e.sum(), eps)
    pa = np.maximum(a / a.sum(), eps)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def psi(baseline: np.ndarray, current: np.ndarray, n_bins: int = DEFAULT_BINS,
        edges: np.ndarray | None = None, eps: float = PSI_EPS) -> float:
    """PSI of ``current`` against ``baseline`` with baseline-quantile bins."""
    edges = psi_edges(baseline, n_bins) if edges is None else np.asarray(edges)
    return psi_from_counts(bin_counts(baseline, edges), bin_counts(current, edges), eps)


# -- KS ---------------------------------------------------------------------------------

def ks_test(baseline: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (SciPy's ``ks_2samp``)."""
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    b, c = b[np.isfinite(b)], c[np.isfinite(c)]
    if b.size == 0 or c.size == 0:
        raise ValueError("ks_test: both samples need at least one finite value")
    from scipy import stats  # here: the Dagster code location imports this module

    res = stats.ks_2samp(b, c)
    return float(res.statistic), float(res.pvalue)


# -- MMD --------------------------------------------------------------------------------

def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", z, z)
    d = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d, 0.0, out=d)
    return d


def _mmd2_batch(k: np.ndarray, assign: np.ndarray, n: int) -> np.ndarray:
    """Unbiased MMD^2 for many splits at once.

    ``assign`` is (N, P) with 1 where a pooled row belongs to the first sample (n ones per
    column). With K the pooled kernel, a an indicator column and r = K 1:
    a'Ka = sum over x pairs, a'K(1-a) = a'r - a'Ka, (1-a)'K(1-a) = 1'K1 - 2a'r + a'Ka;
    diagonals are removed for the unbiased estimator. One matrix product covers all
    permutations, so 2000 permutations cost about as much as a few kernel evaluations.
    """
    total_n = k.shape[0]
    m = total_n - n
    r = k.sum(axis=1)
    total = r.sum()
    diag = np.diag(k)
    ka = k @ assign
    sxx = np.einsum("ij,ij->j", assign, ka)
    ar = r @ assign
    sxy = ar - sxx
    syy = total - 2.0 * ar + sxx
    dx = diag @ assign
    dy = diag.sum() - dx
    return (sxx - dx) / (n * (n - 1)) + (syy - dy) / (m * (m - 1)) - 2.0 * sxy / (n * m)


@dataclass
class MMDResult:
    mmd2: float
    p_value: float
    bandwidth: float
    n_baseline: int
    n_current: int
    n_permutations: int


def mmd_test(baseline: np.ndarray, current: np.ndarray, n_permutations: int = 1999, seed: int = 0,
             max_samples: int = 500, bandwidth: float | None = None) -> MMDResult:
    """RBF-kernel MMD with a permutation-test p-value.

    Cost is bounded: each sample is subsampled (seeded) to ``max_samples`` rows, the pooled
    kernel matrix is computed once, and each permutation only re-indexes it, so a test is
    O(P * (n + m)^2) flops in a few matrix products, with n + m <= 2 * max_samples. Features are standardised with the
    baseline's mean/std so no single embedding dimension dominates the distance. Bandwidth
    defaults to the median heuristic (median pairwise distance of the pooled sample).
    The p-value is (1 + #perm >= observed) / (1 + P), never exactly 0.
    """
    x = np.asarray(baseline, dtype=np.float64)
    y = np.asarray(current, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd_test: need 2-D samples with the same width, got {x.shape} and {y.shape}; "
                         "were the embeddings computed with the same model?")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("mmd_test: need at least 2 rows in each sample")
    rng = np.random.default_rng(seed)
    if len(x) > max_samples:
        x = x[rng.choice(len(x), max_samples, replace=False)]
    if len(y) > max_samples:
        y = y[rng.choice(len(y), max_samples, replace=False)]
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd < 1e-12] = 1.0
    z = (np.vstack([x, y]) - mu) / sd
    d2 = _sq_dists(z)
    if bandwidth is None:
        off = d2[np.triu_indices(len(z), k=1)]
        med = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
        bandwidth = math.sqrt(med / 2.0)  # k = exp(-d^2 / (2 s^2)) with 2 s^2 = median d^2
    k = np.exp(-d2 / (2.0 * bandwidth ** 2))
    n, total = len(x), len(z)
    first = np.zeros((total, 1))
    first[:n] = 1.0
    observed = float(_mmd2_batch(k, first, n)[0])
    exceed = 0
    for start in range(0, n_permutations, 500):
        cols = min(500, n_permutations - start)
        ranks = np.argsort(rng.random((total, cols)), axis=0)  # one random permutation per column
        assign = (ranks < n).astype(np.float64)
        exceed += int(np.sum(_mmd2_batch(k, assign, n) >= observed - 1e-12))
    return MMDResult(mmd2=observed, p_value=(1 + exceed) / (1 + n_permutations), bandwidth=float(bandwidth),
                     n_baseline=len(x), n_current=len(y), n_permutations=n_permutations)


# -- categorical drift (predicted class, case mix) ------------------------------------

@dataclass
class CategoryDrift:
    psi: float
    chi2: float
    p_value: float
    baseline: dict[str, float]
    current: dict[str, float]

    def drifted(self, t: DriftThresholds) -> bool:
        """Both needed: a PSI above ``prediction_psi`` (a move worth acting on) and a chi-square
        p-value below ``prediction_alpha`` (not sampling noise of a small window)."""
        return self.psi > t.prediction_psi and self.p_value < t.prediction_alpha


def category_drift(baseline_distribution: Mapping[str, float], current_values: Sequence[str],
                   eps: float = PSI_EPS) -> CategoryDrift:
    """PSI and chi-square goodness-of-fit of category counts vs the baseline's shares.

    ``baseline_distribution`` maps category -> proportion (e.g. predicted class, from
    prediction_distribution.json). Categories seen now but absent from the baseline get the
    ``eps`` floor.
    """
    classes = list(baseline_distribution)
    for cls in current_values:
        if cls not in baseline_distribution and cls not in classes:
            classes.append(cls)
    counts = pd.Series(list(current_values), dtype="object").value_counts()
    actual = np.array([float(counts.get(c, 0)) for c in classes])
    expected_p = np.array([float(baseline_distribution.get(c, 0.0)) for c in classes])
    if expected_p.sum() <= 0:
        raise ValueError("category_drift: the baseline distribution is empty")
    expected_p = np.maximum(expected_p / expected_p.sum(), eps)
    expected_p /= expected_p.sum()
    n = actual.sum()
    if n == 0:
        raise ValueError("category_drift: no current values")
    value = psi_from_counts(expected_p, actual, eps)
    from scipy import stats

    chi2, p = stats.chisquare(actual, expected_p * n)
    return CategoryDrift(psi=value, chi2=float(chi2), p_value=float(p),
                         baseline={c: float(v) for c, v in zip(classes, expected_p)},
                         current={c: float(v) for c, v in zip(classes, actual / n)})


# -- case mix -----------------------------------------------------------------------------

@dataclass
class CaseMixDrift:
    field: str  # "age" | "sex" | "body_region"
    n: int  # current requests that sent this field
    psi: float
    p_value: float  # KS for age, chi-square for sex and body region
    baseline: dict[str, float]  # category shares; for age its mean
    current: dict[str, float]
    drifted: bool
    psi_threshold: float  # the PSI it is judged against: the feature one for age, the prediction one else


@dataclass
class ContextShare:
    """Share of requests that carry any clinical context, now and in the training split."""

    baseline: float
    current: float
    n: int
    dropped: bool


def case_mix_drift(baseline: pd.DataFrame | None, current: pd.DataFrame,
                   thresholds: DriftThresholds) -> tuple[list[CaseMixDrift], ContextShare | None]:
    """Compare the clinical context of traffic with the training split's (frames from
    :func:`ml_code.monitoring.casemix.case_mix_frame`); nothing to compare when the baseline has no
    case mix (``None``: a split without clinical columns, or a baseline made before).

    Each field is compared among the rows that know it, and only when at least
    ``min_requests`` current rows do: unknowns are a completeness question (the returned
    :class:`ContextShare`), not a shift of who is seen. Age is judged like an image feature
    (:func:`feature_drift`), sex and body region like the predicted class (:func:`category_drift`).
    """
    t = thresholds
    if baseline is None:
        return [], None
    out: list[CaseMixDrift] = []
    n_age = int(current["age"].notna().sum())
    if baseline["age"].notna().any() and n_age >= t.min_requests:
        (age,) = feature_drift(baseline, current, t, features=["age"])
        out.append(CaseMixDrift("age", n_age, age.psi, age.ks_p_value, {"mean": age.baseline_mean},
                                {"mean": age.current_mean}, age.drifted, t.psi))
    for name in ("sex", "body_region"):
        b, c = (f.loc[f[name] != UNKNOWN, name] for f in (baseline, current))
        if len(b) and len(c) >= t.min_requests:
            d = category_drift(b.value_counts(normalize=True).to_dict(), c.tolist())
            out.append(CaseMixDrift(name, len(c), d.psi, d.p_value, d.baseline, d.current,
                                    d.drifted(t), t.prediction_psi))
    share = None
    if len(baseline) and len(current) >= t.min_requests:
        b_share, c_share = float(with_context(baseline).mean()), float(with_context(current).mean())
        share = ContextShare(b_share, c_share, len(current), dropped=c_share < b_share - t.context_share_drop)
    return out, share


# -- verdict ----------------------------------------------------------------------------

@dataclass
class FeatureDrift:
    feature: str
    psi: float
    ks_statistic: float
    ks_p_value: float
    baseline_mean: float
    current_mean: float
    drifted: bool


@dataclass
class DriftVerdict:
    status: str  # "ok" | "drift" | "insufficient_data"
    drift_detected: bool
    drift_score: float
    n_requests: int
    reasons: list[str] = field(default_factory=list)
    features: list[FeatureDrift] = field(default_factory=list)
    mmd: MMDResult | None = None
    prediction: CategoryDrift | None = None
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    case_mix: list[CaseMixDrift] = field(default_factory=list)
    context_share: ContextShare | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_drift(baseline: pd.DataFrame, current: pd.DataFrame, thresholds: DriftThresholds,
                  edges: Mapping[str, Sequence[float]] | None = None,
                  features: Sequence[str] | None = None) -> list[FeatureDrift]:
    """PSI + KS per feature present in both frames (or in ``features``)."""
    names = list(features) if features is not None else [c for c in baseline.columns if c in current.columns]
    out = []
    for name in names:
        b = baseline[name].to_numpy(dtype=np.float64)
        c = current[name].to_numpy(dtype=np.float64)
        c = c[np.isfinite(c)]
        if c.size == 0:
            continue
        e = np.asarray(edges[name]) if edges and name in edges else None
        value = psi(b, c, edges=e)
        ks_stat, ks_p = ks_test(b, c)
        out.append(FeatureDrift(name, value, ks_stat, ks_p, float(np.nanmean(b)), float(c.mean()),
                                drifted=value > thresholds.psi and ks_p < thresholds.ks_alpha))
    return out


def _alpha_score(p: float, alpha: float) -> float:
    """0.5 at p == alpha, 1.0 at p == alpha^2, 0 at p == 1 (log scale)."""
    p = min(max(p, 1e-300), 1.0)
    return float(min(1.0, 0.5 * math.log(p) / math.log(alpha)))


def _psi_score(psi: float, threshold: float, drifted: bool) -> float:
    """0.5 at PSI == threshold, 1.0 at twice it; at least 0.5 when the test drifted, below it when not."""
    score = min(1.0, 0.5 * psi / threshold)
    return max(score, 0.5) if drifted else min(score, 0.49)


def drift_verdict(n_requests: int, features: Sequence[FeatureDrift] = (), mmd: MMDResult | None = None,
                  prediction: CategoryDrift | None = None,
                  thresholds: DriftThresholds | None = None, case_mix: Sequence[CaseMixDrift] = (),
                  context_share: ContextShare | None = None) -> DriftVerdict:
    """Combine the tests into one decision and a [0, 1] score (>= 0.5 iff drift detected)."""
    t = thresholds or DriftThresholds()
    if n_requests < t.min_requests:
        return DriftVerdict("insufficient_data", False, 0.0, n_requests,
                            [f"only {n_requests} captured requests; need at least {t.min_requests} "
                             "before drift can be judged"], list(features), mmd, prediction, t,
                            list(case_mix), context_share)
    reasons: list[str] = []
    scores = [0.0]
    drifted = [f for f in features if f.drifted]
    scores.append(min(1.0, 0.5 * len(drifted) / t.min_drifted_features))
    if len(drifted) >= t.min_drifted_features:
        reasons.append(f"{len(drifted)} features drifted (PSI > {t.psi} and KS p < {t.ks_alpha}): "
                       + ", ".join(f"{f.feature} (PSI {f.psi:.2f})" for f in drifted))
    if mmd is not None:
        scores.append(_alpha_score(mmd.p_value, t.mmd_alpha) if mmd.p_value < t.mmd_alpha
                      else min(0.49, _alpha_score(mmd.p_value, t.mmd_alpha)))
        if mmd.p_value < t.mmd_alpha:
            reasons.append(f"embedding MMD p={mmd.p_value:.4f} < {t.mmd_alpha}")
    if prediction is not None:
        hit = prediction.drifted(t)
        scores.append(_psi_score(prediction.psi, t.prediction_psi, hit))
        if hit:
            reasons.append(f"prediction distribution PSI {prediction.psi:.2f} > {t.prediction_psi} "
                           f"(chi-square p={prediction.p_value:.2g})")
    for c in case_mix:
        scores.append(_psi_score(c.psi, c.psi_threshold, c.drifted))
        if c.drifted:
            reasons.append(f"case mix: {c.field} PSI {c.psi:.2f} > {c.psi_threshold} (p={c.p_value:.2g}, "
                           f"{c.n} requests sent it)")
    detected = bool(reasons)
    score = max(scores)
    if detected:
        score = max(score, 0.5)
    return DriftVerdict("drift" if detected else "ok", detected, float(score), n_requests, reasons,
                        list(features), mmd, prediction, t, list(case_mix), context_share)


# -- Model Monitor output ---------------------------------------------------------------

def constraint_violations(verdict: DriftVerdict, incomplete: int = 0) -> dict[str, Any]:
    """Model Monitor ``constraint_violations.json`` content for a verdict."""
    t = verdict.thresholds
    violations: list[dict[str, str]] = []
    for f in verdict.features:
        if f.drifted:
            violations.append({
                "feature_name": f.feature,
                "constraint_check_type": "baseline_drift_check",
                "description": (f"PSI {f.psi:.3f} exceeds {t.psi} and KS statistic {f.ks_statistic:.3f} "
                                f"(p={f.ks_p_value:.2g}) is below alpha {t.ks_alpha}; baseline mean "
                                f"{f.baseline_mean:.4g}, current mean {f.current_mean:.4g}"),
            })
    if verdict.mmd is not None and verdict.mmd.p_value < t.mmd_alpha:
        violations.append({
            "feature_name": "embedding",
            "constraint_check_type": "baseline_drift_check",
            "description": f"embedding MMD^2 {verdict.mmd.mmd2:.4g}, permutation p={verdict.mmd.p_value:.4f} "
                           f"< {t.mmd_alpha} ({verdict.mmd.n_permutations} permutations)",
        })
    p = verdict.prediction
    if p is not None and p.drifted(t):
        violations.append({
            "feature_name": "predicted_class",
            "constraint_check_type": "baseline_drift_check",
            "description": f"predicted-class PSI {p.psi:.3f} > {t.prediction_psi}, chi-square p={p.p_value:.2g}",
        })
    for c in verdict.case_mix:
        if c.drifted:
            violations.append({
                "feature_name": c.field,
                "constraint_check_type": "baseline_drift_check",
                "description": f"case mix: {c.field} PSI {c.psi:.3f}, p={c.p_value:.2g} over the {c.n} requests "
                               f"that sent it; baseline {_shares(c.baseline)}, current {_shares(c.current)}",
            })
    share = verdict.context_share
    if share is not None and share.dropped:
        violations.append({
            "feature_name": "clinical_context",
            "constraint_check_type": "completeness_check",
            "description": f"{share.current:.0%} of {share.n} requests sent clinical context (age, sex or body "
                           f"site) against {share.baseline:.0%} of the training split; without it the model "
                           "scores on the image alone, which is less accurate",
        })
    if incomplete:
        violations.append({
            "feature_name": "image",
            "constraint_check_type": "completeness_check",
            "description": f"{incomplete} captured requests had no decodable image",
        })
    return {"violations": violations}


def write_constraint_violations(path: str | os.PathLike, verdict: DriftVerdict, incomplete: int = 0) -> Path:
    return write_json_atomic(path, constraint_violations(verdict, incomplete), sort_keys=True, default=float)


# -- report rendering -------------------------------------------------------------------

def drift_report_markdown(verdict: DriftVerdict, png: str | None = None) -> str:
    """A verdict as Markdown: status line, reasons, per-feature PSI/KS table, MMD and
    prediction drift, and ``png`` (a ``data:`` URI, e.g. from ``psi_plot_data_uri``) inline.

    It is what the operator reads on the ``drift_report`` materialization, so it carries the
    numbers behind the verdict, not just the verdict; kept here, beside ``DriftVerdict``, so a
    new field of the verdict and its rendering change together."""
    lines = [f"**Status:** {verdict.status} - drift score {verdict.drift_score:.2f} over "
             f"{verdict.n_requests} requests", ""]
    lines += [f"- {r}" for r in verdict.reasons] + [""]
    if verdict.features:
        lines += ["| feature | PSI | KS | KS p | baseline mean | current mean | drifted |", "|---|---|---|---|---|---|---|"]
        for f in verdict.features:
            lines.append(f"| {f.feature} | {f.psi:.3f} | {f.ks_statistic:.3f} | {f.ks_p_value:.2g} | "
                         f"{f.baseline_mean:.4g} | {f.current_mean:.4g} | {'**yes**' if f.drifted else 'no'} |")
    if verdict.mmd is not None:
        lines += ["", f"Embedding MMD^2 {verdict.mmd.mmd2:.4g}, permutation p = {verdict.mmd.p_value:.4f} "
                      f"({verdict.mmd.n_baseline} baseline vs {verdict.mmd.n_current} current)"]
    if verdict.prediction is not None:
        lines += ["", f"Prediction drift: PSI {verdict.prediction.psi:.3f}, chi-square p = "
                      f"{verdict.prediction.p_value:.2g}"]
    if verdict.case_mix:
        lines += ["", "| case mix | requests | PSI | p | baseline | current | drifted |", "|---|---|---|---|---|---|---|"]
        for c in verdict.case_mix:
            lines.append(f"| {c.field} | {c.n} | {c.psi:.3f} | {c.p_value:.2g} | {_shares(c.baseline)} | "
                         f"{_shares(c.current)} | {'**yes**' if c.drifted else 'no'} |")
    if verdict.context_share is not None:
        share = verdict.context_share
        lines += ["", f"Clinical context sent with {share.current:.0%} of requests (training split "
                      f"{share.baseline:.0%}){' - **below the baseline**' if share.dropped else ''}"]
    if png:
        lines += ["", f"![PSI per feature]({png})"]
    return "\n".join(lines)


def _shares(values: Mapping[str, float]) -> str:
    """``{"male": 0.54, ...}`` as ``male 54%, ...`` (largest first); ``{"mean": 51.2}`` as ``mean 51.2``."""
    if set(values) == {"mean"}:
        return f"mean {values['mean']:.1f}"
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(values.items(), key=lambda kv: -kv[1]))


def figure_png_data_uri(fig: Any) -> str:
    """A matplotlib figure as a ``data:image/png;base64`` URI.

    Dagster's Markdown metadata and most viewers render such a URI inline, so a small chart
    can travel inside the report itself instead of as a separate object to store and link."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def psi_plot_data_uri(verdict: DriftVerdict) -> str | None:
    """Bar chart of PSI per feature (drifted bars red, PSI threshold dashed) as a PNG data URI,
    or None when the verdict has no features (e.g. insufficient data).

    A symlog axis because PSI spans orders of magnitude (0.01 in-distribution, 1-16 under a
    real shift). matplotlib is imported here, with the headless Agg backend, so the module
    stays cheap to import for the processing jobs that never plot."""
    if not verdict.features:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = [f.feature for f in verdict.features]
    ax.bar(names, [f.psi for f in verdict.features], color=["#c0392b" if f.drifted else "#2e86c1"
                                                             for f in verdict.features])
    ax.axhline(verdict.thresholds.psi, color="k", linestyle="--", linewidth=1)
    ax.set_ylabel("PSI")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    try:
        return figure_png_data_uri(fig)
    finally:
        plt.close(fig)
