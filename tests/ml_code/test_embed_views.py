"""The drift monitor's embeddings-only pass gives the embeddings the baseline path computes."""

from __future__ import annotations

import numpy as np

from ml_code.monitoring.baseline import embed_and_predict, embed_views, load_packaged_model

from tests.support.monitoring_synth import lesion_images
from tests.support.monitoring_world import model_package


def test_embed_views_equals_embed_and_predict(tmp_path) -> None:
    module, model = load_packaged_model(model_package(tmp_path, 32), tmp_path / "model")
    views = lesion_images(37, 32, seed=4)  # not a multiple of either batch size
    expected, _ = embed_and_predict(module, model, views, batch=16)
    got = embed_views(module, model, views, batch=5)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert embed_views(module, model, views[:0]).shape[0] == 0
