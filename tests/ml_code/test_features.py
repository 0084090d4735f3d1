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
