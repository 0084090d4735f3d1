"""Out-of-distribution flag: a package trained on demo lesions flags non-dermoscopy images and
passes most held-out demo lesions (Mahalanobis feature ensemble over the stem, stage ends and
penultimate embedding, ml_code/package/ood.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ml_code.package import inference
from ml_code.package.image_policy import decode_square
from ml_code.package.model import embed_fn, ood_features_fn, preprocess_array
from ml_code.tools import non_dermoscopy
from ml_code.training.ood import repackage
from tests.support.demo_splits import demo_images, make_demo_splits

REPO = Path(__file__).resolve().parents[2]
SIZE = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(model dir, splits) of a small DermaNet trained by the training job on demo lesions (~10 s)."""
    root = tmp_path_factory.mktemp("ood")
    splits = make_demo_splits(root / "splits", SIZE, lesions_per_class=14, seed=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(SM_MODEL_DIR=str(root / "model"), SM_OUTPUT_DATA_DIR=str(root / "out" / "data"),
               SM_OUTPUT_DIR=str(root / "out"), SM_CHECKPOINT_DIR=str(root / "ckpt"), SM_CHANNEL_SPLITS=str(splits),
               PYTHONPATH=str(REPO), SM_HPS=json.dumps({"epochs": "6", "batch_size": "32", "num_threads": "1",
                                                        "lr": "0.003", "arch": "dermanet", "descriptor_model": "false"}))
    proc = subprocess.run([sys.executable, "-m", "ml_code.training.train"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "model", splits


@pytest.fixture(scope="module")
def served(trained):
    return inference.model_fn(str(trained[0]))


def answer(model, body: bytes) -> dict:
    return json.loads(inference.output_fn(inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)))


def test_package_records_its_ood_statistics(trained, served):
    config = json.loads((trained[0] / "model_config.json").read_text())
    ood = config["ood"]
    assert (trained[0] / ood["file"]).is_file()
    layers = {layer["name"]: layer for layer in ood["layers"]}
    # DermaNet (32, 64, 128, 256): stem and stages 1-3 as mean + std per channel, the 256-d embedding
    assert {k: v["dim"] for k, v in layers.items()} == {"stem": 64, "stage1": 64, "stage2": 128, "stage3": 256,
                                                         "penultimate": 256}
    assert ood["dim"] == 768 and "Lee et al. 2018" in ood["reference"] and "max over layers" in ood["rule"]
    assert ood["quantile"] == 0.95 and ood["val_pass_rate"] >= 0.9  # the 95th percentile of val scores
    assert ood["threshold"] == pytest.approx(served.ood.threshold) and ood["threshold"] > 0
    # The union of layers passes 95% overall, so each layer alone flags at most the overall 5%.
    assert all(0 <= v["val_flag_rate"] <= 1 - ood["val_pass_rate"] + 1e-9 for v in layers.values())


def test_a_flagged_image_exceeds_some_layers_own_threshold(served):
    """The rule as stated: flagged iff max_l (d_l - median_l) / scale_l > threshold, i.e. some
    layer's distance is beyond median_l + threshold * scale_l."""
    images = np.stack([decode_square(non_dermoscopy.jpeg_bytes(k, s), SIZE) for k in non_dermoscopy.KINDS
                       for s in range(3)])
    feats = ood_features_fn(preprocess_array(images, served), served)
    recorded = {x["name"]: x["distance_threshold"] for x in served.config["ood"]["layers"]}
    beyond = np.stack([layer.distances(feats[layer.name]) > recorded[layer.name] for layer in served.ood.layers])
    probs = inference.predict_fn({"images": images, "views": 1}, served)
    np.testing.assert_array_equal(probs.in_distribution, ~beyond.any(axis=0))


@pytest.mark.parametrize("kind", non_dermoscopy.KINDS)
def test_non_dermoscopy_images_are_flagged(served, kind):
    for seed in range(4):
        body = answer(served, non_dermoscopy.jpeg_bytes(kind, seed))
        assert body["in_distribution"] is False, (kind, seed, body["ood_score"])
        assert body["ood_score"] > served.ood.threshold
        assert body["predicted_class"] in body["probabilities"]  # still answered, just flagged


def test_held_out_demo_lesions_mostly_pass(served, tmp_path):
    """Unseen demo lesions (another seed): 94% (58 of 62) pass when measured (threshold from 28 val images)."""
    views, _ = demo_images(tmp_path / "held-out", SIZE, lesions_per_class=6, seed=7)
    probs = inference.predict_fn(views, served)
    assert probs.in_distribution.mean() >= 0.7, np.sort(probs.ood_scores)


def test_score_is_the_same_under_test_time_views(served, trained):
    """The score reads the identity view from the served forward pass: views do not change it."""
    images = np.load(trained[1] / "test_images.npy")[:8]
    one = inference.predict_fn({"images": images, "views": 1}, served)
    eight = inference.predict_fn({"images": images, "views": 8}, served)
    np.testing.assert_allclose(one.ood_scores, eight.ood_scores, rtol=1e-4)


def test_existing_package_gains_ood_statistics_without_retraining(trained, served, tmp_path):
    old_dir = tmp_path / "old"
    shutil.copytree(trained[0], old_dir)
    config = json.loads((old_dir / "model_config.json").read_text())
    del config["ood"]
    (old_dir / "model_config.json").write_text(json.dumps(config))
    (old_dir / "ood.npz").unlink()
    old = inference.model_fn(str(old_dir))
    body = answer(old, non_dermoscopy.jpeg_bytes("solid", 0))
    assert body["ood_score"] is None and body["in_distribution"] is None  # no statistics: "not assessed"
    tar = tmp_path / "old.tar.gz"
    with tarfile.open(tar, "w:gz") as out:
        out.add(old_dir, arcname=".")
    record = repackage(tar, trained[1], tmp_path / "new" / "model.tar.gz")
    with tarfile.open(tmp_path / "new" / "model.tar.gz") as src:
        src.extractall(tmp_path / "new-dir", filter="data")
    new = inference.model_fn(str(tmp_path / "new-dir"))
    assert record["threshold"] == pytest.approx(served.ood.threshold, rel=1e-5)
    body = answer(new, non_dermoscopy.jpeg_bytes("solid", 0))
    assert body["in_distribution"] is False
    assert body["ood_score"] == pytest.approx(answer(served, non_dermoscopy.jpeg_bytes("solid", 0))["ood_score"],
                                              rel=1e-4)


def test_package_with_single_layer_statistics_keeps_its_score_and_rule(trained, served, tmp_path):
    """A package fitted before the feature ensemble (ood.npz: one penultimate class_means /
    whitening / threshold) loads with this code and answers its old score: the raw distance."""
    legacy_dir = tmp_path / "legacy"
    shutil.copytree(trained[0], legacy_dir)
    pen = next(layer for layer in served.ood.layers if layer.name == "penultimate")
    threshold = pen.centre + pen.scale  # the old rule: the validation 95th percentile of the distance
    with open(legacy_dir / "ood.npz", "wb") as fh:
        np.savez(fh, class_means=pen.class_means, whitening=pen.whitening, threshold=np.float64(threshold))
    legacy = inference.model_fn(str(legacy_dir))
    assert [layer.name for layer in legacy.ood.layers] == ["penultimate"] and legacy.ood.threshold == threshold
    images = np.load(trained[1] / "test_images.npy")[:6]
    probs = inference.predict_fn({"images": images, "views": 1}, legacy)
    distances = pen.distances(embed_fn(preprocess_array(images, served), served))
    np.testing.assert_allclose(probs.ood_scores, distances, rtol=1e-4)
    np.testing.assert_array_equal(probs.in_distribution, distances <= threshold)
