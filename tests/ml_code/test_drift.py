"""Drift statistics and the drift verdict, tuned on synthetic lesion images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from ml_code.monitoring.drift import (
    DriftThresholds, _mmd2_batch, case_mix_drift, category_drift, drift_report_markdown, drift_verdict,
    feature_drift, ks_test, mmd_test, psi, psi_edges, psi_plot_data_uri, write_constraint_violations,
)
from ml_code.monitoring.features import PIXEL_FEATURES, batch_features

from tests.support.monitoring_synth import colour_normalised, contrast_stretched, lesion_images


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
    assert category_drift(base, list(same)).psi < 0.2
    shifted = category_drift(base, ["mel"] * 90 + ["nv"] * 60)
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


def _clinic(n: int, seed: int, *, ages=(50.0, 16.0), male=0.54, sites=("back", "lower extremity", "face", "hand"),
            context=1.0):
    """A case mix like HAM10000's (or shifted): ``context`` is the share of rows that carry any."""
    from ml_code.monitoring.casemix import case_mix_frame

    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(*ages, size=n), 0, 85).round(-1)
    sex = np.where(rng.random(n) < male, "male", "female").astype(object)
    site = rng.choice(sites, size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    blank = rng.random(n) >= context
    age[blank], sex[blank], site[blank] = np.nan, None, None
    return case_mix_frame(list(age), list(sex), list(site))


def test_case_mix_of_the_same_clinic_raises_no_alarm() -> None:
    t = DriftThresholds()
    base = _clinic(3000, seed=0)
    for seed in range(1, 6):
        mix, share = case_mix_drift(base, _clinic(150, seed=seed), t)
        assert [m.field for m in mix] == ["age", "sex", "body_region"]
        assert not any(m.drifted for m in mix) and not share.dropped, (seed, mix)
        v = drift_verdict(150, case_mix=mix, context_share=share, thresholds=t)
        assert not v.drift_detected and v.drift_score < 0.5


def test_a_paediatric_acral_clinic_is_case_mix_drift(tmp_path) -> None:
    t = DriftThresholds()
    mix, share = case_mix_drift(_clinic(3000, seed=0), _clinic(150, seed=9, ages=(10.0, 4.0), male=0.5,
                                                                sites=("acral", "foot", "hand", "back")), t)
    drifted = {m.field for m in mix if m.drifted}
    assert drifted == {"age", "body_region"}  # sex mix unchanged
    assert {m.field: m.psi_threshold for m in mix} == {"age": t.psi, "sex": t.prediction_psi,
                                                       "body_region": t.prediction_psi}
    assert case_mix_drift(None, _clinic(150, seed=9), t) == ([], None)  # baseline without a case mix
    v = drift_verdict(150, case_mix=mix, context_share=share, thresholds=t)
    assert v.drift_detected and v.drift_score >= 0.5
    assert any(r.startswith("case mix: age") for r in v.reasons)
    violations = json.loads(write_constraint_violations(tmp_path / "cv.json", v).read_text())["violations"]
    assert {x["feature_name"] for x in violations} == {"age", "body_region"}
    assert "palms_soles" in next(x for x in violations if x["feature_name"] == "body_region")["description"]
    md = drift_report_markdown(v)
    age_row = next(line for line in md.splitlines() if line.startswith("| age | 150 |"))
    assert "| case mix | requests |" in md and "mean" in age_row and age_row.endswith("| **yes** |")


def test_requests_without_context_are_a_completeness_violation_not_drift(tmp_path) -> None:
    t = DriftThresholds()
    mix, share = case_mix_drift(_clinic(3000, seed=0), _clinic(200, seed=3, context=0.2), t)
    assert mix == []  # about 40 requests know each field: too few (< min_requests) to compare
    assert share.baseline == 1.0 and 0.1 < share.current < 0.3 and share.dropped
    v = drift_verdict(200, case_mix=mix, context_share=share, thresholds=t)
    assert not v.drift_detected
    violations = json.loads(write_constraint_violations(tmp_path / "cv.json", v).read_text())["violations"]
    assert [(x["feature_name"], x["constraint_check_type"]) for x in violations] == [
        ("clinical_context", "completeness_check")]
    assert "below the baseline" in drift_report_markdown(v)
