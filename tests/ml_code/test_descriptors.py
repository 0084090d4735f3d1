"""The descriptor model: clinical encoding, image descriptors, exported boosted trees, and
its fusion with the network inside the served model package."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier

from ml_code import CLASSES
from ml_code.package import descriptors, inference
from ml_code.package import image_policy
from ml_code.package import model as package_model
from ml_code.training import models
from ml_code.training.fusion import fit_fusion
from ml_code.training.packaging import write_model_dir
from tests.conftest import HAM10000, requires_ham10000

SIZE = 24


def test_clinical_features_map_both_archives_onto_one_vocabulary():
    c = descriptors.clinical_features(
        age=[63, None, "", 130, "45"],
        sex=["male", "female", "unknown", None, "MALE"],
        site=["face", "posterior torso", "unknown", "back", "Lower Extremity"],
    )
    names = list(descriptors.CLINICAL_FEATURES)
    col = {n: c[:, i] for i, n in enumerate(names)}
    np.testing.assert_array_equal(col["age"][[0, 4]], [63, 45])
    assert np.isnan(col["age"][1:4]).all()  # missing, empty and out-of-range ages are unknown
    np.testing.assert_array_equal(col["sex_male"][[0, 1, 4]], [1, 0, 1])
    assert np.isnan(col["sex_male"][[2, 3]]).all()
    # HAM10000 'face' and ISIC 'posterior torso' / HAM 'back' land on shared regions.
    assert col["site_head_neck"][0] == 1 and col["site_torso"][0] == 0
    assert col["site_torso"][1] == 1 and col["site_posterior_torso"][1] == 1 and col["site_anterior_torso"][1] == 0
    assert col["site_posterior_torso"][3] == 1
    assert col["site_lower_extremity"][4] == 1
    site_cols = [i for i, n in enumerate(names) if n.startswith("site_")]
    assert np.isnan(c[2, site_cols]).all()  # 'unknown' site -> every site column unknown


def test_clinical_features_reject_ragged_input():
    with pytest.raises(ValueError, match="one value per image"):
        descriptors.clinical_features([1, 2], ["male"], None)


def test_image_descriptors_are_orientation_invariant_and_checked():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(5, 32, 32, 3), dtype=np.uint8)
    d = descriptors.image_descriptors(images)
    assert d.shape == (5, descriptors.descriptor_count()) and d.dtype == np.float32
    assert np.isfinite(d).all()
    for turned in (images[:, ::-1], images[:, :, ::-1], np.rot90(images, 1, axes=(1, 2))):
        np.testing.assert_allclose(descriptors.image_descriptors(np.ascontiguousarray(turned)), d, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        descriptors.image_descriptors(images.astype(np.float32))


def test_chunks_on_every_core_give_the_single_thread_rows():
    """Batches over one chunk are described on a thread per core; the rows must be the ones the
    chunk-by-chunk loop gives, in order (the evaluation and training fit on these)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(70, 32, 32, 3), dtype=np.uint8)
    threaded = descriptors.image_descriptors(images, chunk=16)
    serial = np.concatenate([descriptors.image_descriptors(images[i:i + 16], chunk=16) for i in range(0, 70, 16)])
    assert threaded.shape == (70, descriptors.descriptor_count())
    np.testing.assert_array_equal(threaded, serial)


