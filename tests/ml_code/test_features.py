"""Per-image acquisition features: known values, vectorisation, error messages."""

from __future__ import annotations

import numpy as np
import pytest

from ml_code.monitoring.features import FEATURE_NAMES, batch_features, image_features

from tests.support.monitoring_synth import lesion_images


def test_constant_grey_image_has_known_features() -> None:
    img = np.full((1, 16, 24, 3), 128, np.uint8)
    f = batch_features(img).iloc[0]
    assert f["brightness"] == pytest.approx(128 / 255, abs=1e-5)
    assert f["contrast"] == pytest.approx(0.0, abs=1e-6)
    assert f["saturation_mean"] == pytest.approx(0.0)
    assert f["sharpness"] == pytest.approx(0.0, abs=1e-9)
    assert f["entropy"] == pytest.approx(0.0)
    assert (f["width"], f["height"], f["aspect_ratio"]) == (24.0, 16.0, 1.5)


def test_colour_and_entropy_values() -> None:
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    f = batch_features(red).iloc[0]
    assert (f["red_mean"], f["green_mean"], f["blue_mean"]) == pytest.approx((1.0, 0.0, 0.0))
    assert f["saturation_mean"] == pytest.approx(1.0)
    half = np.zeros((1, 8, 8, 3), np.uint8)
    half[:, :4] = 255  # two equally likely luminance levels -> 1 bit
    assert batch_features(half).iloc[0]["entropy"] == pytest.approx(1.0)


def test_blur_lowers_sharpness_and_batches_match_single_images() -> None:
    imgs = lesion_images(6, size=24, seed=3)
    blurred = ((imgs[:, :-1, :-1].astype(np.uint16) + imgs[:, 1:, 1:] + imgs[:, 1:, :-1] + imgs[:, :-1, 1:]) // 4)
    sharp_f = batch_features(imgs[:, :-1, :-1])
    blur_f = batch_features(blurred.astype(np.uint8))
    assert (blur_f["sharpness"] < sharp_f["sharpness"]).all()
    batch = batch_features(imgs, chunk=4)
    singles = [batch_features(i).iloc[0] for i in imgs]
    for k, row in enumerate(singles):
        np.testing.assert_allclose(batch.iloc[k].to_numpy(), row.to_numpy(), rtol=1e-5)
    assert list(batch.columns) == list(FEATURE_NAMES)


def test_mixed_sizes_keep_input_order() -> None:
    a, b = lesion_images(2, size=20, seed=1), lesion_images(1, size=30, seed=2)
    mixed = image_features([a[0], b[0], a[1]])
    assert mixed["width"].tolist() == [20.0, 30.0, 20.0]
    np.testing.assert_allclose(mixed.iloc[2].to_numpy(), batch_features(a[1]).iloc[0].to_numpy(), rtol=1e-6)
    assert len(image_features([])) == 0


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((2, 8, 8), np.uint8), "RGB"),
    (np.zeros((1, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((1, 2, 2, 3), np.uint8), "too small"),
])
def test_bad_input_is_explained(bad: np.ndarray, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        batch_features(bad)


def _textbook(img: np.ndarray) -> dict[str, float]:
    """The module docstring's formulas, in float64, one image, no vectorisation tricks."""
    rgb = img.astype(np.float64) / 255.0
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    cmax, cmin = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(cmax > 0, (cmax - cmin) / np.where(cmax > 0, cmax, 1.0), 0.0)
    lap = lum[:-2, 1:-1] + lum[2:, 1:-1] + lum[1:-1, :-2] + lum[1:-1, 2:] - 4.0 * lum[1:-1, 1:-1]
    out = {"brightness": lum.mean(), "contrast": lum.std(), "saturation_mean": sat.mean(), "sharpness": lap.var()}
    for c, name in enumerate(("red", "green", "blue")):
        out[f"{name}_mean"], out[f"{name}_std"] = rgb[..., c].mean(), rgb[..., c].std()
    return out


def test_vectorised_features_match_the_textbook_formulas() -> None:
    """The chunked float32 code (uint8 max/min for saturation, planar reductions) is within 1e-5
    relative of float64 formulas on lesion-like and on random images (entropy is checked above)."""
    rng = np.random.default_rng(5)
    imgs = np.concatenate([lesion_images(6, 48, seed=9), rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)])
    got = batch_features(imgs, chunk=4)
    for i, img in enumerate(imgs):
        for name, value in _textbook(img).items():
            assert got.iloc[i][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (i, name)
