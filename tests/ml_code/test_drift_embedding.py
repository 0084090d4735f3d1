"""The endpoint's projected embedding (``drift_embedding``) is the baseline's, projected the same way,
and the monitor reads it back from a capture line without decoding the image."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from ml_code.monitoring.baseline import embed_views, load_packaged_model
from ml_code.monitoring.capture import capture_line_embeddings
from ml_code.package import drift_embedding
from ml_code.package.drift_embedding import (
    ANSWER_FIELD, DIMENSIONS, ENCODING, PROJECTION, answer_embedding, project, projection_matrix, valid_answer_embedding,
)
from ml_code.package.image_policy import decode_square_with_facts
from ml_code.serving.serve import capture_record

from tests.support.monitoring_synth import lesion_images
from tests.support.monitoring_world import jpeg_bodies, model_package


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pkg")
    return load_packaged_model(model_package(tmp, 32), tmp / "model")


def test_the_answer_carries_the_baselines_embedding_projected(served) -> None:
    """What the served handlers return for a JPEG equals the baseline path (``embed_views`` of the
    decoded view, then :func:`project`): the monitor compares like with like."""
    module, model = served
    for body in jpeg_bodies(lesion_images(6, 32, seed=8), 64, 48):
        answer = json.loads(module.output_fn(module.predict_fn(module.input_fn(body, "image/jpeg"), model),
                                             "application/json"))
        got = valid_answer_embedding(answer[ANSWER_FIELD])
        view, _ = decode_square_with_facts(body, 32)
        expected = project(embed_views(module, model, view[None]))[0]
        assert got is not None and got.shape == (DIMENSIONS,)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_the_projection_keeps_pairwise_distances() -> None:
    """Johnson-Lindenstrauss: distances between 512-wide embeddings survive the projection to 32
    numbers within a small factor (what the MMD's Gaussian kernel reads)."""
    x = np.random.default_rng(0).normal(size=(60, 512)).astype(np.float32) * np.linspace(0.2, 3, 512)
    y = project(x)
    i, j = np.triu_indices(len(x), 1)
    ratio = np.linalg.norm(y[i] - y[j], axis=1) / np.linalg.norm(x[i] - x[j], axis=1)
    assert 0.9 < np.median(ratio) < 1.1
    assert ratio.min() > 0.5 and ratio.max() < 1.5


def test_the_projection_is_pinned() -> None:
    """Endpoints and monitors on other NumPy versions draw the same matrix (legacy RandomState), and
    a change of seed, size or method shows here, not as silent drift between old and new answers."""
    assert PROJECTION == "gaussian-rp-32-20261203"
    np.testing.assert_allclose(projection_matrix(3)[:, :4], [
        [-0.14630740880966187, -0.1545790135860443, 0.06658070534467697, 0.03129128739237785],
        [-0.18633060157299042, 0.16348782181739807, 0.007078120019286871, 0.402555376291275],
        [-0.016899626702070236, -0.23649373650550842, 0.09107136726379395, 0.22060833871364594]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        project(np.zeros(5))


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


@pytest.mark.parametrize("value", [
    None, [0.0] * DIMENSIONS, {"data": _b64(np.zeros(DIMENSIONS))},
    {"projection": "pca-32", "encoding": ENCODING, "data": _b64(np.zeros(DIMENSIONS))},
    {"projection": PROJECTION, "encoding": "float16-le-base64", "data": _b64(np.zeros(DIMENSIONS))},
    {"projection": PROJECTION, "encoding": ENCODING, "data": _b64(np.zeros(DIMENSIONS - 1))},
    {"projection": PROJECTION, "encoding": ENCODING, "data": _b64([np.nan] + [0.0] * (DIMENSIONS - 1))},
    {"projection": PROJECTION, "encoding": ENCODING, "data": "not base64!"},
    {"projection": PROJECTION, "encoding": ENCODING, "data": [0.0] * DIMENSIONS},
])
def test_an_answer_projected_otherwise_or_damaged_is_not_read(value) -> None:
    assert valid_answer_embedding(value) is None


def test_an_answer_holds_the_projection_exactly() -> None:
    vector = np.random.default_rng(2).normal(size=DIMENSIONS).astype(np.float32)
    answer = json.loads(json.dumps(answer_embedding(vector)))
    assert answer["projection"] == PROJECTION and answer["encoding"] == ENCODING
    np.testing.assert_array_equal(valid_answer_embedding(answer), vector)
    with pytest.raises(ValueError, match="32 projected numbers"):
        answer_embedding(vector[:5])


def test_capture_lines_give_their_answers_embeddings_without_an_image() -> None:
    """Lines whose answers hold a valid embedding are read (the request's body is not an image at
    all, so nothing was decoded); an older answer, a broken line and a line past the end are not."""
    vectors = np.random.default_rng(1).normal(size=(3, DIMENSIONS)).astype(np.float32)
    answers = [{"predicted_class": "nv", ANSWER_FIELD: answer_embedding(vectors[0])},
               {"predicted_class": "nv"},  # a package from before the field
               {"predicted_class": "mel", ANSWER_FIELD: answer_embedding(vectors[2])}]
    lines = [json.dumps(capture_record(body=b"not an image", content_type="image/jpeg", response_text=json.dumps(a),
                                       event_id=f"e{i}", inference_id=f"i{i}", inference_time=1.7e9 + i,
                                       package_version=1)) for i, a in enumerate(answers)]
    data = "\n".join([lines[0], "{half a line", lines[1], lines[2]]).encode()
    got, ok = capture_line_embeddings(data, [3, 2, 1, 0, 9])
    assert ok.tolist() == [True, False, False, True, False]
    np.testing.assert_array_equal(got, vectors[[2, 0]])
    empty, none = capture_line_embeddings(data, [1])
    assert empty.shape == (0, drift_embedding.DIMENSIONS) and not none.any()