def _lesion(shape: str, size: int = 48, offset: int = 0) -> np.ndarray:
    """Skin-coloured crop with one dark lesion: a centred disc, a shifted disc, or a star."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    xx = xx - offset
    r, theta = np.hypot(yy, xx), np.arctan2(yy, xx)
    inside = r < (size / 4 if shape == "disc" else size / 5 * (1 + 0.5 * np.cos(5 * theta)))
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (225, 180, 160)  # skin
    img[inside] = (20, 15, 15)  # black-ish pigment
    return img


def test_lesion_features_measure_size_border_asymmetry_and_colour():
    names = descriptors.LESION_FEATURE_NAMES
    start = descriptors.descriptor_count() - len(names)
    crops = np.stack([_lesion("disc"), _lesion("disc", offset=9), _lesion("star")])
    f = {n: descriptors.image_descriptors(crops)[:, start + i] for i, n in enumerate(names)}
    disc, shifted, star = 0, 1, 2
    assert f["area"][disc] == pytest.approx(np.pi * 12**2 / 48**2, rel=0.1)  # Otsu finds the disc
    assert f["centroid_offset"][disc] < 0.02 < 0.3 < f["centroid_offset"][shifted]
    assert f["asymmetry_flip_max"][disc] < 0.05 < 0.5 < f["asymmetry_flip_max"][shifted]
    assert f["compactness"][star] > 1.5 * f["compactness"][disc]  # irregular outline
    assert f["minor_major_axis"][disc] > 0.95
    assert f["share_black"][disc] > 0.9 and f["colour_count"][disc] == 1
    assert f["L_contrast"][disc] < -0.4  # lesion much darker than the surrounding skin
    assert f["border_sharpness"][disc] > 3  # a sharp edge against a flat interior
    assert f["no_lesion"].max() == 0


@pytest.fixture(scope="module")
def fitted() -> tuple[descriptors.BoostedTrees, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 6))
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0.5).astype(int)  # 4 classes, learnable
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the learned branch
    return descriptors.BoostedTrees.fit(x, y, 4, max_iter=25, seed=0), x, y


def test_exported_trees_reproduce_scikit_learn(fitted):
    trees, x, y = fitted
    reference = HistGradientBoostingClassifier(max_iter=25, learning_rate=0.05, max_leaf_nodes=15,
                                               l2_regularization=1.0, early_stopping=False, random_state=0).fit(x, y)
    np.testing.assert_allclose(np.exp(trees.log_proba(x)), reference.predict_proba(x), rtol=1e-9, atol=1e-12)
    assert (trees.log_proba(x).argmax(1) == y).mean() > 0.8


def test_weighted_fit_reads_raw_descriptors_as_its_trees_read_bins(fitted):
    """With sample weights the fit bins the descriptors itself (scikit-learn's weighted binning
    took most of a training job's descriptor minutes): the exported trees, reading raw values,
    give what the fitted ones give on the bins, on the training rows and on unseen values."""
    unweighted, x, y = fitted
    weights = np.where(y == 0, 4.0, 1.0)
    trees = descriptors.BoostedTrees.fit(x, y, 4, sample_weight=weights, max_iter=25, seed=0)
    edges = descriptors.quantile_bin_edges(x)
    assert all(cut is not None and len(cut) == descriptors.MAX_BINS - 1 for cut in edges)  # 400 distinct values
    reference = HistGradientBoostingClassifier(max_iter=25, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
                                               early_stopping=False, random_state=0)
    reference.fit(descriptors.to_bins(x, edges), y, sample_weight=weights)
    rng = np.random.default_rng(7)
    unseen = rng.normal(scale=1.5, size=(500, 6))
    unseen[rng.random(unseen.shape) < 0.1] = np.nan
    unseen[:6, 0] = edges[0][[0, 1, 100, 200, -1, -1]]  # on the edges themselves (<= goes to the lower bin)
    for rows in (x, unseen):
        np.testing.assert_allclose(np.exp(trees.log_proba(rows)), reference.predict_proba(descriptors.to_bins(rows, edges)),
                                   rtol=1e-9, atol=1e-12)
    # the weights still count: the up-weighted class gets more of the probability than without them
    assert np.exp(trees.log_proba(unseen))[:, 0].mean() > np.exp(unweighted.log_proba(unseen))[:, 0].mean() + 0.05


def test_trees_round_trip_through_a_plain_npz(fitted, tmp_path):
    trees, x, _ = fitted
    trees.save(tmp_path / "descriptors.npz")
    with np.load(tmp_path / "descriptors.npz", allow_pickle=False) as data:  # no object arrays inside
        assert all(data[k].dtype != object for k in data.files)
    loaded = descriptors.BoostedTrees.load(tmp_path / "descriptors.npz")
    np.testing.assert_array_equal(loaded.log_proba(x), trees.log_proba(x))
    with pytest.raises(ValueError, match=r"expects \(N, 6\)"):
        loaded.log_proba(x[:, :5])


def test_fit_runs_on_the_threads_it_is_given(fitted, monkeypatch):
    """The training job's num_threads bounds the trees' OpenMP threads too (scikit-learn ignores
    torch's setting, and surplus OpenMP threads spin on busy cores), and the trees are the same."""
    import threadpoolctl

    trees, x, y = fitted
    seen: list[int] = []
    fit = HistGradientBoostingClassifier.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", recording_fit)
    one = descriptors.BoostedTrees.fit(x, y, 4, max_iter=25, seed=0, threads=1)
    assert seen == [1]
    np.testing.assert_allclose(one.log_proba(x), trees.log_proba(x), rtol=1e-9, atol=1e-12)


def test_fit_needs_every_class():
    with pytest.raises(ValueError, match="every one of 3 classes"):
        descriptors.BoostedTrees.fit(np.zeros((10, 2)), np.array([0, 1] * 5), 3)


def test_fusion_fit_learns_to_trust_the_informative_model():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 600)
    good = np.log(np.full((600, 3), 0.1) + 0.7 * np.eye(3)[y])  # right most of the time
    noise = np.log(rng.dirichlet(np.ones(3), 600))  # says nothing about y
    fusion = fit_fusion(good, noise, y, 3, balance=0.0)
    assert fusion["cnn_scale"] > 5 * max(fusion["descriptor_scale"], 1e-3)
    fused = package_model.fuse_log_probs(good, noise, fusion)
    np.testing.assert_allclose(fused.sum(1), 1.0)
    assert (fused.argmax(1) == y).mean() > 0.95


@pytest.fixture(scope="module")
def fused_model_dir(tmp_path_factory) -> Path:
    """A model dir with a descriptor model, exactly as train.py writes one."""
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    net = models.build_model("dermanet", len(CLASSES))
    images = rng.integers(0, 255, size=(70, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(70) % len(CLASSES)
    clinical = descriptors.clinical_features(30 + labels * 8, ["male", "female"] * 35, ["back"] * 70)
    trees = descriptors.BoostedTrees.fit(descriptors.descriptor_matrix(images, clinical), labels, len(CLASSES), max_iter=5)
    folder = tmp_path_factory.mktemp("fused")
    config = {"arch": "dermanet", "classes": list(CLASSES), "image_size": SIZE, "mean": [0.6] * 3, "std": [0.2] * 3,
              "temperature": 1.3, "descriptors": {"file": "descriptors.npz", "version": descriptors.DESCRIPTOR_VERSION},
              "fusion": {"cnn_scale": 0.6, "descriptor_scale": 0.8, "class_bias": [0.1 * i for i in range(7)]}}
    write_model_dir(folder, net.state_dict(), config, trees)
    return folder


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def test_served_package_fuses_network_and_descriptors(fused_model_dir):
    served = inference.model_fn(str(fused_model_dir))
    assert served.descriptor_model is not None
    body = _jpeg(4)
    request = json.dumps({"image": base64.b64encode(body).decode(), "age": 70, "sex": "male", "anatom_site": "face"})
    with_context = inference.predict_fn(inference.input_fn(request.encode(), "application/json"), served)
    bare = inference.predict_fn(inference.input_fn(body, "image/jpeg"), served)

    pixels = image_policy.decode_square(body, SIZE)[None]
    x = package_model.preprocess_array(pixels, served)
    with torch.no_grad():
        cnn = torch.log_softmax(served(x).float(), 1).numpy()
    clinical = descriptors.clinical_features([70], ["male"], ["face"])
    desc = served.descriptor_model.log_proba(descriptors.descriptor_matrix(pixels, clinical))
    np.testing.assert_allclose(with_context, package_model.fuse_log_probs(cnn, desc, served.fusion), rtol=1e-5, atol=1e-6)
    assert not np.allclose(with_context, bare)  # the clinical context reaches the descriptor model
    out = json.loads(inference.output_fn(with_context, "application/json"))
    assert set(out["probabilities"]) == set(CLASSES)


PHI = "Smith John MRN 4411"


@pytest.mark.parametrize("request_body,problem", [
    (b"not json " + PHI.encode(), "not valid JSON"),
    (json.dumps({"age": 50}).encode(), '"image"'),
    (json.dumps({"image": "@@@" + PHI}).encode(), "base64"),
    (json.dumps({"image": "aGk=", PHI: "x"}).encode(), "unknown field"),
    (json.dumps({"image": "aGk=", "age": 400}).encode(), '"age" must be a number of years in 0-120'),
    (json.dumps({"image": "aGk=", "age": PHI}).encode(), '"age" must be a number of years in 0-120'),
    (json.dumps({"image": "aGk=", "sex": PHI}).encode(), '"sex" must be one of male, female, unknown'),
    (json.dumps({"image": "aGk=", "anatom_site": PHI}).encode(), r"not a body site .*posterior torso"),
])
def test_bad_json_requests_say_what_is_wrong_without_echoing_the_value(request_body, problem):
    """The 400 names the field and the allowed form, never the value: a request may carry a
    patient's name in any field, and error texts reach capture files and logs."""
    with pytest.raises(ValueError, match=problem) as refused:
        inference.input_fn(request_body, "application/json")
    assert PHI not in str(refused.value) and "MRN" not in str(refused.value)
    assert refused.value.status_code == 400


def test_clinical_values_are_read_in_any_case_from_either_vocabulary():
    image = base64.b64encode(_jpeg(5)).decode()
    for sex, site in (("Female", "HEAD/NECK"), ("unknown", "lower extremity"), (None, "unknown"), ("male", None)):
        request = json.dumps({"image": image, "sex": sex, "anatom_site": site}).encode()
        assert inference.input_fn(request, "application/json")["clinical"] == {"age": None, "sex": sex, "site": site}


@requires_ham10000
def test_every_ham10000_site_maps_to_a_region():
    """Real metadata: no body site silently falls through to 'unknown' except HAM10000's own 'unknown'."""
    import pandas as pd

    meta = pd.read_csv(HAM10000 / "HAM10000_metadata.csv")
    sites = sorted(meta["localization"].dropna().unique())
    members = {m for group in descriptors.SITE_REGIONS.values() for m in group}
    assert [s for s in sites if s not in members] == ["unknown"]
    c = descriptors.clinical_features(meta["age"].tolist(), meta["sex"].tolist(), meta["localization"].tolist())
    known = ~np.isnan(c[:, 2:]).all(1)
    assert known.sum() == (meta["localization"] != "unknown").sum()
    assert np.isnan(c[:, 0]).sum() == meta["age"].isna().sum()  # 57 ages missing in the official file
