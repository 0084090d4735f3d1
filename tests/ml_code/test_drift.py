"""Drift statistics and the drift verdict, tuned on synthetic lesion images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from ml_code.drift import (
    DriftThresholds, _mmd2_batch, drift_report_markdown, drift_verdict, feature_drift, ks_test, mmd_test,
    prediction_drift, psi, psi_edges, psi_plot_data_uri, write_constraint_violations,
)
from ml_code.features import PIXEL_FEATURES, batch_features

from .monitoring_synth import colour_normalised, contrast_stretched, lesion_images


@pytest.fixture(scope="module")
def baseline_features():
    return batch_features(lesion_images(800, seed=1))[list(PIXEL_FEATURES)]


def test_psi_small_for_same_large_for_shifted() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=5000)
    assert psi(base, rng.normal(size=5000)) < 0.02
    assert psi(base, rng.normal(0.5, 1, size=5000)) > 0.2
    assert psi(base, rng.normal(2.0, 1, size=500)) > 2.0


def test_psi_constant_baseline_and_empty_bins_are_finite() -> None:
    base = np.full(100, 200.0)  # e.g. every training image 200 px wide
    edges = psi_edges(base)
    assert len(edges) == 2
    assert psi(base, np.full(50, 200.0)) == pytest.approx(0.0)
    shifted = psi(base, np.full(50, 640.0))
    assert np.isfinite(shifted) and shifted > 5
    with pytest.raises(ValueError, match="no finite values"):
        psi_edges(np.array([np.nan]))


def test_ks_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=700), rng.normal(0.2, 1.0, size=120)
    ref = stats.ks_2samp(a, b)
    assert ks_test(a, b) == pytest.approx((ref.statistic, ref.pvalue))


def test_mmd_batch_matches_direct_formula() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(30, 4))
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    k = np.exp(-d2)
    n = 12
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    m = 30 - n
    direct = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
              - 2 * kxy.mean())
    assign = np.zeros((30, 1))
    assign[:n] = 1
    assert _mmd2_batch(k, assign, n)[0] == pytest.approx(direct)


def test_mmd_same_vs_shifted_and_seeded() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 16))
    same = mmd_test(x, rng.normal(size=(100, 16)), seed=7)
    shifted = mmd_test(x, rng.normal(0.4, 1.0, size=(100, 16)), seed=7)
    assert same.p_value > 0.01
    assert shifted.p_value < 0.001
    assert mmd_test(x, x[:50] + 0.4, seed=7).p_value == mmd_test(x, x[:50] + 0.4, seed=7).p_value
    with pytest.raises(ValueError, match="same width"):
        mmd_test(x, rng.normal(size=(10, 3)))


def test_prediction_drift() -> None:
    base = {"nv": 0.67, "mel": 0.11, "bkl": 0.11, "bcc": 0.05, "akiec": 0.03, "vasc": 0.015, "df": 0.015}
    rng = np.random.default_rng(4)
    same = rng.choice(list(base), size=150, p=np.array(list(base.values())) / sum(base.values()))
    assert prediction_drift(base, list(same)).psi < 0.2
    shifted = prediction_drift(base, ["mel"] * 90 + ["nv"] * 60)
    assert shifted.psi > 0.2 and shifted.p_value < 0.001


def test_insufficient_data_is_explicit(baseline_features) -> None:
    cur = batch_features(lesion_images(20, seed=5))[list(PIXEL_FEATURES)]
    v = drift_verdict(20, feature_drift(baseline_features, cur,
                                        DriftThresholds()))
    assert v.status == "insufficient_data" and not v.drift_detected
    assert "need at least 50" in v.reasons[0]


@pytest.mark.parametrize("n", [60, 120, 200])
def test_in_distribution_traffic_raises_no_alarm(baseline_features, n: int) -> None:
    for seed in range(10, 16):
        cur = batch_features(lesion_images(n, seed=seed))[list(PIXEL_FEATURES)]
        v = drift_verdict(n, feature_drift(baseline_features, cur, DriftThresholds()))
        assert v.status == "ok" and not v.drift_detected, (seed, v.reasons)
        assert v.drift_score < 0.5


@pytest.mark.parametrize("shift", [colour_normalised, contrast_stretched])
def test_different_acquisition_raises_alarm(baseline_features, shift, tmp_path) -> None:
    cur = batch_features(shift(lesion_images(100, seed=21)))[list(PIXEL_FEATURES)]
    v = drift_verdict(100, feature_drift(baseline_features, cur, DriftThresholds()))
    assert v.drift_detected and v.status == "drift" and v.drift_score >= 0.5
    path = write_constraint_violations(tmp_path / "constraint_violations.json", v)
    violations = json.loads(path.read_text())["violations"]
    assert len(violations) >= 3
    assert {x["constraint_check_type"] for x in violations} == {"baseline_drift_check"}
    assert all(x["feature_name"] in PIXEL_FEATURES and "PSI" in x["description"] for x in violations)


def test_embedding_drift_alone_triggers(baseline_features) -> None:
    rng = np.random.default_rng(6)
    mmd = mmd_test(rng.normal(size=(300, 8)), rng.normal(1.0, 1.0, size=(80, 8)))
    v = drift_verdict(80, [], mmd=mmd)
    assert v.drift_detected and any("MMD" in r for r in v.reasons)


def test_drift_report_markdown_and_psi_plot(baseline_features) -> None:
    cur = batch_features(contrast_stretched(lesion_images(100, seed=21)))[list(PIXEL_FEATURES)]
    v = drift_verdict(100, feature_drift(baseline_features, cur, DriftThresholds()))
    png = psi_plot_data_uri(v)
    assert png is not None and png.startswith("data:image/png;base64,")
    md = drift_report_markdown(v, png)
    assert md.startswith("**Status:** drift - drift score")
    assert sum(line.endswith("| **yes** |") for line in md.splitlines()) == sum(f.drifted for f in v.features)
    assert md.endswith(f"![PSI per feature]({png})")
    empty = drift_verdict(10)
    assert psi_plot_data_uri(empty) is None
    assert "| feature |" not in drift_report_markdown(empty, None)
